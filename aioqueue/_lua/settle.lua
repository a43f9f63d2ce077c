-- Settle a batch of finished deliveries in one step: store results, reschedule retries,
-- hand messages back, dead-letter, acknowledge, then wake the waiting producers.
-- One script call replaces 2-3 commands per task, and a message is only acknowledged in
-- the same step that stores its result, so a crash can never lose one.
--
-- Every key is declared in KEYS; operands name keys by their index in KEYS.
-- ARGV[1] = consumer group, ARGV[2] = guard time to live (ms), ARGV[3] = reply list TTL
-- (ms), ARGV[4] = reply list cap, ARGV[5] = events stream cap, ARGV[6] = event counters'
-- TTL (s). Then one block per outcome:
--   O stream_k id n       an outcome acknowledging entry `id` of KEYS[stream_k] (0: none),
--                         followed by its n operations:
--   S k record ttl_ms     SET the result record with a TTL
--   Q k payload guard_k   XADD a message back to a stream now        (at most one of Q, Z, L
--   Z k payload due guard_k  ZADD a message to the delayed set          per outcome)
--   L k payload reason failed_at origin cap guard_k priority   XADD to a dead-letter stream,
--                         capped (with the priority lane it died in, for a requeue)
--   P k record            RPUSH the record to a reply list (after the acknowledgements)
--   E k stats_k event field   XADD an event to the events stream and count it in a minute's
--                         hash (never fails the outcome: events are best effort)
--   U k id                release a unique lock (unique_for) if task `id` still holds it
--   K k waiting_k id      end task `id`'s turn of an order key: the next waiting task of the
--                         key goes to its stream (or delayed set) and holds the key
--   C k waiting_k index_k id key lease_ms   free task `id`'s concurrency slot and start
--                         parked runs of the key while slots are free
-- K and C put a waiting message where it was sent: that key is stored with it (the one
-- exception to "every key in KEYS"; on Redis Cluster an app's keys share one slot).
--
-- Redis scripts are atomic but not all-or-nothing, so each operation runs under pcall: a
-- failing operation fails only its own outcome (which is then not acknowledged) and the
-- rest of the batch settles. Q, Z and L are not idempotent: each records a guard key (the
-- delivery's own, under its queue's hash tag) so a batch replayed after a lost reply does
-- not add the message twice.
-- Returns {failures, reply_failures}: failures = {outcome number, error, ...}.
local group, guard_ms, reply_ms, reply_cap = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local events_cap, stats_ttl = ARGV[5], ARGV[6]
local stats_keys = {}
local failures, reply_failures = {}, 0
local acks, ack_order = {}, {}
local reply_keys = {}

local function failed(reply)
  return type(reply) == 'table' and reply.err ~= nil
end

local function guarded(guard_k, action)
  local guard = KEYS[tonumber(guard_k)]
  if redis.call('EXISTS', guard) == 1 then
    return 'done before'  -- a replay: already applied
  end
  local reply = action()
  if failed(reply) then return reply end
  return redis.pcall('SET', guard, '1', 'PX', guard_ms)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- An entry of a waiting list: fields separated by newlines, the payload last (it may
-- hold newlines itself).
local function split(entry, fields)
  local out, from = {}, 1
  for f = 1, fields - 1 do
    local nl = string.find(entry, '\n', from, true)
    out[f] = string.sub(entry, from, nl - 1)
    from = nl + 1
  end
  out[fields] = string.sub(entry, from)
  return out
end

local function end_turn(holder, waiting, id)
  if redis.call('GET', holder) ~= id then return end
  local entry = redis.call('LPOP', waiting)
  if not entry then
    redis.call('DEL', holder)
    return
  end
  local next_id, dest, due, payload = unpack(split(entry, 4))
  redis.call('SET', holder, next_id)
  if due == '' then
    redis.call('XADD', dest, '*', 'm', payload)
  else
    redis.call('ZADD', dest, due, payload)
  end
end

local function free_slot(held, waiting, index, id, key, lease)
  redis.call('ZREM', held, id)
  local slots = tonumber(redis.call('HGET', index, key) or '0')
  if slots == 0 then return end
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
  while redis.call('ZCARD', held) < slots do
    local entry = redis.call('LPOP', waiting)
    if not entry then break end
    local parked_id, stream, payload = unpack(split(entry, 3))
    redis.call('ZADD', held, now + tonumber(lease), parked_id)
    redis.call('XADD', stream, '*', 'm', payload)
  end
  if redis.call('LLEN', waiting) == 0 then redis.call('HDEL', index, key) end
end

-- A Lua function under pcall, its error as a reply the loop below understands.
local function protected(fn, ...)
  local ok, e = pcall(fn, ...)
  if ok then return nil end
  return {err = type(e) == 'table' and e.err or tostring(e)}
end

local i, n, outcome = 7, #ARGV, 0
-- Replies waiting for the acknowledgements, as two flat arrays (no table per outcome: this
-- loop runs once per settled task).
local reply_k, reply_v, replies = {}, {}, 0
while i <= n do
  if ARGV[i] ~= 'O' then
    return redis.error_reply('settle: malformed batch at argument ' .. i)
  end
  outcome = outcome + 1
  local stream_k, id, ops = tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  i = i + 4
  local err = nil
  local replies_before = replies
  for _ = 1, ops do
    local op = ARGV[i]
    local key = KEYS[tonumber(ARGV[i + 1])]
    local reply = nil
    if op == 'S' then
      if not err then reply = redis.pcall('SET', key, ARGV[i + 2], 'PX', ARGV[i + 3]) end
      i = i + 4
    elseif op == 'E' then
      local stats = KEYS[tonumber(ARGV[i + 2])]
      redis.pcall('XADD', key, 'MAXLEN', '~', events_cap, '*', 'e', ARGV[i + 3])
      redis.pcall('HINCRBY', stats, ARGV[i + 4], 1)
      stats_keys[stats] = true
      i = i + 5
    elseif op == 'U' then
      if not err then
        local id = ARGV[i + 2]
        reply = redis.pcall('GET', key)
        if reply == id then reply = redis.pcall('DEL', key) end
      end
      i = i + 3
    elseif op == 'K' then
      if not err then
        reply = protected(end_turn, key, KEYS[tonumber(ARGV[i + 2])], ARGV[i + 3])
      end
      i = i + 4
    elseif op == 'C' then
      if not err then
        reply = protected(free_slot, key, KEYS[tonumber(ARGV[i + 2])],
          KEYS[tonumber(ARGV[i + 3])], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6])
      end
      i = i + 7
    elseif op == 'P' then
      replies = replies + 1
      reply_k[replies], reply_v[replies] = key, ARGV[i + 2]
      i = i + 3
    elseif op == 'Q' then
      local payload = ARGV[i + 2]
      if not err then
        reply = guarded(ARGV[i + 3], function()
          return redis.pcall('XADD', key, '*', 'm', payload)
        end)
      end
      i = i + 4
    elseif op == 'Z' then
      local payload, due = ARGV[i + 2], ARGV[i + 3]
      if not err then
        reply = guarded(ARGV[i + 4], function()
          return redis.pcall('ZADD', key, due, payload)
        end)
      end
      i = i + 5
    elseif op == 'L' then
      local a = i
      if not err then
        reply = guarded(ARGV[a + 7], function()
          return redis.pcall('XADD', key, 'MAXLEN', '~', ARGV[a + 6], '*', 'm', ARGV[a + 2],
            'reason', ARGV[a + 3], 'failed_at', ARGV[a + 4], 'origin', ARGV[a + 5],
            'p', ARGV[a + 8])
        end)
      end
      i = i + 9
    else
      return redis.error_reply('settle: unknown operation ' .. tostring(op))
    end
    if not err and type(reply) == 'table' and reply.err ~= nil then err = reply.err end
  end
  if err then
    failures[#failures + 1] = outcome
    failures[#failures + 1] = err
    replies = replies_before  -- a failed outcome wakes nobody
  elseif stream_k > 0 then
    local stream = KEYS[stream_k]
    local ids = acks[stream]
    if not ids then
      ids = {}
      acks[stream] = ids
      ack_order[#ack_order + 1] = stream
    end
    ids[#ids + 1] = id
  end
end

for _, stream in ipairs(ack_order) do
  local ids = acks[stream]
  -- In chunks: Lua's unpack() has a stack limit of a few thousand values.
  for s = 1, #ids, 1000 do
    local e = math.min(s + 999, #ids)
    -- pcall: when the group is gone (FLUSHDB, a restart without persistence) there is
    -- nothing left to acknowledge, and the results above are stored all the same.
    redis.pcall('XACK', stream, group, unpack(ids, s, e))
    redis.pcall('XDEL', stream, unpack(ids, s, e))
  end
end

-- Producers are woken last: a reply list that cannot take a push (a key of another type)
-- costs only that notification; the producer's back-off re-read still finds the result.
-- One RPUSH per run of replies to the same list (usually one producer gets them all).
local r = 1
while r <= replies do
  local key, last = reply_k[r], r
  while last < replies and last - r < 999 and reply_k[last + 1] == key do last = last + 1 end
  if failed(redis.pcall('RPUSH', key, unpack(reply_v, r, last))) then
    reply_failures = reply_failures + (last - r + 1)
  elseif not reply_keys[key] then
    reply_keys[key] = true
  end
  r = last + 1
end
for key in pairs(reply_keys) do
  redis.pcall('PEXPIRE', key, reply_ms)
  -- A producer that never awaits its handles must not grow its reply list forever.
  redis.pcall('LTRIM', key, -reply_cap, -1)
end
for key in pairs(stats_keys) do
  redis.pcall('EXPIRE', key, stats_ttl)
end
return {failures, reply_failures}
