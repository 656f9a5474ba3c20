-- flush_read: what a flush needs besides the records, read in one consistent step;
-- the records themselves are read after it in bounded chunks (HotStore.read_records),
-- never copied through Lua.
-- ARGV: force ('1' = report 'ok' even when the archive is current),
--   release_owner ('' = none): the turn this flush ends. A turn not yet recorded as
--   finished is recorded here, before the read, as a change of its own (version + 1),
--   so the archive about to be uploaded carries it and a late duplicate of that turn
--   finds it finished even after an eviction and a restore anywhere. A finished turn's
--   value is the version that recorded it (0 once archived and restored).
-- A read that returns 'ok' is recorded as meta 'read:<version>' = lineage head: the
--   hot copy passed through that state, so an archive made from it descends from this
--   copy (Threads._upload tells a lost race from a diverged copy by it); notes of
--   versions older than the archive are dropped.
-- Returns {'unchanged', meta_pairs} when version == cold_version (no upload needed);
--   {'ok', meta_pairs, length, state_or_empty, turns}: turns are the finished turns
--   (id, version pairs) recorded after the archive's base (meta 'cold_base'), all of
--   them when there is none; {'not_found'}.
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
local owner = ARGV[2] or ''
if owner ~= '' and redis.call('HEXISTS', K_TURNS, owner) == 0 then
  redis.call('HSET', K_TURNS, owner, bump())
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
local since = tonumber(fields['cold_base'] or '-1')
local finished, turns = redis.call('HGETALL', K_TURNS), {}
for i = 1, #finished, 2 do
  if (tonumber(finished[i + 1]) or 0) > since then
    turns[#turns + 1] = finished[i]
    turns[#turns + 1] = finished[i + 1]
  end
end
return {'ok', meta, redis.call('LLEN', K_MSGS), redis.call('GET', K_STATE) or '', turns}
