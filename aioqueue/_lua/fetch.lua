-- Take up to ARGV[3] new messages from several queues' streams, in the order given, so a
-- worker consuming many queues never receives more messages than it has free slots
-- (XREADGROUP's COUNT applies per stream: asking every stream for N would hand out N x
-- streams). Non-blocking; the caller waits with XREAD BLOCK when nothing is returned.
--
-- KEYS = the streams, in order of preference. ARGV[1] = consumer group, ARGV[2] = consumer,
-- ARGV[3] = the most messages to take in all, ARGV[4] = how many of the first streams are
-- a priority share turn: together they give at most one message (see broker/_lanes.py).
-- Returns {1, {{key index, entries}, ...}} when something was taken, where entries are
-- XREADGROUP's [id, fields] pairs; otherwise {0, {last delivered id of each stream}}, from
-- which an XREAD BLOCK wakes up on the first message added after them.
local group, consumer = ARGV[1], ARGV[2]
local left = tonumber(ARGV[3])
local share, shared = tonumber(ARGV[4] or '0'), false
local taken = {}
for i, stream in ipairs(KEYS) do
  if left <= 0 then break end
  local want = left
  if i <= share then
    want = 1
    if shared then want = 0 end
  end
  local reply = nil
  if want > 0 then
    reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want,
      'STREAMS', stream, '>')
  end
  if reply then
    local entries = reply[1][2]
    if #entries > 0 then
      taken[#taken + 1] = {i, entries}
      left = left - #entries
      if i <= share then shared = true end  -- the share is taken: on to the normal order
    end
  end
end
if #taken > 0 then
  return {1, taken}
end
local last = {}
for i, stream in ipairs(KEYS) do
  last[i] = '0-0'
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local name, id
    for j = 1, #info, 2 do
      if info[j] == 'name' then name = info[j + 1]
      elseif info[j] == 'last-delivered-id' then id = info[j + 1] end
    end
    if name == group then last[i] = id end
  end
end
return {0, last}
