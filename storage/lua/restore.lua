-- restore: make a cold snapshot the hot thread, all at once. Either the records
-- come inline (small threads) or they were staged in chunks and are swapped in
-- here with RENAME. Refuses if the thread is already hot (hot wins; a second
-- concurrent hydrate is a no-op), if the snapshot is older than the archive this
-- Redis last evicted (a stale read must not resurrect old content), or if a delete
-- or prune tombstoned its incarnation (created before the tombstone).
-- Rebase mode (expect_version given): replace the *hot* copy with the snapshot (a
-- merge of a diverged hot copy and its archive, see storage/lineage.py), only if the
-- hot copy is still exactly the one merged (version and lineage head); the lease,
-- the pin and the finished turns stay.
-- KEYS[1..N_DATA]: thread keys; then staging msgs, staging ids.
-- ARGV: ttl_ms, mode ('inline'|'staged'), n_records, version, epoch, etag,
--   created, updated, parent, fork_point, creator, has_state, state,
--   pin_ms (keep the thread from eviction this long), head (lineage stamp),
--   expect_version ('' = restore an absent thread), expect_head, last_merge (JSON
--   or ''), layout (JSON of the archive's parts, '' for a schema-1 archive: the next
--   flush then writes a base), base_version, n_turns, then n_turns finished turn ids,
--   then (inline only) n ids, n records, retired ids.
-- Returns {'restored', n}; {'hot'}; {'stale', archived_version}; {'deleted'};
--   {'incomplete'}; rebase: {'rebased', n}; {'moved'} (the hot copy changed).
-- (The ARGV layout is built by HotStore.restore.)
local S_MSGS, S_IDS = KEYS[N_DATA + 1], KEYS[N_DATA + 2]
local ttl, mode, n, version = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local expect_version, expect_head = ARGV[16], ARGV[17]
local rebase = expect_version ~= ''
local function refuse(reply)
  redis.call('DEL', S_MSGS, S_IDS)
  return reply
end
if rebase then
  local found = redis.call('HMGET', K_META, 'version', 'head', 'epoch')
  if found[1] ~= expect_version or (found[2] or '') ~= expect_head or found[3] ~= ARGV[5] then
    return refuse({'moved'})
  end
else
  if redis.call('EXISTS', K_META) == 1 then
    return refuse({'hot'})
  end
  local evicted = tonumber(redis.call('HGET', K_ARCHIVED, 'version') or '-1')
  if evicted > version then
    return refuse({'stale', evicted})
  end
  if tonumber(ARGV[7]) <= tonumber(redis.call('GET', K_TOMB) or '-1') then
    return refuse({'deleted'})
  end
  -- Finished turns left by the eviction of this same incarnation (see flush_commit.lua)
  -- are kept and merged with the snapshot's; any others are dropped.
  if redis.call('HGET', K_ARCHIVED, 'epoch') ~= ARGV[5] then
    redis.call('DEL', K_TURNS)
  end
end
if mode == 'staged' and redis.call('LLEN', S_MSGS) ~= n then
  return refuse({'incomplete'}) -- checked before anything is replaced
end
redis.call('DEL', K_MSGS, K_IDS, K_STATE)
local pin_ms, n_turns = tonumber(ARGV[14]), tonumber(ARGV[21])
local base = 21 + n_turns -- ARGV index before the inline records
if n_turns > 0 then
  local finished = {}
  for i = 22, base do
    finished[#finished + 1] = ARGV[i]
    finished[#finished + 1] = 0
  end
  chunked('HSET', K_TURNS, finished)
end
if mode == 'staged' then
  swap_staged(S_MSGS, S_IDS, n)
else
  write_records(K_MSGS, K_IDS, base, n, 0)
end
if ARGV[12] == '1' then
  redis.call('SET', K_STATE, ARGV[13])
end
redis.call('HSET', K_META, 'version', version, 'epoch', ARGV[5], 'cold_version', version,
  'cold_etag', ARGV[6], 'created', ARGV[7], 'updated', ARGV[8], 'parent', ARGV[9],
  'fork_point', ARGV[10], 'creator', ARGV[11], 'head', ARGV[15])
if ARGV[18] ~= '' then
  redis.call('HSET', K_META, 'last_merge', ARGV[18])
end
if rebase then
  rewritten()
end
if ARGV[19] ~= '' then
  redis.call('HSET', K_META, 'cold_parts', ARGV[19], 'cold_base', ARGV[20], 'cold_len', n)
else
  redis.call('HDEL', K_META, 'cold_parts', 'cold_base', 'cold_len')
end
if rebase then
  touch(ttl)
  return {'rebased', n}
end
redis.call('HSET', K_META, 'pinned_until', now_ms() + pin_ms)
redis.call('DEL', K_ARCHIVED)
touch(ttl)
return {'restored', n}
