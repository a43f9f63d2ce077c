-- Free the lapsed slots of one concurrency key (their workers were killed) and start the
-- runs parked for them. The sweep that every worker runs now and then, for the keys in
-- the index only: its cost grows with the keys that have runs parked, never with the runs.
--
-- KEYS[1] = the slots held, KEYS[2] = the waiting list, KEYS[3] = the index.
-- ARGV[1] = the key (in the index), ARGV[2] = lease ms for a run started here.
-- Returns how many parked runs were put back in their streams.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slots = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local started = 0
while redis.call('ZCARD', KEYS[1]) < slots do
  local entry = redis.call('LPOP', KEYS[2])
  if not entry then break end
  local a = string.find(entry, '\n', 1, true)
  local b = string.find(entry, '\n', a + 1, true)
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), string.sub(entry, 1, a - 1))
  -- The stream is stored with the run (see the package doc: the one exception to keys in
  -- KEYS; on Redis Cluster an app's keys share one slot).
  redis.call('XADD', string.sub(entry, a + 1, b - 1), '*', 'm', string.sub(entry, b + 1))
  started = started + 1
end
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return started
