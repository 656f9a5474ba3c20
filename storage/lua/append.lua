-- append: add messages whose ids the ledger has not seen, in order, exactly once.
-- ARGV: ttl_ms, owner ('' = no lease check), then id_1, record_1, id_2, record_2, ...
-- Returns {'ok', flags, length, version}: flags has one char per input message,
--   '1' appended, '0' skipped (already in the ledger, or earlier in this batch);
--   {'not_found'}; {'lease_lost', holder_or_empty}.
local ttl, owner = tonumber(ARGV[1]), ARGV[2]
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
if owner ~= '' then
  local holder = redis.call('GET', K_LEASE)
  if holder ~= owner then
    return {'lease_lost', holder or ''}
  end
end
local length = redis.call('LLEN', K_MSGS)
local flags, fresh = {}, {}
for i = 3, #ARGV, 2 do
  -- HSETNX is the dedup: it both tests the ledger and claims the id (and its
  -- position), so a repeat later in the same batch is skipped too.
  if redis.call('HSETNX', K_IDS, ARGV[i], length + #fresh) == 1 then
    fresh[#fresh + 1] = ARGV[i + 1]
    flags[#flags + 1] = '1'
  else
    flags[#flags + 1] = '0'
  end
end
local version
if #fresh > 0 then
  chunked('RPUSH', K_MSGS, fresh)
  version = bump()
else
  version = current_version()
end
touch(ttl)
return {'ok', table.concat(flags), length + #fresh, version}
