-- fork_write: the destination half of a fork across Redis Cluster slots, with
-- the data fork_read.lua read from the source. Same rules as fork.lua (see
-- _fork.lua): a repeat of the same fork is a no-op, other content is refused.
-- Small forks come inline; large ones were staged in chunks by HotStore._stage and
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
  if not swap_staged(S_MSGS, S_IDS, n) then
    return {'incomplete'}
  end
else
  write_records(K_MSGS, K_IDS, 7, n, 0)
end
return fork_finish(ttl, source, up_to, epoch, ARGV[7], n)
