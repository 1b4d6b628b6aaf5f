-- Give units a worker owns, with their payloads, to an idle worker's inbox; their
-- claims move with them.
--
-- KEYS[1] the claims (HASH), KEYS[2] the taker's inbox (LIST), KEYS[3] the workers
-- (HASH worker -> JSON record).
-- ARGV[1] the giver, ARGV[2] the taker, then pairs of (unit code, inbox item), then
-- the inbox's expiry in seconds.
--
-- Returns the codes given (a unit no longer claimed by the giver stays).
local giver, taker = ARGV[1], ARGV[2]
-- Only to a worker waiting for work: one that is leaving must not receive any.
-- (A record that does not decode is no idle worker's.)
local record = redis.call('HGET', KEYS[3], taker)
if not record then return {} end
local ok, decoded = pcall(cjson.decode, record)
if not ok or type(decoded) ~= 'table' or decoded['status'] ~= 'idle' then return {} end
local given = {}
for i = 3, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == giver then
    redis.call('HSET', KEYS[1], ARGV[i], taker)
    redis.call('RPUSH', KEYS[2], ARGV[i + 1])
    given[#given + 1] = ARGV[i]
  end
end
if #given > 0 then
  redis.call('EXPIRE', KEYS[2], ARGV[#ARGV])
  -- It has work now: no other worker may take it for idle and leave before it starts.
  -- (The record is edited as text: cjson would turn its empty lists into objects.)
  local running = string.gsub(record, '"status":"idle"', '"status":"running"', 1)
  redis.call('HSET', KEYS[3], taker, running)
end
return given
