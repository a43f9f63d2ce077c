-- Revoke a task: remember it (and whether to terminate it) and broadcast the revocation.
-- KEYS[1] = the task's result key, KEYS[2] = sorted set of revoked ids, KEYS[3] = sorted
-- set of ids to terminate (both scored by when the revocation expires).
-- ARGV[1] = task id, ARGV[2] = expiry (epoch seconds), ARGV[3] = '1' to terminate,
-- ARGV[4] = control channel, ARGV[5] = control message, ARGV[6] = '1' to write a record,
-- ARGV[7] = the record expected in KEYS[1] now ('' when none), ARGV[8] = the REVOKED
-- record, ARGV[9] = its TTL (ms).
-- The REVOKED record is written only if the stored record is still the one the caller
-- read (compare and set): a task that finished meanwhile keeps its result. Returns 0 when
-- that check failed (nothing was done; read again and retry), 1 otherwise.
if ARGV[6] == '1' then
  local current = redis.call('GET', KEYS[1])
  if (current or '') ~= ARGV[7] then
    return 0
  end
  redis.call('SET', KEYS[1], ARGV[8], 'PX', ARGV[9])
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
