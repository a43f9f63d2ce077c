-- Move delayed messages whose due time has come into their streams, for every priority
-- lane of a queue in one call.
-- KEYS = pairs: a lane's delayed sorted set (score = due time), then its stream.
-- ARGV[1] = now (epoch seconds), ARGV[2] = most messages to move per lane in one call.
-- Returns the number moved. Atomic, so any number of workers may run it at once:
-- a message is moved exactly once.
local moved = 0
for k = 1, #KEYS, 2 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
  for _, payload in ipairs(due) do
    redis.call('XADD', KEYS[k + 1], '*', 'm', payload)
    redis.call('ZREM', KEYS[k], payload)
  end
  moved = moved + #due
end
return moved
