-- Extend a lease the caller holds.
--
-- KEYS[1] the lock; ARGV[1] the caller's token, ARGV[2] the new lease in milliseconds.
-- Returns 1 if renewed, 0 if the lock no longer holds the token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
