-- tombstone: mark an archive about to be pruned, unless the thread is in use (hot, or
-- evicted so recently that its marker remains). Restores of incarnations created up
-- to now are refused from here on, so a hydrate racing the prune cannot bring back a
-- thread whose archive is then deleted (and lose it at its next flush).
-- ARGV: tomb_ttl_ms. Returns 1 if tombstoned (prune it), 0 if in use (keep it).
if redis.call('EXISTS', K_META) == 1 or redis.call('EXISTS', K_ARCHIVED) == 1 then
  return 0
end
redis.call('SET', K_TOMB, now_ms(), 'PX', tonumber(ARGV[1]))
return 1
