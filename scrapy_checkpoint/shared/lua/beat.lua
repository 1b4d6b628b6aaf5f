-- A worker's own record, unless another worker has recorded it adopted: then the writer
-- must stop (it was taken for dead).
--
-- KEYS[1] the workers (HASH worker -> JSON record), then the other shared keys of the
-- stage (their expiry is refreshed).
-- ARGV[1] the worker, ARGV[2] its record (JSON), ARGV[3] the expiry in seconds.
--
-- Returns 1 if written, 0 if the worker was adopted.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and cjson.decode(current)['status'] == 'adopted' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return 1
