-- Install a snapshot and trim the journal records it covers, in one step.
--
-- KEYS[1] the stage's lock, KEYS[2] its journal (LIST), KEYS[3] its meta (HASH),
-- KEYS[4] the snapshot, KEYS[5] the previous snapshot.
-- ARGV[1] the caller's lock token, ARGV[2] the snapshot, ARGV[3] how many journal
-- records (counted from the first ever appended) it covers.
--
-- Fails with LOST_LOCK unless the caller still holds the lock, with BAD_META when meta's
-- base is not a number. Returns 0 and changes
-- nothing if a newer snapshot is already there, else 1.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('LOST_LOCK the stage lock expired and another process may own it')
end
local base = tonumber(redis.call('HGET', KEYS[3], 'base') or '0')
if base == nil then
  return redis.error_reply('BAD_META base')  -- written over by something else
end
local covered = tonumber(ARGV[3])
if covered < base then return 0 end
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('RENAME', KEYS[4], KEYS[5]) end
redis.call('SET', KEYS[4], ARGV[2])
redis.call('LTRIM', KEYS[2], covered - base, -1)
redis.call('HSET', KEYS[3], 'base', covered)
local ttl = redis.call('TTL', KEYS[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[4], ttl)
  if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('EXPIRE', KEYS[5], ttl) end
end
return 1
