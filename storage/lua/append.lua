-- append: add messages whose ids the ledger has not seen, in order, exactly once.
-- With an owner, the lease is checked only if something would be written: a
-- redelivered append whose messages are all stored succeeds without the lease.
-- ARGV: ttl_ms, owner ('' = no lease check), index_refresh_ms, then id_1, record_1, ...
-- Returns {'ok', flags, length, version, due}: flags has one char per input message,
--   '1' appended, '0' skipped (already in the ledger, or earlier in this batch);
--   due is 1 when the activity index was last written for this thread at least
--   index_refresh_ms ago (meta 'indexed'; then set to now): the caller marks it;
--   {'not_found'}; {'lease_lost', holder_or_empty}.
local ttl, owner, refresh = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
local length = redis.call('LLEN', K_MSGS)
local flags, fresh, fresh_ids, seen = {}, {}, {}, {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  if seen[id] or redis.call('HEXISTS', K_IDS, id) == 1 then
    flags[#flags + 1] = '0'
  else
    seen[id] = true
    fresh_ids[#fresh_ids + 1] = id
    fresh_ids[#fresh_ids + 1] = length + #fresh
    fresh[#fresh + 1] = ARGV[i + 1]
    flags[#flags + 1] = '1'
  end
end
if owner ~= '' and #fresh > 0 then
  local holder = redis.call('GET', K_LEASE)
  if holder ~= owner then
    return {'lease_lost', holder or ''}
  end
end
local version
if #fresh > 0 then
  chunked('HSET', K_IDS, fresh_ids)
  chunked('RPUSH', K_MSGS, fresh)
  version = bump()
else
  version = current_version()
end
touch(ttl)
local now, due = now_ms(), 0
if now - tonumber(redis.call('HGET', K_META, 'indexed') or '0') >= refresh then
  redis.call('HSET', K_META, 'indexed', now)
  due = 1
end
return {'ok', table.concat(flags), length + #fresh, version, due}
