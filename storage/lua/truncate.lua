-- truncate: drop one message and everything after it, and forget their ids in
-- the ledger so that a rewind can append them again. Idempotent: an id that is
-- not (or no longer) in the thread changes nothing. With an owner, the lease is
-- checked only if something would be removed (as in append.lua): a rewind by a
-- turn that lost its lease must not cut the next turn's messages.
-- ARGV: ttl_ms, message_id, owner ('' = no lease check)
-- Returns {'ok', removed_ids, length, version}; {'not_found'};
--   {'lease_lost', holder_or_empty}.
local ttl, message_id, owner = tonumber(ARGV[1]), ARGV[2], ARGV[3]
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
local pos = tonumber(redis.call('HGET', K_IDS, message_id) or '-1')
if pos < 0 then
  touch(ttl)
  return {'ok', {}, redis.call('LLEN', K_MSGS), current_version()}
end
local refusal = lease_refusal(owner)
if refusal then
  return refusal
end
local removed = {}
for i, raw in ipairs(redis.call('LRANGE', K_MSGS, pos, -1)) do
  removed[i] = cjson.decode(raw)['id']
end
if pos == 0 then
  redis.call('DEL', K_MSGS) -- LTRIM 0 -1 would keep everything
else
  redis.call('LTRIM', K_MSGS, 0, pos - 1)
end
chunked('HDEL', K_IDS, removed)
rewritten()
local version = bump()
touch(ttl)
return {'ok', removed, pos, version}
