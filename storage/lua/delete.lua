-- delete: remove every hot key of the thread, lease and archive marker included, and
-- leave a tombstone (the time of the delete) so that a hydrate that read the archive
-- before the delete, or a flush that uploaded after it, can never restore it.
-- Idempotent. ARGV: tomb_ttl_ms (0: no tombstone). Returns 1 if the thread existed hot, else 0.
local existed = redis.call('EXISTS', K_META)
redis.call('DEL', K_META, K_MSGS, K_IDS, K_STATE, K_LEASE, K_ARCHIVED, K_TURNS)
if tonumber(ARGV[1]) > 0 then
  redis.call('SET', K_TOMB, now_ms(), 'PX', tonumber(ARGV[1]))
end
return existed
