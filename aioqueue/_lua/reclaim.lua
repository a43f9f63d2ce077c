-- Take over messages of one stream left unacknowledged for a while (their worker died).
-- KEYS[1] = the stream. ARGV[1] = consumer group, ARGV[2] = the new owner,
-- ARGV[3] = minimum idle time (ms), ARGV[4] = most messages to take, ARGV[5] (optional) =
-- take only this consumer's messages (a worker whose connection to Redis is gone).
-- Returns {id, fields, times delivered before} for each message taken. Atomic, so two
-- workers racing here cannot both take the same message.
local pending
if ARGV[5] then
  pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[4], ARGV[5])
else
  pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[4])
end
if #pending == 0 then return {} end
local ids, times = {}, {}
for i, p in ipairs(pending) do
  ids[i] = p[1]
  times[p[1]] = p[4]
end
local out = {}
for _, entry in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], unpack(ids))) do
  -- An entry deleted from the stream comes back empty: nothing to run.
  if entry and entry[2] then
    out[#out + 1] = {entry[1], entry[2], times[entry[1]]}
  end
end
return out
