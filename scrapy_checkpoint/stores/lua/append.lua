-- Append one journal group to a stage's list, once.
--
-- KEYS[1] the stage's lock, KEYS[2] its journal (LIST), KEYS[3] its meta (HASH);
-- with unit tracking (RedisStore.track_units) also KEYS[4] the hash of finished units
-- and KEYS[5] the hash of units not yet journaled.
-- ARGV[1] the caller's lock token, ARGV[2] the group's sequence number, ARGV[3] the
-- group; with unit tracking also ARGV[4] the value finished units get, ARGV[5] how
-- many finished units follow, then their codes, then the codes of the units it adds.
--
-- Fails with STAGE_GONE when the stage's keys are gone, with LOST_LOCK when the caller no
-- longer holds the lock. Returns 0 without
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
if tonumber(ARGV[2]) <= last then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[3], 'seq', ARGV[2])
local ttl = redis.call('TTL', KEYS[3])
if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
-- The units the group finishes are marked finished, and the units it adds leave the
-- hash of units not yet journaled, in this same call.
if #KEYS >= 5 then
  local n_finished = tonumber(ARGV[5])
  for i = 6, 5 + n_finished do redis.call('HSET', KEYS[4], ARGV[i], ARGV[4]) end
  for i = 6 + n_finished, #ARGV do redis.call('HDEL', KEYS[5], ARGV[i]) end
end
return 1
