-- flush_read: everything a snapshot needs, read in one consistent step.
-- ARGV: force ('1' = read records even when the archive is current),
--   release_owner ('' = none): the turn this flush ends. A turn not yet recorded as
--   finished is recorded here, before the read, as a change of its own (version + 1),
--   so the archive about to be uploaded carries it and a late duplicate of that turn
--   finds it finished even after an eviction and a restore anywhere.
-- A read that returns records is recorded as meta 'read:<version>' = lineage head: the
--   hot copy passed through that state, so an archive made from it descends from this
--   copy (Threads._upload tells a lost race from a diverged copy by it); records of
--   versions older than the archive are dropped.
-- Returns {'unchanged', meta_pairs} when version == cold_version (no upload needed);
--   {'ok', meta_pairs, records, ledger_pairs, state_or_empty, finished_turns};
--   {'not_found'}.
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
local owner = ARGV[2] or ''
if owner ~= '' and redis.call('HEXISTS', K_TURNS, owner) == 0 then
  redis.call('HSET', K_TURNS, owner, now_ms())
  bump()
end
local meta = redis.call('HGETALL', K_META)
local fields = {}
for i = 1, #meta, 2 do
  fields[meta[i]] = meta[i + 1]
end
if ARGV[1] ~= '1' and fields['cold_version'] == fields['version'] then
  return {'unchanged', meta}
end
local archived = tonumber(fields['cold_version'] or '-1')
for name, _ in pairs(fields) do
  if string.sub(name, 1, 5) == 'read:' and tonumber(string.sub(name, 6)) < archived then
    redis.call('HDEL', K_META, name)
  end
end
-- pcall: a full Redis (noeviction) refuses the note, and an idle flush must still be
-- able to free memory; without the note a lost CAS merges instead of adopting.
redis.pcall('HSET', K_META, 'read:' .. fields['version'], fields['head'] or '')
return {
  'ok',
  meta,
  redis.call('LRANGE', K_MSGS, 0, -1),
  redis.call('HGETALL', K_IDS),
  redis.call('GET', K_STATE) or '',
  redis.call('HKEYS', K_TURNS),
}
