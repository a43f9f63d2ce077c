-- Remove consumers of crashed workers from a stream's consumer group.
-- KEYS[1] = the stream. ARGV[1] = consumer group, ARGV[2] = minimum idle time (ms),
-- ARGV[3] = 'except' (every consumer but ARGV[4]) or 'only' (just ARGV[4]), ARGV[4] = a
-- consumer name.
-- Only consumers holding no messages go: checked and removed in one atomic step, because
-- XGROUP DELCONSUMER drops the consumer's pending entries, and a message dropped from the
-- pending list would never be redelivered. Returns how many were removed.
local removed = 0
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for j = 1, #info, 2 do
    local field = info[j]
    if field == 'name' then name = info[j + 1]
    elseif field == 'pending' then pending = info[j + 1]
    elseif field == 'idle' then idle = info[j + 1] end
  end
  local chosen = (ARGV[3] == 'only') == (name == ARGV[4])
  if pending == 0 and idle >= tonumber(ARGV[2]) and chosen then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    removed = removed + 1
  end
end
return removed
