-- fork_write: the destination half of a fork across Redis Cluster slots, with
-- the data fork_read.lua read from the source. Same rules as fork.lua (see
-- _fork.lua): a repeat of the same fork is a no-op, other content is refused.
-- Small forks come inline; large ones were staged in chunks by stage.lua and
-- are swapped in here with RENAME, so no reader sees a half-written fork.
-- KEYS[1..N_DATA]: destination keys; then staging msgs, staging ids.
-- ARGV: ttl_ms, source_id, up_to_id ('' = everything), epoch, mode
--   ('inline'|'staged'), n_records, state ('' = none),
--   then (inline only) n ids, n records, retired ids.
-- Returns {'ok', created (1|0), length, version}; {'exists', parent_or_empty,
--   fork_point}; {'archived'}; {'incomplete'} (staging expired; start over).
local S_MSGS, S_IDS = KEYS[N_DATA + 1], KEYS[N_DATA + 2]
local ttl, source, up_to, epoch = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local mode, n = ARGV[5], tonumber(ARGV[6])
local refusal = fork_refusal(ttl, source, up_to)
if refusal then
  redis.call('DEL', S_MSGS, S_IDS)
  return refusal
end
if mode == 'staged' then
  if redis.call('LLEN', S_MSGS) ~= n then
    redis.call('DEL', S_MSGS, S_IDS)
    return {'incomplete'}
  end
  if n > 0 then
    redis.call('RENAME', S_MSGS, K_MSGS)
    redis.call('PERSIST', K_MSGS)
  end
  if redis.call('EXISTS', S_IDS) == 1 then
    redis.call('RENAME', S_IDS, K_IDS)
    redis.call('PERSIST', K_IDS)
  end
else
  local ledger, records = {}, {}
  for i = 1, n do
    ledger[#ledger + 1] = ARGV[7 + i]
    ledger[#ledger + 1] = i - 1
    records[i] = ARGV[7 + n + i]
  end
  for i = 8 + 2 * n, #ARGV do
    ledger[#ledger + 1] = ARGV[i]
    ledger[#ledger + 1] = -1
  end
  chunked('RPUSH', K_MSGS, records)
  chunked('HSET', K_IDS, ledger)
end
return fork_finish(ttl, source, up_to, epoch, ARGV[7], n)
