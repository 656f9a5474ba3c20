-- fork: copy records (up to and including one id), ledger and state of a source
-- thread into a new thread, recording its parent. Idempotent: a repeat for the
-- same (source, fork point) returns the existing fork untouched. Both threads
-- must be in one slot; across Redis Cluster slots, fork_read.lua and
-- fork_write.lua do the same in one script per slot. Destination rules: _fork.lua.
-- KEYS[1..N_DATA]: destination keys; then the source's keys in the same order.
-- ARGV: ttl_ms, source_id, up_to_id ('' = everything), epoch (random, for the fork)
-- Returns {'ok', created (1|0), length, version}; {'not_found'} (source);
--   {'no_message'} (up_to_id not in source); {'exists', parent_or_empty, fork_point};
--   {'archived'} (the destination is evicted to the cold tier).
local S_META, S_MSGS, S_IDS, S_STATE =
  KEYS[N_DATA + 1], KEYS[N_DATA + 2], KEYS[N_DATA + 3], KEYS[N_DATA + 4]
local ttl, source, up_to = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local cut, missing = fork_cut(S_META, S_IDS, up_to)
if not cut then
  return missing
end
local refusal = fork_refusal(ttl, source, up_to)
if refusal then
  return refusal
end
local records, copied = fork_copy(S_MSGS, S_IDS, cut)
local state = redis.call('GET', S_STATE)
chunked('RPUSH', K_MSGS, records)
chunked('HSET', K_IDS, copied)
return fork_finish(ttl, source, up_to, ARGV[4], state, #records)
