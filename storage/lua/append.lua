-- append: add messages whose ids the ledger has not seen, in order, exactly once.
-- With an owner, the lease is checked only if something would be written: a
-- redelivered append whose messages are all stored succeeds without the lease.
-- KEYS: the thread's, then optionally the thread's activity index shard (a standalone
--   Redis only: on Redis Cluster it lives in another slot).
-- ARGV: ttl_ms, owner ('' = no lease check), index_refresh_ms, index member ('' = no
--   shard key given), then id_1, record_1, ...
-- Returns {'ok', flags, length, version, due}: flags has one char per input message,
--   '1' appended, '0' skipped (already in the ledger, or earlier in this batch);
--   the activity index is due when it was last written for this thread at least
--   index_refresh_ms ago (meta 'indexed'; then set to now): due is then 1, and with a
--   shard key this script marks it (ZADD GT: marks only move forward), else the caller
--   does; {'not_found'}; {'lease_lost', holder_or_empty}.
-- The reads and writes of meta are one HMGET and one HSET: this is the hot path.
local ttl, owner, refresh, member = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
local meta = redis.call('HMGET', K_META, 'version', 'cold_version', 'expiry', 'indexed')
local length = redis.call('LLEN', K_MSGS)
local ids = {}
for i = 5, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
end
local known = ledger_of(ids)
local flags, fresh, fresh_ids, seen = {}, {}, {}, {}
for i, id in ipairs(ids) do
  if seen[id] or known[i] then
    flags[i] = '0'
  else
    seen[id] = true
    fresh_ids[#fresh_ids + 1] = id
    fresh_ids[#fresh_ids + 1] = length + #fresh
    fresh[#fresh + 1] = ARGV[4 + 2 * i]
    flags[i] = '1'
  end
end
local refusal = #fresh > 0 and lease_refusal(owner)
if refusal then
  return refusal
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = now - tonumber(meta[4] or '0') >= refresh
local version = tonumber(meta[1] or '0')
local fields = {}
if #fresh > 0 then
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
-- RPUSH and HSET keep expiries; only a first record creates the list and the ledger
touch_fields(ttl, version, meta[2], meta[3], length > 0 or #fresh == 0)
return {'ok', table.concat(flags), length + #fresh, version, due and 1 or 0}
