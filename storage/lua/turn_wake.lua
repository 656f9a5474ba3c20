-- turn_wake: the reconciler found the turn due. A turn that ended (or has no record)
-- is 'gone'; one whose deadline moved on (a live heartbeat, a step just handed over)
-- is looked at 'later'; otherwise its claim is dropped and the caller re-sends the
-- step that did not finish. The next look is backed off (lease * 2^wakes, capped), so
-- a turn stuck behind a long queue is not re-sent every time, and two reconcilers
-- never wake the same turn twice (the first moves the deadline).
-- ARGV: turn_id, max_wait_ms
-- Returns {'gone'}; {'later', deadline}; {'wake', step, spec, deadline, record}.
local turn_id, max_wait = ARGV[1], tonumber(ARGV[2])
local rec = load_record(turn_id)
if rec == nil or TERMINAL[rec.state] then
  return {'gone'}
end
local now = now_ms()
if rec.deadline > now then
  return {'later', rec.deadline}
end
local spec = redis.call('HGET', K_RUNS, 'spec:' .. turn_id)
if not spec then
  return {'gone'}
end
rec.wakes = (rec.wakes or 0) + 1
rec.claim = cjson.null
rec.deadline = now + math.min(max_wait, rec.lease_ms * 2 ^ math.min(rec.wakes - 1, 10))
rec.woken_ms = now
save_record(turn_id, rec)
return {'wake', tostring(next_step(rec)), spec, rec.deadline, cjson.encode(rec)}
