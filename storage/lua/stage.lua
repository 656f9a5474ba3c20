-- stage: one chunk of a large hydrate, written to staging keys of the same slot.
-- Nothing is visible to readers until restore.lua swaps the staging keys in.
-- KEYS[1..N_DATA]: thread keys; then staging msgs (LIST), staging ids (HASH).
-- ARGV: staging_ttl_ms, first_position, n_records, then n ids, then n records,
--   then retired ids (ledger position -1).
-- Returns the staging list length.
local S_MSGS, S_IDS = KEYS[N_DATA + 1], KEYS[N_DATA + 2]
local stage_ttl, first, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('LLEN', S_MSGS) ~= first then
  return -1 -- a chunk is missing or repeated; the caller starts over
end
write_records(S_MSGS, S_IDS, 3, n, first)
redis.call('PEXPIRE', S_MSGS, stage_ttl)
redis.call('PEXPIRE', S_IDS, stage_ttl)
return redis.call('LLEN', S_MSGS)
