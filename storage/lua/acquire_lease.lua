-- acquire_lease: one agent turn at a time per thread. The same owner may
-- acquire again (a redelivered turn) and so renews the expiry; an owner whose
-- turn already finished gets nothing (a late duplicate must not block the thread).
-- ARGV: owner, ttl_ms
-- Returns {'ok', renewed (1|0)}; {'finished'}; {'not_found'}; {'held', holder, pttl}.
local owner, ttl = ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
if redis.call('HEXISTS', K_TURNS, owner) == 1 then
  return {'finished'}
end
local holder = redis.call('GET', K_LEASE)
if not holder then
  redis.call('SET', K_LEASE, owner, 'PX', ttl)
  return {'ok', 0}
end
if holder == owner then
  redis.call('PEXPIRE', K_LEASE, ttl)
  return {'ok', 1}
end
return {'held', holder, redis.call('PTTL', K_LEASE)}
