-- delete: remove every hot key of the thread, lease and archive marker included.
-- Idempotent. Returns 1 if the thread existed hot, else 0.
local existed = redis.call('EXISTS', K_META)
redis.call('DEL', K_META, K_MSGS, K_IDS, K_STATE, K_LEASE, K_ARCHIVED, K_TURNS)
return existed
