-- turn_begin: claim one step of a turn for one execution (token), or say why not.
-- A step runs if it is the next one (done + 1, or 'cleanup' of a failing turn) and
-- no other execution holds a live claim; a dead claim (deadline passed) is taken
-- over. Steps after the first hold the thread's lease for the turn.
-- ARGV: turn_id, step (number or 'cleanup'), token, worker, task_id, lease_ms,
--   held_wait_ms (a turn waiting for another turn's lease is looked at again after it)
-- Returns {'ok', record}; {'missing'}; {'ended', state}; {'done'} (already finished
-- step); {'early'}; {'busy', token, ms left}; {'held', holder, pttl}.
local turn_id, step, token = ARGV[1], ARGV[2], ARGV[3]
local lease_ms = tonumber(ARGV[6])
local rec = load_record(turn_id)
if rec == nil then
  return {'missing'}
end
if TERMINAL[rec.state] then
  return {'ended', rec.state}
end
if step == 'cleanup' then
  if rec.state ~= 'failing' then
    return {'early'}
  end
else
  step = tonumber(step)
  if rec.state == 'failing' or step <= rec.done then
    return {'done'}
  end
  if step > rec.done + 1 then
    return {'early'}
  end
end
local now = now_ms()
local claim = rec.claim
if type(claim) == 'table' and claim.token ~= token and rec.deadline > now then
  return {'busy', claim.token, rec.deadline - now}
end
if step ~= 0 then
  local holder = hold_lease(turn_id, lease_ms)
  if holder ~= '' then
    rec.deadline = math.max(rec.deadline, now + tonumber(ARGV[7]))
    save_record(turn_id, rec)
    return {'held', holder, redis.call('PTTL', K_LEASE)}
  end
end
if type(claim) == 'table' and claim.token ~= token then
  rec.takeovers = (rec.takeovers or 0) + 1
end
rec.state = rec.state == 'failing' and 'failing' or 'running'
rec.step = step
rec.attempt = (rec.attempt or 0) + 1
rec.claim = {token = token, worker = ARGV[4], task_id = ARGV[5], since_ms = now}
rec.deadline = now + lease_ms
if not rec.started_ms then
  rec.started_ms = now
end
save_record(turn_id, rec)
return {'ok', cjson.encode(rec)}
