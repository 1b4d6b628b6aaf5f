-- The scrapy-redis pairing. A request the spider schedules goes to scrapy-redis's shared
-- queue: its claim becomes "q" and its payload is kept in <stage>:queued until the worker
-- that takes it (at download start) has journaled it. "requeue" also re-queues a unit
-- that is already "q" or this worker's own (a retry; a lost or adopted request put back).
--
-- KEYS[1] the claims (HASH), KEYS[2] the tokens (HASH), KEYS[3] the queued payloads
-- (HASH code -> request).
-- ARGV[1] the worker, ARGV[2] the prefix of the sub-stage lock keys, ARGV[3] the unit
-- code, ARGV[4] its payload, ARGV[5] 'new' or 'requeue'.
--
-- Returns 1 if queued, 0 if the unit is done, queued or a live worker's.
local me, lock_prefix, code, payload, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local holder = redis.call('HGET', KEYS[1], code)
local ok = not holder
if holder == '=' then return 0 end
if holder and not ok then
  if mode == 'requeue' and (holder == 'q' or holder == me) then ok = true
  elseif holder ~= 'q' and holder ~= me then
    local token = redis.call('HGET', KEYS[2], holder)
    ok = (not token) or redis.call('GET', lock_prefix .. holder .. ':lock') ~= token
  end
end
if not ok then return 0 end
redis.call('HSET', KEYS[1], code, 'q')
redis.call('HSET', KEYS[3], code, payload)
return 1
