-- Append one journal group to a stage's list, once.
--
-- KEYS[1] the stage's lock, KEYS[2] its journal (LIST), KEYS[3] its meta (HASH), KEYS[4]
-- its request records (HASH); with unit tracking (RedisStore.track_units) also KEYS[5]
-- the hash of finished units and KEYS[6] the hash of units not yet journaled.
-- ARGV[1] the caller's lock token, ARGV[2] the group's sequence number, ARGV[3] the
-- group, ARGV[4] how many request records follow (written before the group, each as
-- a ref then the record); with unit tracking then the value finished units get, how
-- many finished units follow, then their codes, then the codes of the units it adds.
--
-- Fails with STAGE_GONE when the stage's keys are gone, with LOST_LOCK when the caller no
-- longer holds the lock, with BAD_META when meta's seq is not a number. Returns 0 without
-- appending if the sequence number is not new (a retry after a lost reply), else 1.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  -- No lock, no journal, no meta: the stage's keys vanished under its writer (a Redis
  -- restarted without its data, flushed or replaced), not a lease another process took.
  if redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3]) == 0 then
    return redis.error_reply('STAGE_GONE the stage lock, journal and meta are gone')
  end
  return redis.error_reply('LOST_LOCK the stage lock expired and another process may own it')
end
local last = tonumber(redis.call('HGET', KEYS[3], 'seq') or '0')
if last == nil then
  return redis.error_reply('BAD_META seq')  -- written over by something else
end
if tonumber(ARGV[2]) <= last then return 0 end
local n_requests = tonumber(ARGV[4])
for i = 5, 4 + 2 * n_requests, 2 do redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1]) end
if n_requests > 0 then redis.call('HSET', KEYS[3], 'rq', ARGV[3 + 2 * n_requests]) end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[3], 'seq', ARGV[2])
local ttl = redis.call('TTL', KEYS[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[2], ttl)
  if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('EXPIRE', KEYS[4], ttl) end
end
-- The units the group finishes are marked finished, and the units it adds leave the
-- hash of units not yet journaled, in this same call.
if #KEYS >= 6 then
  local t = 5 + 2 * n_requests
  local n_finished = tonumber(ARGV[t + 1])
  for i = t + 2, t + 1 + n_finished do redis.call('HSET', KEYS[5], ARGV[i], ARGV[t]) end
  for i = t + 2 + n_finished, #ARGV do redis.call('HDEL', KEYS[6], ARGV[i]) end
end
return 1
