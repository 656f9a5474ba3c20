-- Prepended to every script in this folder (see storage/hot.py). Other files
-- named _*.lua are shared parts, added after this one to the scripts that use
-- them (hot.py's _SCRIPT_PARTS); they are not scripts of their own.
-- KEYS[1..N_DATA] are always the keys of the thread being written (or read):
--   meta (HASH, existence marker), msgs (LIST of JSON records),
--   ids (HASH message id -> position, -1 = retired; the dedup ledger),
--   state (STRING, JSON), lease (STRING owner, PX expiry),
--   archived (HASH version/etag/epoch of the cold archive; only while evicted),
--   turns (HASH lease owner -> finished ms: turns that ended and may not run again).
-- Scripts that need more keys take them after these (KEYS[N_DATA + 1], ...).
-- Every script validates and reads first and writes last, so a refusal or an
-- error leaves nothing half-written.
local K_META, K_MSGS, K_IDS, K_STATE, K_LEASE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_ARCHIVED, K_TURNS = KEYS[6], KEYS[7]
local N_DATA = 7
local CHUNK = 500 -- values per variadic command; well under Lua's unpack limit

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Refresh the expiry of every data key of the thread; the lease keeps its own.
local function touch(ttl_ms)
  if ttl_ms > 0 then
    redis.call('PEXPIRE', K_META, ttl_ms)
    redis.call('PEXPIRE', K_MSGS, ttl_ms)
    redis.call('PEXPIRE', K_IDS, ttl_ms)
    redis.call('PEXPIRE', K_STATE, ttl_ms)
    redis.call('PEXPIRE', K_TURNS, ttl_ms)
  end
end

-- Record one mutation: version + 1, updated = now. Returns the new version.
local function bump()
  redis.call('HSET', K_META, 'updated', now_ms())
  return redis.call('HINCRBY', K_META, 'version', 1)
end

local function current_version()
  return tonumber(redis.call('HGET', K_META, 'version') or '0')
end

-- Run a variadic command over items[first..last] in bounded chunks.
local function chunked(cmd, key, items)
  for i = 1, #items, CHUNK do
    redis.call(cmd, key, unpack(items, i, math.min(i + CHUNK - 1, #items)))
  end
end
