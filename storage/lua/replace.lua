-- replace: swap the whole list at once (compaction, edits). Ids that leave the
-- list stay in the ledger as retired (-1), so a late redelivery of an old
-- append cannot bring them back. An identical list changes nothing (and is no
-- conflict: a retried call succeeds). Small lists come inline; large ones were
-- staged in chunks by HotStore._stage (records and their positions) and are swapped in
-- here with RENAME, so no reader ever sees a half-replaced list.
-- KEYS[1..N_DATA]: thread keys; then staging msgs, staging ids.
-- ARGV: ttl_ms, expected_version ('' = any), mode ('inline'|'staged'), n_records,
--   then (inline only) n ids, n records (ids unique).
-- Returns {'ok', changed (1|0), length, version}; {'not_found'};
--   {'conflict', version}; {'incomplete'} (staging expired; start over).
local S_MSGS, S_IDS = KEYS[N_DATA + 1], KEYS[N_DATA + 2]
local ttl, expected, mode, n = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local staged = mode == 'staged'
local function refuse(reply)
  redis.call('DEL', S_MSGS, S_IDS)
  return reply
end
if redis.call('EXISTS', K_META) == 0 then
  return refuse({'not_found'})
end
if staged and (redis.call('LLEN', S_MSGS) ~= n or redis.call('HLEN', S_IDS) ~= n) then
  return refuse({'incomplete'})
end
if redis.call('LLEN', K_MSGS) == n then
  local current = redis.call('LRANGE', K_MSGS, 0, -1)
  local incoming = staged and redis.call('LRANGE', S_MSGS, 0, -1) or nil
  local same = true
  for i = 1, n do
    if current[i] ~= (staged and incoming[i] or ARGV[4 + n + i]) then
      same = false
      break
    end
  end
  if same then
    touch(ttl)
    return refuse({'ok', 0, n, current_version()})
  end
end
if expected ~= '' and tonumber(expected) ~= current_version() then
  return refuse({'conflict', current_version()})
end
local old = redis.call('HKEYS', K_IDS)
if staged then
  for _, id in ipairs(old) do
    redis.call('HSETNX', S_IDS, id, -1) -- ids of the new list keep their positions
  end
  swap_staged(S_MSGS, S_IDS, n)
else
  local retired = {}
  for _, id in ipairs(old) do
    retired[#retired + 1] = id
    retired[#retired + 1] = -1
  end
  redis.call('DEL', K_MSGS)
  chunked('HSET', K_IDS, retired)
  write_records(K_MSGS, K_IDS, 4, n, 0)
end
rewritten()
local version = bump()
touch(ttl)
return {'ok', 1, n, version}
