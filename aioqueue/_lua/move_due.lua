-- Move delayed messages whose due time has come into the queue's stream.
-- KEYS[1] = the delayed sorted set (score = due time), KEYS[2] = the stream.
-- ARGV[1] = now (epoch seconds), ARGV[2] = most messages to move in one call.
-- Returns the number moved. Atomic, so any number of workers may run it at once:
-- a message is moved exactly once.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, payload in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'm', payload)
  redis.call('ZREM', KEYS[1], payload)
end
return #due
