-- turn_submit: write the record of a submitted turn (state 'submitted') and how to
-- re-wake it, unless the turn is known. Drops the record of the turn submitted
-- `keep` turns earlier if it has ended (records stay bounded per thread).
-- ARGV: turn_id, record JSON, spec JSON, keep, retention_ms (expiry of the records
-- of a thread not yet written)
-- Returns {'ok'}; {'exists', record}; {'finished'} (the turn ended before records).
local turn_id, keep = ARGV[1], tonumber(ARGV[4])
local known = redis.call('HGET', K_RUNS, turn_id)
if known then
  return {'exists', known}
end
if redis.call('HEXISTS', K_TURNS, turn_id) == 1 then
  return {'finished'}
end
local rec = cjson.decode(ARGV[2])
rec.submitted_ms = now_ms()
rec.deadline = rec.submitted_ms + rec.lease_ms
local seq = redis.call('HINCRBY', K_RUNS, '#seq', 1)
rec.seq = seq
save_record(turn_id, rec)
redis.call('HSET', K_RUNS, 'spec:' .. turn_id, ARGV[3], '#' .. seq, turn_id)
local old_seq = '#' .. (seq - keep)
local old = redis.call('HGET', K_RUNS, old_seq)
if old then
  local old_rec = load_record(old)
  if old_rec == nil or TERMINAL[old_rec.state] then
    redis.call('HDEL', K_RUNS, old, 'spec:' .. old, old_seq)
  end
end
if redis.call('EXISTS', K_META) == 0 and redis.call('PTTL', K_RUNS) < 0 then
  redis.call('PEXPIRE', K_RUNS, tonumber(ARGV[5]))
end
return {'ok', cjson.encode(rec)}
