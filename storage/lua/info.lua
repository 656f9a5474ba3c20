-- info: one consistent view of a thread's metadata.
-- Returns {'ok', length, meta_flat_pairs, lease_owner_or_empty, lease_pttl, meta_pttl};
--   {'not_found'}.
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
return {
  'ok',
  redis.call('LLEN', K_MSGS),
  redis.call('HGETALL', K_META),
  redis.call('GET', K_LEASE) or '',
  redis.call('PTTL', K_LEASE),
  redis.call('PTTL', K_META),
}
