-- Claim units for a worker: each is free, already the worker's own, or held by a dead
-- worker (one whose sub-stage lock no longer holds its token).
--
-- KEYS[1] the claims (HASH code -> worker, "=" once done), KEYS[2] the tokens (HASH
-- worker -> lock token of its sub-stage).
-- ARGV[1] the worker, ARGV[2] the prefix of the sub-stage lock keys, then unit codes.
--
-- Returns one 1 (claimed) or 0 (done, or a live worker's) per code, in order.
local me, lock_prefix = ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV do
  local code = ARGV[i]
  local holder = redis.call('HGET', KEYS[1], code)
  local ok = 0
  if not holder or holder == me then
    ok = 1
  elseif holder ~= '=' then
    local token = redis.call('HGET', KEYS[2], holder)
    if not token or redis.call('GET', lock_prefix .. holder .. ':lock') ~= token then ok = 1 end
  end
  if ok == 1 and holder ~= me then redis.call('HSET', KEYS[1], code, me) end
  out[#out + 1] = ok
end
return out
