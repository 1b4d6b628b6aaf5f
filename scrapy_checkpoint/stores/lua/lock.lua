-- Take a stage's lock and record its owner, in one step.
--
-- KEYS[1] the stage's lock, KEYS[2] its owner record, KEYS[3] the set of stage names.
-- ARGV[1] the new token, ARGV[2] the lease in milliseconds, ARGV[3] the owner (JSON),
-- ARGV[4] the stage's name, ARGV[5] the token a take-over replaces ('' when the lock
-- must be free).
--
-- Returns 1 when the caller holds the lock now (its owner recorded with it: no reader
-- ever sees the lock with an older owner's record); else the token the lock holds,
-- which names its holder's host and pid.
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[5] then return current end
if not current and ARGV[5] ~= '' then return '' end  -- freed meanwhile: try again as new
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
return 1
