-- The scrapy-redis pairing: a worker starts a unit it popped from the shared queue.
--
-- KEYS[1] the claims (HASH), KEYS[2] the tokens (HASH).
-- ARGV[1] the worker, ARGV[2] the prefix of the sub-stage lock keys, ARGV[3] the code.
--
-- Returns 1 if the unit is the worker's now, 0 if it is done or a live worker has it.
local me, lock_prefix, code = ARGV[1], ARGV[2], ARGV[3]
local holder = redis.call('HGET', KEYS[1], code)
if holder == '=' then return 0 end
if holder and holder ~= 'q' and holder ~= me then
  local token = redis.call('HGET', KEYS[2], holder)
  if token and redis.call('GET', lock_prefix .. holder .. ':lock') == token then return 0 end
end
redis.call('HSET', KEYS[1], code, me)
return 1
