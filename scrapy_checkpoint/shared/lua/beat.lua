-- A worker's own record, unless another worker has recorded it adopted: then the writer
-- must stop (it was taken for dead).
--
-- A worker whose inbox holds work is not idle: another worker gave it units (give.lua
-- recorded it 'running') and it has not scheduled them yet. Its record then says
-- 'running' even when the writer, not yet aware of the gift, says 'idle'; otherwise a
-- giver could take it for idle, leave the stage finished, and nobody would adopt the
-- given units if this worker then died.
--
-- KEYS[1] the workers (HASH worker -> JSON record), KEYS[2] the worker's inbox (LIST),
-- then the other shared keys of the stage (their expiry is refreshed).
-- ARGV[1] the worker, ARGV[2] its record (JSON), ARGV[3] the expiry in seconds.
--
-- Returns 1 if written, 0 if the worker was adopted.
-- A record that does not decode (written over by something else) is rewritten: the
-- worker knows its own record.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and type(decoded) == 'table' and decoded['status'] == 'adopted' then return 0 end
end
local record = ARGV[2]
if redis.call('LLEN', KEYS[2]) > 0 then
  record = string.gsub(record, '"status":"idle"', '"status":"running"', 1)
end
redis.call('HSET', KEYS[1], ARGV[1], record)
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return 1
