-- Take or renew a lease: succeed when the key is free or already ours.
-- KEYS[1] = the lease key. ARGV[1] = owner id, ARGV[2] = time to live in milliseconds.
-- Returns 1 when the caller holds the lease afterwards, 0 otherwise.
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
