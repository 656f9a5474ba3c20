-- flush_commit: after an upload, record the archive and evict if that is safe.
-- Eviction happens only if the thread is still the incarnation that was read
-- (epoch), its version is still the archived one (no write raced the upload)
-- and no lease is held (no turn is running) and it is not pinned (restored a
-- moment ago for a write that has not landed yet). Otherwise the thread stays hot and
-- the next flush archives the newer version. Never regresses cold_version.
-- A released owner is recorded as a finished turn: a late duplicate of that turn's
-- acquire_lease (a redelivered chain step) can then never take the lease again.
-- ARGV: archived_version, etag, epoch, evict ('1'|'0'), release_owner ('' = none),
--   marker_ttl_ms (how long the 'archived' marker outlives the eviction), ttl_ms (the
--   store's expiry argument: a kept copy that now equals its archive starts its TTL),
--   archived_count ('' = leave the layout fields as they are), layout (JSON of the
--   archive's parts, storage/archive.py), base_version, rewrites (meta 'rewrites' when
--   the records were read: the first archived_count records are still the archive's
--   only if no rewrite happened since; then they become meta 'cold_len').
-- A concurrent flush of the same incarnation may have evicted the thread while we
-- uploaded (its upload lost the CAS to ours and adopted our archive): the archive
-- marker then carries our epoch, and the thread is 'evicted', not 'gone' -- the
-- caller deletes the upload of a 'gone' thread, which here is the only copy.
-- Returns {'evicted', version}; {'kept', version, lease_holder_or_empty}; {'gone'}.
local archived, etag, epoch = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local evict, release_owner, marker_ttl = ARGV[4], ARGV[5], tonumber(ARGV[6])
local ttl = tonumber(ARGV[7])
local count, layout, base_version, rewrites = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
if redis.call('EXISTS', K_META) == 0 then
  if redis.call('HGET', K_ARCHIVED, 'epoch') == epoch then
    return {'evicted', tonumber(redis.call('HGET', K_ARCHIVED, 'version'))}
  end
  return {'gone'}
end
if redis.call('HGET', K_META, 'epoch') ~= epoch then
  return {'gone'}
end
local recorded = tonumber(redis.call('HGET', K_META, 'cold_version') or '-1')
local holder = redis.call('GET', K_LEASE) or ''
if release_owner ~= '' and holder == release_owner then
  holder = '' -- released below
end
local version = current_version()
local pinned = tonumber(redis.call('HGET', K_META, 'pinned_until') or '0') > now_ms()
local evicting = evict == '1' and version == archived and recorded <= archived
  and holder == '' and not pinned
if evicting then
  -- The first write: under maxmemory with noeviction Redis refuses a script only at
  -- a first write that adds memory, so a full Redis can still evict (and recover).
  redis.call('DEL', K_META, K_MSGS, K_IDS, K_STATE)
elseif recorded < archived then
  redis.call('HSET', K_META, 'cold_version', archived, 'cold_etag', etag)
  if count ~= '' then
    redis.call('HSET', K_META, 'cold_parts', layout, 'cold_base', base_version)
    if (redis.call('HGET', K_META, 'rewrites') or '0') == rewrites then
      redis.call('HSET', K_META, 'cold_len', count)
    else
      redis.call('HDEL', K_META, 'cold_len')
    end
  end
end
if release_owner ~= '' then
  if redis.call('GET', K_LEASE) == release_owner then
    redis.call('DEL', K_LEASE)
  end
  if redis.call('HEXISTS', K_TURNS, release_owner) == 0 then
    redis.call('HSET', K_TURNS, release_owner, version)
  end
end
if evicting then
  redis.call('HSET', K_ARCHIVED, 'version', archived, 'etag', etag, 'epoch', epoch)
  redis.call('PEXPIRE', K_ARCHIVED, marker_ttl)
  -- The finished turns outlive the eviction as long as the marker: the archive just
  -- uploaded was read before this call marked release_owner, and a late duplicate
  -- of that turn must still find it finished after a restore (restore.lua keeps them).
  redis.call('PEXPIRE', K_TURNS, marker_ttl)
  redis.call('PEXPIRE', K_RUNS, marker_ttl) -- turn records stay queryable as long
  return {'evicted', version}
end
touch(ttl)
return {'kept', version, holder}
