-- Admit a delivery to run, or park it in Redis: a rate limit's reservation and a
-- concurrency slot, decided in one atomic step with the acknowledgement of what is parked,
-- so no wake-up is ever lost and nothing waits in a worker's memory.
--
-- KEYS[1] = the delivery's stream, KEYS[2] = the delayed set of its lane, KEYS[3] = the rate
-- state, KEYS[4] = this task's rate grant, KEYS[5] = the slots held (zset, score = lease end
-- in ms), KEYS[6] = the slot waiting list, KEYS[7] = the index of keys with runs parked.
-- ARGV[1] = consumer group, ARGV[2] = entry id, ARGV[3] = task id, ARGV[4] = payload,
-- ARGV[5] = ms between two runs (0: no rate limit), ARGV[6] = slots (0: no limit),
-- ARGV[7] = lease ms, ARGV[8] = the concurrency key (for the index).
-- Returns {0} to run now, {1, ms} parked until its reserved rate slot, {2} parked until a
-- concurrency slot frees.
--
-- Rate: a reservation per run (GCRA): the state is the time the next run may start; each
-- admission takes that time and moves it on by one interval. A run whose time is later is
-- parked in the delayed set at exactly that time with a grant, so it is moved back when its
-- slot comes and runs without asking again: one park per run, however many wait.
-- Slots: leases renewed by the worker's heartbeat; a lapsed lease (a killed worker) frees
-- its slot. A parked run waits in its key's list, oldest first, and is put back in its
-- stream (with the slot already its own) when one frees: see settle.lua's C operation.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval, slots, lease = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])

local function park_ack()
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
end

local reserved = false
if interval > 0 then
  if redis.call('DEL', KEYS[4]) == 0 then
    local next_at = tonumber(redis.call('GET', KEYS[3]) or '0')
    local at = math.max(next_at, now)
    redis.call('SET', KEYS[3], at + interval, 'PX', math.ceil(at + interval - now) + 1000)
    if at > now then
      redis.call('SET', KEYS[4], '1', 'PX', math.ceil(at - now) + 86400000)
      redis.call('ZADD', KEYS[2], string.format('%.3f', at / 1000), ARGV[4])
      park_ack()
      return {1, math.ceil(at - now)}
    end
    reserved = true
  end
end
if slots > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)  -- lapsed leases: killed workers
  if redis.call('ZSCORE', KEYS[5], ARGV[3]) or redis.call('ZCARD', KEYS[5]) < slots then
    redis.call('ZADD', KEYS[5], now + lease, ARGV[3])
    return {0}
  end
  if reserved then
    -- It took a rate slot: keep it for when it runs.
    redis.call('SET', KEYS[4], '1', 'PX', 86400000)
  end
  redis.call('RPUSH', KEYS[6], ARGV[3] .. '\n' .. KEYS[1] .. '\n' .. ARGV[4])
  redis.call('HSET', KEYS[7], ARGV[8], slots)
  park_ack()
  return {2}
end
return {0}
