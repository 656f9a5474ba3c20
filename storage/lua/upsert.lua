-- upsert: write a batch of records by id in one step. An id the ledger has never seen
-- is appended; a known id is left alone (mode 'i': the first write wins) or, mode 'r',
-- its record is replaced in place if it differs (the last write wins). A retired id
-- (ledger -1) is skipped in both modes: a late redelivery cannot bring back what a
-- rewrite removed. Nothing to change: no write and no version bump.
-- KEYS: the thread's, then optionally the thread's activity index shard (a standalone
--   Redis only, as in append.lua).
-- ARGV: ttl_ms, index_refresh_ms, index member ('' = no shard key given), then
--   mode_1, id_1, record_1, ... (ids unique: HotStore.upsert refuses repeats).
-- Returns {'ok', flags, length, version, due}: flags has one char per record, '1'
--   appended, '2' replaced, '0' unchanged; due as in append.lua; {'not_found'}.
local ttl, refresh, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
local meta = redis.call('HMGET', K_META, 'version', 'cold_version', 'expiry', 'indexed')
local length = redis.call('LLEN', K_MSGS)
local ids = {}
for i = 5, #ARGV, 3 do
  ids[#ids + 1] = ARGV[i]
end
local known = ledger_of(ids)
local flags, fresh, fresh_ids, replaced = {}, {}, {}, {}
for i, id in ipairs(ids) do
  local record = ARGV[3 + 3 * i]
  local pos = known[i] and tonumber(known[i])
  flags[i] = '0'
  if not pos then
    fresh_ids[#fresh_ids + 1] = id
    fresh_ids[#fresh_ids + 1] = length + #fresh
    fresh[#fresh + 1] = record
    flags[i] = '1'
  elseif pos >= 0 and ARGV[1 + 3 * i] == 'r' and redis.call('LINDEX', K_MSGS, pos) ~= record then
    replaced[#replaced + 1] = {pos, record}
    flags[i] = '2'
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = now - tonumber(meta[4] or '0') >= refresh
local version = tonumber(meta[1] or '0')
local fields = {}
if #fresh > 0 or #replaced > 0 then
  for _, edit in ipairs(replaced) do
    redis.call('LSET', K_MSGS, edit[1], edit[2])
  end
  if #replaced > 0 then
    rewritten() -- the archive's copy of those records is no longer this list's prefix
  end
  chunked('HSET', K_IDS, fresh_ids)
  chunked('RPUSH', K_MSGS, fresh)
  version = version + 1 -- bump() with the fields read above, in the one HSET below
  fields = {'version', version, 'updated', now, 'head', version .. '.' .. t[1] .. t[2]}
end
if due then
  fields[#fields + 1] = 'indexed'
  fields[#fields + 1] = now
  if member ~= '' then
    redis.call('ZADD', KEYS[N_DATA + 1], 'GT', now, member)
  end
end
if #fields > 0 then
  redis.call('HSET', K_META, unpack(fields))
end
-- LSET, RPUSH and HSET keep expiries; only a first record creates the list and the ledger
touch_fields(ttl, version, meta[2], meta[3], length > 0 or #fresh == 0)
return {'ok', table.concat(flags), length + #fresh, version, due and 1 or 0}
