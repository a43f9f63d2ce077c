-- Add one message behind a producer-side gate (see aioqueue.flow), atomically.
--
-- KEYS[1] = the gate (unique/cooldown/debounce lock, or the order key's holder),
-- KEYS[2] = where the message goes (its lane's stream, or delayed set when ARGV[4] is set),
-- KEYS[3] = the order key's waiting list (order only).
-- ARGV[1] = kind, ARGV[2] = task id, ARGV[3] = payload, ARGV[4] = due (epoch seconds; ''
-- for now), ARGV[5] = the gate's time to live (ms), ARGV[6] = '1' when ARGV[2] is the id a
-- previous call returned (debounce).
-- Returns {0} added; {1, id} the call joins task `id` (unique, cooldown: not added;
-- debounce: its waiting message replaced by this one); {2, id} debounce: build the payload
-- with task id `id` and call again; {3} debounce: that task has started, use a new id.
local kind, id, payload, due = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local function add()
  if due == '' then
    redis.call('XADD', KEYS[2], '*', 'm', payload)
  else
    redis.call('ZADD', KEYS[2], due, payload)
  end
end

if kind == 'unique' or kind == 'cooldown' then
  if redis.call('SET', KEYS[1], id, 'NX', 'PX', ARGV[5]) then
    add()
    return {0}
  end
  return {1, redis.call('GET', KEYS[1])}
elseif kind == 'debounce' then
  local current = redis.call('GET', KEYS[1])
  if current then
    local nl = string.find(current, '\n', 1, true)
    local waiting_id, waiting = string.sub(current, 1, nl - 1), string.sub(current, nl + 1)
    if redis.call('ZSCORE', KEYS[2], waiting) then
      if waiting_id ~= id then return {2, waiting_id} end
      redis.call('ZREM', KEYS[2], waiting)
      add()
      redis.call('SET', KEYS[1], id .. '\n' .. payload, 'PX', ARGV[5])
      return {1, id}
    end
  end
  if ARGV[6] == '1' then return {3} end
  add()
  redis.call('SET', KEYS[1], id .. '\n' .. payload, 'PX', ARGV[5])
  return {0}
elseif kind == 'order' then
  if redis.call('SET', KEYS[1], id, 'NX') then
    add()
  else
    -- Its turn comes when the task before it ends (settle.lua's K operation).
    redis.call('RPUSH', KEYS[3], id .. '\n' .. KEYS[2] .. '\n' .. due .. '\n' .. payload)
  end
  return {0}
end
return redis.error_reply('gate: unknown kind ' .. tostring(kind))
