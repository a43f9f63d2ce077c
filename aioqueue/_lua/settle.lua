-- Settle a batch of finished deliveries in one atomic step: store results, wake waiting
-- producers, reschedule retries, hand messages back, dead-letter, and acknowledge.
-- One script call replaces 2-3 commands per task; being atomic, a crash can never leave a
-- message acknowledged without its result (or its retry) stored.
--
-- ARGV[1] = the consumer group. Then a flat list of operations, each an opcode and its
-- operands (key names travel in ARGV, so this script is for standalone Redis; a cluster
-- deployment would have to split batches per slot):
--   S key record ttl_ms                          SET the result record with a TTL
--   P key record                                 RPUSH the record to a reply list
--   X key ttl_ms                                 PEXPIRE a reply list and cap its length
--   Q stream payload                             XADD a message back to a stream now
--   Z delayed payload due                        ZADD a message to the delayed set
--   L dead payload reason failed_at origin cap   XADD to a dead-letter stream (capped)
--   A stream n id1 .. idn                        XACK + XDEL these entries
local group = ARGV[1]
local i = 2
local n = #ARGV
local REPLY_CAP = 100000
while i <= n do
  local op = ARGV[i]
  if op == 'S' then
    redis.call('SET', ARGV[i + 1], ARGV[i + 2], 'PX', ARGV[i + 3])
    i = i + 4
  elseif op == 'P' then
    redis.call('RPUSH', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'X' then
    redis.call('PEXPIRE', ARGV[i + 1], ARGV[i + 2])
    -- A producer that never awaits its handles must not grow its reply list forever.
    redis.call('LTRIM', ARGV[i + 1], -REPLY_CAP, -1)
    i = i + 3
  elseif op == 'Q' then
    redis.call('XADD', ARGV[i + 1], '*', 'm', ARGV[i + 2])
    i = i + 3
  elseif op == 'Z' then
    redis.call('ZADD', ARGV[i + 1], ARGV[i + 3], ARGV[i + 2])
    i = i + 4
  elseif op == 'L' then
    redis.call('XADD', ARGV[i + 1], 'MAXLEN', '~', ARGV[i + 6], '*', 'm', ARGV[i + 2],
      'reason', ARGV[i + 3], 'failed_at', ARGV[i + 4], 'origin', ARGV[i + 5])
    i = i + 7
  elseif op == 'A' then
    local stream = ARGV[i + 1]
    local count = tonumber(ARGV[i + 2])
    local first = i + 3
    -- In chunks: Lua's unpack() has a stack limit of a few thousand values.
    for s = first, first + count - 1, 1000 do
      local e = math.min(s + 999, first + count - 1)
      redis.call('XACK', stream, group, unpack(ARGV, s, e))
      redis.call('XDEL', stream, unpack(ARGV, s, e))
    end
    i = first + count
  else
    return redis.error_reply('settle: unknown operation ' .. tostring(op))
  end
end
return 1
