-- Admit runs, or park them in Redis: a rate limit's reservation and a concurrency slot,
-- decided in one atomic step with the acknowledgement of what is parked, so no wake-up is
-- ever lost and nothing waits in a worker's memory. One call admits every run a worker
-- started in one go (group admission, as settle is group commit).
--
-- KEYS: every key once; KEYS[1] = the index of keys with runs parked.
-- ARGV[1] = consumer group, ARGV[2] = lease ms, ARGV[3] = how many profiles; then 9 per
-- profile (what runs of one lane, task and key share): the KEYS indexes of its stream,
-- its lane's delayed set, the rate state, the rate grants (zset: task id, score = until
-- when), the slots held (zset, score = lease end in ms), the slot waiting list (0 where
-- there is no rate or slot limit), ms between two runs with a fraction (0: no rate limit),
-- slots (0: no limit), the concurrency key; then 3 per run: entry id, task id, profile.
-- Returns one code per run: 0 to run now, 1 parked until its reserved rate slot, 2 parked
-- until a concurrency slot frees, 3 gone from the stream (purged): nothing to run.
--
-- Rate: a reservation per run (GCRA): the state is the time the next run may start; each
-- admission takes that time and moves it on by one interval. A run whose time is later is
-- parked in the delayed set at exactly that time with a grant, so it is moved back when its
-- slot comes and runs without asking again: one park per run, however many wait.
-- Slots: leases renewed by the worker's heartbeat; a lapsed lease (a killed worker) frees
-- its slot. A parked run waits in its key's list, oldest first, and is put back in its
-- stream (with the slot already its own) when one frees: see settle.lua's C operation.
local group, lease, profile_count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local index = KEYS[1]
-- Milliseconds with a fraction: a rate above 1,000/s has an interval under 1 ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local codes = {}

local function payload_of(stream, id)
  local entries = redis.call('XRANGE', stream, id, id)
  if #entries == 0 then return nil end
  local fields = entries[1][2]
  for f = 1, #fields, 2 do
    if fields[f] == 'm' then return fields[f + 1] end
  end
  return nil
end

local function park_ack(stream, id)
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
end

-- State read once per key per call and written back once at the end: one call admits a
-- whole fetched batch, mostly of the same task (measured: 3 commands per run fewer).
local next_at = {}   -- rate key -> when its next run may start (ms)
local held_count = {}  -- slots key -> runs holding a slot (lapsed leases dropped once)

local grants_pruned, held_pruned = {}, {}

local function admit(id, task_id, p)
  local stream, delayed, rate, grants = p[1], p[2], p[3], p[4]
  local held, waiting = p[5], p[6]
  local interval, slots, key = p[7], p[8], p[9]
  local reserved = false
  if interval > 0 then
    if not grants_pruned[grants] then
      redis.call('ZREMRANGEBYSCORE', grants, '-inf', now)  -- grants of runs never back
      grants_pruned[grants] = true
    end
    if redis.call('ZREM', grants, task_id) == 0 then
      if next_at[rate] == nil then
        next_at[rate] = tonumber(redis.call('GET', rate) or '0')
      end
      local at = math.max(next_at[rate], now)
      next_at[rate] = at + interval
      -- Due within 10 ms: run now rather than park for less than a delayed-set poll (and
      -- a batch of runs admitted in one call, at one `now`, is not parked but for the
      -- first). The state still moves on by one interval per run, so in any window at
      -- most rate x (window + 10 ms) + 1 runs start.
      if at > now + 10 then
        local payload = payload_of(stream, id)
        if not payload then park_ack(stream, id) return 3 end
        redis.call('ZADD', grants, math.ceil(at) + 86400000, task_id)
        redis.call('ZADD', delayed, string.format('%.3f', at / 1000), payload)
        park_ack(stream, id)
        return 1
      end
      reserved = true
    end
  end
  if slots > 0 then
    if held_count[held] == nil then
      held_count[held] = redis.call('ZCARD', held)
    end
    if held_count[held] >= slots and not held_pruned[held] then
      -- Full: drop lapsed leases (killed workers) and count again, once per call. Not
      -- full: they only make the count higher than it is, never let a run too many in.
      held_pruned[held] = true
      redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
      held_count[held] = redis.call('ZCARD', held)
    end
    -- ZADD's reply says whether the run is new to the set (a redelivered run holds its
    -- slot already): only a new one counts.
    if held_count[held] < slots then
      held_count[held] = held_count[held] + redis.call('ZADD', held, math.floor(now + lease),
        task_id)
      return 0
    end
    if redis.call('ZSCORE', held, task_id) then
      redis.call('ZADD', held, math.floor(now + lease), task_id)
      return 0
    end
    local payload = payload_of(stream, id)
    if not payload then park_ack(stream, id) return 3 end
    if reserved then
      -- It took a rate slot: keep it for when it runs.
      redis.call('ZADD', grants, math.ceil(now) + 86400000, task_id)
    end
    redis.call('RPUSH', waiting, task_id .. '\n' .. stream .. '\n' .. payload)
    redis.call('HSET', index, key, slots)
    park_ack(stream, id)
    return 2
  end
  return 0
end

local profiles, a = {}, 4
for p = 1, profile_count do
  profiles[p] = {KEYS[tonumber(ARGV[a])], KEYS[tonumber(ARGV[a + 1])],
    KEYS[tonumber(ARGV[a + 2])], KEYS[tonumber(ARGV[a + 3])], KEYS[tonumber(ARGV[a + 4])],
    KEYS[tonumber(ARGV[a + 5])], tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7]), ARGV[a + 8]}
  a = a + 9
end
local r = 0
while a <= #ARGV do
  r = r + 1
  codes[r] = admit(ARGV[a], ARGV[a + 1], profiles[tonumber(ARGV[a + 2])])
  a = a + 3
end
for rate, at in pairs(next_at) do
  redis.call('SET', rate, string.format('%.3f', at), 'PX', math.max(1, math.ceil(at - now)) + 1000)
end
return codes
