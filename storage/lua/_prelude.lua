-- Prepended to every script in this folder (see storage/hot.py). Other files
-- named _*.lua are shared parts, added after this one to the scripts that use
-- them (hot.py's _SCRIPT_PARTS); they are not scripts of their own.
-- KEYS[1..N_DATA] are always the keys of the thread being written (or read):
--   meta (HASH, existence marker), msgs (LIST of JSON records),
--   ids (HASH message id -> position, -1 = retired; the dedup ledger),
--   state (STRING, JSON), lease (STRING owner, PX expiry),
--   archived (HASH version/etag/epoch of the cold archive; only while evicted),
--   turns (HASH lease owner -> finished ms: turns that ended and may not run again),
--   tomb (STRING ms of the last delete or prune: incarnations created up to then are
--   never restored again), runs (HASH turn id -> turn record JSON: storage/turns.py).
-- Scripts that need more keys take them after these (KEYS[N_DATA + 1], ...).
-- Every script validates and reads first and writes last, so a refusal or an
-- error leaves nothing half-written.
local K_META, K_MSGS, K_IDS, K_STATE, K_LEASE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_ARCHIVED, K_TURNS, K_TOMB, K_RUNS = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local N_DATA = 9
local CHUNK = 500 -- values per variadic command; well under Lua's unpack limit

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The expiry of every data key of the thread; the lease keeps its own. ttl_ms > 0:
-- the TTL is the retention (a hot tier without a cold tier). ttl_ms < 0: a cold tier
-- archives this store, so the TTL (-ttl_ms) runs only while the hot copy equals its
-- archive; a thread ahead of its archive never expires. 0: never expire.
-- Meta 'expiry' remembers what the last refresh did to the keys: 'p' (persisted) or
-- '<deadline_ms>:<keys that existed>'. Expiring keys are refreshed only when due: less
-- than half the TTL left (or more than the TTL, after a configuration change), or a
-- key created since. So a thread expires between ttl/2 and ttl after its last write.
local EXPIRY_KEYS = {K_META, K_MSGS, K_IDS, K_STATE, K_TURNS, K_RUNS}

-- touch() once meta's version, cold_version and expiry are known. kept: this script
-- wrote only with commands that keep the keys' expiries (HSET, RPUSH onto an existing
-- key) and created no key but meta's fields; otherwise the expiry is set again.
local function touch_fields(ttl_ms, version, cold_version, expiry, kept)
  if ttl_ms == 0 then
    return
  end
  if ttl_ms < 0 then
    if tonumber(version) ~= tonumber(cold_version) then
      if expiry ~= 'p' then -- only touch() sets expiries while meta exists
        for _, key in ipairs(EXPIRY_KEYS) do
          redis.call('PERSIST', key)
        end
        redis.call('HSET', K_META, 'expiry', 'p')
      end
      return
    end
    ttl_ms = -ttl_ms
  end
  local now = now_ms()
  if kept and expiry and expiry ~= 'p' then
    local deadline, count = string.match(expiry, '^(%d+):(%d+)$')
    local left = tonumber(deadline or '0') - now
    if left >= ttl_ms / 2 and left <= ttl_ms
        and redis.call('EXISTS', unpack(EXPIRY_KEYS)) == tonumber(count) then
      return
    end
  end
  local count = 0
  for _, key in ipairs(EXPIRY_KEYS) do
    count = count + redis.call('PEXPIRE', key, ttl_ms)
  end
  redis.call('HSET', K_META, 'expiry', (now + ttl_ms) .. ':' .. count)
end

local function touch(ttl_ms)
  if ttl_ms == 0 then
    return
  end
  local v = redis.call('HMGET', K_META, 'version', 'cold_version', 'expiry')
  if not v[1] and redis.call('EXISTS', K_META) == 0 then -- nowhere to remember it
    for _, key in ipairs(EXPIRY_KEYS) do
      redis.call('PEXPIRE', key, math.abs(ttl_ms))
    end
    return
  end
  touch_fields(ttl_ms, v[1], v[2], v[3], false)
end

-- A lineage stamp: unique per mutation of one history, so two copies that reached
-- the same version by different writes (a Redis rollback, then new writes) differ.
local function stamp(version)
  local t = redis.call('TIME')
  return version .. '.' .. t[1] .. t[2]
end

-- Record one mutation: version + 1, updated = now, a new lineage head. Returns the
-- new version.
local function bump()
  local version = redis.call('HINCRBY', K_META, 'version', 1)
  redis.call('HSET', K_META, 'updated', now_ms(), 'head', stamp(version))
  return version
end

-- The creation time of a new incarnation: after the last delete of this id, so a
-- tombstone refuses only the incarnations it deleted.
local function created_ms()
  return math.max(now_ms(), tonumber(redis.call('GET', K_TOMB) or '0') + 1)
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

-- The reply refusing a write by owner (not '') when the lease is not owner's; nil
-- when the write may go on.
local function lease_refusal(owner)
  if owner == '' then
    return nil
  end
  local holder = redis.call('GET', K_LEASE)
  if holder ~= owner then
    return {'lease_lost', holder or ''}
  end
  return nil
end

-- The ledger entry (list position, '-1' retired, false unknown) of each of ids, in
-- bounded HMGET chunks.
local function ledger_of(ids)
  local known = {}
  for i = 1, #ids, CHUNK do
    local found = redis.call('HMGET', K_IDS, unpack(ids, i, math.min(i + CHUNK - 1, #ids)))
    for j = 1, #found do
      known[i + j - 1] = found[j]
    end
  end
  return known
end

-- Write records and their ledger given in ARGV: n ids at ARGV[base + 1 ..], then
-- their n records, then retired ids (ledger position -1) up to the end of ARGV;
-- the records take positions first, first + 1, ...
local function write_records(msgs_key, ids_key, base, n, first)
  local ledger, records = {}, {}
  for i = 1, n do
    ledger[#ledger + 1] = ARGV[base + i]
    ledger[#ledger + 1] = first + i - 1
    records[i] = ARGV[base + n + i]
  end
  for i = base + 2 * n + 1, #ARGV do
    ledger[#ledger + 1] = ARGV[i]
    ledger[#ledger + 1] = -1
  end
  chunked('RPUSH', msgs_key, records)
  chunked('HSET', ids_key, ledger)
end

-- Swap n records staged by HotStore._stage (and their ledger) in as the thread's list and
-- ledger, with no expiry of their own. False, and the staging dropped, if the
-- staging list does not hold exactly n records (it expired: start over).
local function swap_staged(s_msgs, s_ids, n)
  if redis.call('LLEN', s_msgs) ~= n then
    redis.call('DEL', s_msgs, s_ids)
    return false
  end
  if n > 0 then
    redis.call('RENAME', s_msgs, K_MSGS)
  end
  if redis.call('EXISTS', s_ids) == 1 then
    redis.call('RENAME', s_ids, K_IDS)
  end
  redis.call('PERSIST', K_MSGS)
  redis.call('PERSIST', K_IDS)
  return true
end

-- The list changed other than at its end (truncate, replace, a move to the front, a
-- rebase): the archive's records are no longer a prefix of it, so the next flush
-- writes a new base (storage/archive.py). 'rewrites' tells a flush that read the list
-- in chunks, or is about to record what it archived, that it changed meanwhile.
local function rewritten()
  redis.call('HDEL', K_META, 'cold_len')
  redis.call('HINCRBY', K_META, 'rewrites', 1)
end
