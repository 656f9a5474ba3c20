-- flush_read: everything a snapshot needs, read in one consistent step.
-- ARGV: force ('1' = read records even when the archive is current)
-- Returns {'unchanged', meta_pairs} when version == cold_version (no upload needed);
--   {'ok', meta_pairs, records, ledger_pairs, state_or_empty, finished_turns};
--   {'not_found'}.
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
local meta = redis.call('HGETALL', K_META)
local fields = {}
for i = 1, #meta, 2 do
  fields[meta[i]] = meta[i + 1]
end
if ARGV[1] ~= '1' and fields['cold_version'] == fields['version'] then
  return {'unchanged', meta}
end
return {
  'ok',
  meta,
  redis.call('LRANGE', K_MSGS, 0, -1),
  redis.call('HGETALL', K_IDS),
  redis.call('GET', K_STATE) or '',
  redis.call('HKEYS', K_TURNS),
}
