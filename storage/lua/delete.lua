-- delete: remove every key of the thread, lease included. Idempotent.
-- Returns 1 if the thread existed, else 0.
local existed = redis.call('EXISTS', K_META)
redis.call('DEL', K_META, K_MSGS, K_IDS, K_STATE, K_LEASE)
return existed
