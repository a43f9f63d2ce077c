-- Move dead letters back to their queue's stream.
-- KEYS[1] = the dead-letter stream, KEYS[2] = the queue's stream.
-- ARGV = entry ids to move; with no ARGV, every entry (up to 10,000 per call).
local entries
if #ARGV == 0 then
  entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 10000)
else
  entries = {}
  for _, id in ipairs(ARGV) do
    local found = redis.call('XRANGE', KEYS[1], id, id)
    if #found > 0 then table.insert(entries, found[1]) end
  end
end
local moved = 0
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'm' then
      redis.call('XADD', KEYS[2], '*', 'm', fields[i + 1])
      redis.call('XDEL', KEYS[1], entry[1])
      moved = moved + 1
    end
  end
end
return moved
