-- fork_read: the source half of a fork across Redis Cluster slots, one
-- consistent read of everything the fork copies (fork_write.lua writes it).
-- KEYS[1..N_DATA]: the source's keys.
-- ARGV: up_to_id ('' = everything)
-- Returns {'ok', records (up to and including up_to_id), ledger_pairs (ids at
--   those positions, and retired ids at -1), state_or_empty};
--   {'not_found'}; {'no_message'} (up_to_id not in the source).
local cut, missing = fork_cut(K_META, K_IDS, ARGV[1])
if not cut then
  return missing
end
local records, ledger = fork_copy(K_MSGS, K_IDS, cut)
return {'ok', records, ledger, redis.call('GET', K_STATE) or ''}
