-- Move dead letters back to their queue, each to the priority lane it died in.
-- KEYS[1] = the dead-letter stream, KEYS[2] = the queue's set of lanes, KEYS[3..12] = the
-- streams of lanes 0..9.
-- ARGV[1] = most entries to move in this call; ARGV[2..] = entry ids to move (none: the
-- oldest ARGV[1] entries; the caller calls again until fewer come back).
-- Returns the number moved.
local entries
if #ARGV == 1 then
  entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[1])
else
  entries = {}
  for i = 2, #ARGV do
    local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
    if #found > 0 then table.insert(entries, found[1]) end
  end
end
local moved = 0
for _, entry in ipairs(entries) do
  local fields = entry[2]
  local payload, priority = nil, 0
  for i = 1, #fields, 2 do
    if fields[i] == 'm' then payload = fields[i + 1]
    elseif fields[i] == 'p' then priority = tonumber(fields[i + 1]) or 0 end
  end
  if priority < 0 or priority > 9 then priority = 0 end
  if payload then
    if priority > 0 then redis.call('SADD', KEYS[2], priority) end
    redis.call('XADD', KEYS[3 + priority], '*', 'm', payload)
    moved = moved + 1
  end
  -- Deleted even without a payload field, so a malformed entry cannot stop the loop.
  redis.call('XDEL', KEYS[1], entry[1])
end
return moved
