-- Store a result record only if the stored one is still what the caller read (compare and
-- set): a revoke on a result backend apart from the broker (see broker/split.py).
-- KEYS[1] = the result key. ARGV[1] = the record expected ('' for none), ARGV[2] = the new
-- record, ARGV[3] = its TTL (ms). Returns 1 when stored, 0 when the check failed.
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
