-- replace: swap the whole list at once (compaction, edits). Ids that leave the
-- list stay in the ledger as retired (-1), so a late redelivery of an old
-- append cannot bring them back. An identical list changes nothing.
-- ARGV: ttl_ms, then id_1, record_1, id_2, record_2, ... (ids unique)
-- Returns {'ok', changed (1|0), length, version}; {'not_found'}.
local ttl = tonumber(ARGV[1])
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
local n = (#ARGV - 1) / 2
if redis.call('LLEN', K_MSGS) == n then
  local current = redis.call('LRANGE', K_MSGS, 0, -1)
  local same = true
  for i = 1, n do
    if current[i] ~= ARGV[2 * i + 1] then
      same = false
      break
    end
  end
  if same then
    touch(ttl)
    return {'ok', 0, n, current_version()}
  end
end
local ledger, records = {}, {}
for _, id in ipairs(redis.call('HKEYS', K_IDS)) do
  ledger[#ledger + 1] = id
  ledger[#ledger + 1] = -1
end
redis.call('DEL', K_MSGS)
chunked('HSET', K_IDS, ledger)
ledger = {}
for i = 1, n do
  ledger[#ledger + 1] = ARGV[2 * i]
  ledger[#ledger + 1] = i - 1
  records[i] = ARGV[2 * i + 1]
end
chunked('RPUSH', K_MSGS, records)
chunked('HSET', K_IDS, ledger)
local version = bump()
touch(ttl)
return {'ok', 1, n, version}
