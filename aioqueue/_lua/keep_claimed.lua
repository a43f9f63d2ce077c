-- Heartbeat: reset the idle time of running messages this consumer still owns.
-- KEYS[1] = the stream. ARGV[1] = consumer group, ARGV[2] = this consumer, ARGV[3..] = ids.
-- Returns the ids it no longer owns: another worker took them over (this one looked dead)
-- or they were settled meanwhile. Never claims those back, so a message is not tossed
-- between two live workers.
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #entry > 0 and entry[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
  else
    lost[#lost + 1] = id
  end
end
return lost
