-- Delete the waiting (not yet delivered) entries of a queue's stream and its delayed set;
-- running (delivered, unacknowledged) entries stay for their workers to settle.
-- KEYS[1] = stream, KEYS[2] = delayed set. ARGV[1] = consumer group. Returns the count.
local deleted = redis.call('ZCARD', KEYS[2])
redis.call('DEL', KEYS[2])
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
local last = '0-0'
if ok then
  for _, info in ipairs(groups) do
    local fields = {}
    for j = 1, #info, 2 do fields[info[j]] = info[j + 1] end
    if fields['name'] == ARGV[1] then last = fields['last-delivered-id'] end
  end
else
  return deleted  -- no stream yet
end
while true do
  local entries = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1000)
  if #entries == 0 then break end
  local ids = {}
  for j, entry in ipairs(entries) do ids[j] = entry[1] end
  redis.call('XDEL', KEYS[1], unpack(ids))
  deleted = deleted + #ids
  last = ids[#ids]
end
return deleted
