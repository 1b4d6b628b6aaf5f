-- Compare-and-delete: release a lock only if the caller still holds it.
--
-- KEYS[1] the lock; ARGV[1] the caller's token.
-- Returns 1 if deleted, 0 if the key held something else (or nothing).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
