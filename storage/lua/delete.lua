-- delete: remove every hot key of the thread, lease and archive marker included, and
-- leave a tombstone (the time of the delete) so that a hydrate that read the archive
-- before the delete, or a flush that uploaded after it, can never restore it.
-- A delete of an id in no tier (hot, evicted or, says the caller, archived) leaves none.
-- Idempotent. ARGV: tomb_ttl_ms (0: no tombstone), archived ('1': the caller saw an
-- archive). Returns 1 if the thread existed hot, else 0.
local existed = redis.call('EXISTS', K_META)
local known = existed == 1 or redis.call('EXISTS', K_ARCHIVED) == 1 or ARGV[2] == '1'
redis.call('DEL', K_META, K_MSGS, K_IDS, K_STATE, K_LEASE, K_ARCHIVED, K_TURNS, K_RUNS)
if tonumber(ARGV[1]) > 0 and known then
  redis.call('SET', K_TOMB, now_ms(), 'PX', tonumber(ARGV[1]))
end
return existed
