-- Write the readable state: only by the lock's holder (or by anyone while nobody holds
-- it), with the version bumped and every key's expiry refreshed, in one step, so the
-- journal appends that go on meanwhile cannot make it fail or retry.
--
-- KEYS[1] the stage's lock, KEYS[2] its state, KEYS[3] its meta (HASH), KEYS[4] its
-- journal (LIST), then every other key of the stage (their expiry is refreshed too).
-- ARGV[1] the caller's lock token ('' for none), ARGV[2] the state, ARGV[3] the
-- expiry in seconds.
--
-- Returns 0 (nothing written) if another process holds the lock, -1 (nothing written)
-- if the caller held it and the stage's lock, journal and meta are all gone (a Redis
-- restarted without its data, or flushed: writing would bring back a state and a meta
-- with no journal, and the next run would start over from nothing), else 1.
if ARGV[1] ~= '' then
  local holder = redis.call('GET', KEYS[1])
  if holder and holder ~= ARGV[1] then return 0 end
  if not holder and redis.call('EXISTS', KEYS[1], KEYS[3], KEYS[4]) == 0 then return -1 end
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'version', 1)
for i = 2, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return 1
