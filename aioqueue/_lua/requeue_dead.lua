-- Move dead letters back to their queue's stream.
-- KEYS[1] = the dead-letter stream, KEYS[2] = the queue's stream.
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
  for i = 1, #fields, 2 do
    if fields[i] == 'm' then
      redis.call('XADD', KEYS[2], '*', 'm', fields[i + 1])
      moved = moved + 1
    end
  end
  -- Deleted even without a payload field, so a malformed entry cannot stop the loop.
  redis.call('XDEL', KEYS[1], entry[1])
end
return moved
