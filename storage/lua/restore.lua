-- restore: make a cold snapshot the hot thread, all at once. Either the records
-- come inline (small threads) or they were staged in chunks and are swapped in
-- here with RENAME. Refuses if the thread is already hot (hot wins; a second
-- concurrent hydrate is a no-op) or if the snapshot is older than the archive
-- this Redis last evicted (a stale read must not resurrect old content).
-- KEYS[1..N_DATA]: thread keys; then staging msgs, staging ids.
-- ARGV: ttl_ms, mode ('inline'|'staged'), n_records, version, epoch, etag,
--   created, updated, parent, fork_point, creator, has_state, state,
--   pin_ms (keep the thread from eviction this long), n_turns, then n_turns
--   finished turn ids,
--   then (inline only) n ids, n records, retired ids.
-- Returns {'restored', n}; {'hot'}; {'stale', archived_version}; {'incomplete'}.
-- (The ARGV layout is built by HotStore.restore.)
local S_MSGS, S_IDS = KEYS[N_DATA + 1], KEYS[N_DATA + 2]
local ttl, mode, n, version = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local function discard_staging()
  redis.call('DEL', S_MSGS, S_IDS)
end
if redis.call('EXISTS', K_META) == 1 then
  discard_staging()
  return {'hot'}
end
local evicted = tonumber(redis.call('HGET', K_ARCHIVED, 'version') or '-1')
if evicted > version then
  discard_staging()
  return {'stale', evicted}
end
-- Finished turns left by the eviction of this same incarnation (see flush_commit.lua)
-- are kept and merged with the snapshot's; any others are dropped.
if redis.call('HGET', K_ARCHIVED, 'epoch') ~= ARGV[5] then
  redis.call('DEL', K_TURNS)
end
redis.call('DEL', K_MSGS, K_IDS, K_STATE)
local pin_ms, n_turns = tonumber(ARGV[14]), tonumber(ARGV[15])
local base = 15 + n_turns -- ARGV index before the inline records
if n_turns > 0 then
  local finished = {}
  for i = 16, base do
    finished[#finished + 1] = ARGV[i]
    finished[#finished + 1] = 0
  end
  chunked('HSET', K_TURNS, finished)
end
if mode == 'staged' then
  if not swap_staged(S_MSGS, S_IDS, n) then
    return {'incomplete'}
  end
else
  write_records(K_MSGS, K_IDS, base, n, 0)
end
if ARGV[12] == '1' then
  redis.call('SET', K_STATE, ARGV[13])
end
redis.call('HSET', K_META, 'version', version, 'epoch', ARGV[5], 'cold_version', version,
  'cold_etag', ARGV[6], 'created', ARGV[7], 'updated', ARGV[8], 'parent', ARGV[9],
  'fork_point', ARGV[10], 'creator', ARGV[11], 'pinned_until', now_ms() + pin_ms)
redis.call('DEL', K_ARCHIVED)
touch(ttl)
return {'restored', n}
