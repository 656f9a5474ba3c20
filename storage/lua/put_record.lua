-- put_record: set the record with one id in one step. A record with that id is
-- replaced in place (with first, moved to the front); otherwise it is inserted
-- (first: at the front, else at the end). A retired id is inserted again: this
-- is an explicit write, not a late redelivery. Nothing to change: no write, no
-- version bump, and no version check (a retried call succeeds).
-- Inserting or moving to the front shifts the ledger positions before it: O(n).
-- ARGV: ttl_ms, expected_version ('' = any), first ('1'|'0'), id, record
-- Returns {'ok', changed (1|0), length, version}; {'not_found'}; {'conflict', version}.
local ttl, expected, first = tonumber(ARGV[1]), ARGV[2], ARGV[3] == '1'
local id, record = ARGV[4], ARGV[5]
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
local length = redis.call('LLEN', K_MSGS)
local pos = tonumber(redis.call('HGET', K_IDS, id) or '-1')
local in_place = pos >= 0 and (pos == 0 or not first)
if in_place and redis.call('LINDEX', K_MSGS, pos) == record then
  touch(ttl)
  return {'ok', 0, length, current_version()}
end
local version = current_version()
if expected ~= '' and tonumber(expected) ~= version then
  return {'conflict', version}
end
if in_place then
  redis.call('LSET', K_MSGS, pos, record)
  rewritten()
elseif first then
  rewritten()
  -- every record before the old position (or all of them, for an insert) moves back one
  local before = pos >= 0 and pos or length
  local ledger, shifted = redis.call('HGETALL', K_IDS), {id, 0}
  for i = 1, #ledger, 2 do
    local at = tonumber(ledger[i + 1])
    if at >= 0 and at < before then
      shifted[#shifted + 1] = ledger[i]
      shifted[#shifted + 1] = at + 1
    end
  end
  if pos >= 0 then
    -- records are JSON objects, never '': a unique mark for removing by index
    redis.call('LSET', K_MSGS, pos, '')
    redis.call('LREM', K_MSGS, 1, '')
  else
    length = length + 1
  end
  redis.call('LPUSH', K_MSGS, record)
  chunked('HSET', K_IDS, shifted)
else
  if redis.call('HEXISTS', K_IDS, id) == 1 then
    rewritten() -- a retired id comes back: the archive's ledger retired it
  end
  redis.call('RPUSH', K_MSGS, record)
  redis.call('HSET', K_IDS, id, length)
  length = length + 1
end
version = bump()
touch(ttl)
return {'ok', 1, length, version}
