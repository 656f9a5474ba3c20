-- fork_read: the source half of a fork across Redis Cluster slots, one
-- consistent read of everything the fork copies (fork_write.lua writes it).
-- KEYS[1..N_DATA]: the source's keys.
-- ARGV: up_to_id ('' = everything)
-- Returns {'ok', records (up to and including up_to_id), ledger_pairs (ids at
--   those positions, and retired ids at -1), state_or_empty};
--   {'not_found'}; {'no_message'} (up_to_id not in the source).
local up_to = ARGV[1]
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
local cut = -1
if up_to ~= '' then
  local pos = tonumber(redis.call('HGET', K_IDS, up_to) or '-1')
  if pos < 0 then
    return {'no_message'}
  end
  cut = pos
end
local ledger = redis.call('HGETALL', K_IDS)
if cut >= 0 then
  local kept = {}
  for i = 1, #ledger, 2 do
    if tonumber(ledger[i + 1]) <= cut then
      kept[#kept + 1] = ledger[i]
      kept[#kept + 1] = ledger[i + 1]
    end
  end
  ledger = kept
end
return {'ok', redis.call('LRANGE', K_MSGS, 0, cut), ledger, redis.call('GET', K_STATE) or ''}
