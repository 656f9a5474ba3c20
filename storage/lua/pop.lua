-- pop: remove the thread's last record and return it, and forget its id in the ledger
-- so that it may be appended again (a rewind by one, e.g. an agent session's
-- pop_item). A rewrite of the list, as in truncate.lua: the archive's records may no
-- longer be a prefix of it. An empty thread changes nothing. With an owner, the lease
-- is checked only if something would be removed (as in truncate.lua): a turn that
-- lost its lease must not pop the next turn's message.
-- ARGV: ttl_ms, owner ('' = no lease check)
-- Returns {'ok', record_or_empty, length, version} (length after the pop; '' when the
--   thread was empty); {'not_found'}; {'lease_lost', holder_or_empty}.
local ttl, owner = tonumber(ARGV[1]), ARGV[2]
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
local raw = redis.call('LINDEX', K_MSGS, -1)
if not raw then
  touch(ttl)
  return {'ok', '', 0, current_version()}
end
local refusal = lease_refusal(owner)
if refusal then
  return refusal
end
redis.call('RPOP', K_MSGS)
redis.call('HDEL', K_IDS, cjson.decode(raw)['id'])
rewritten()
local version = bump()
touch(ttl)
return {'ok', raw, redis.call('LLEN', K_MSGS), version}
