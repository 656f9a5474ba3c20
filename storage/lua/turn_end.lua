-- turn_end: the execution holding a step's claim reports how the step ended.
-- outcome 'done': the step finished (the last step, or the cleanup, ends the turn);
-- 'retry': it will run again after a countdown (anyone may claim it then);
-- 'failed': it failed for good ('failing' until the cleanup step ran, or 'failed'
-- when the step has no cleanup).
-- ARGV: turn_id, token, outcome, step_ms, last ('1'|'0'), lease_ms, wait_ms (before
--   the reconciler looks again), result or error JSON, cleanup ('1'|'0')
-- Returns {'ok', state}; {'superseded'} (another execution holds the claim: the
-- caller must not continue the turn).
local turn_id, token, outcome = ARGV[1], ARGV[2], ARGV[3]
local lease_ms, wait_ms = tonumber(ARGV[6]), tonumber(ARGV[7])
local rec = load_record(turn_id)
if rec == nil or type(rec.claim) ~= 'table' or rec.claim.token ~= token then
  return {'superseded'}
end
local now = now_ms()
local step = rec.step
rec.claim = cjson.null
rec.deadline = now + wait_ms
local timings = type(rec.timings) == 'table' and rec.timings or {}
local name = tostring(step)
local spent = timings[name] or 0
timings[name] = spent + tonumber(ARGV[4])
rec.timings = timings
local function finish(state)
  rec.state = state
  rec.finished_ms = now
  redis.call('HDEL', K_RUNS, 'spec:' .. turn_id)
end
if outcome == 'done' then
  if step == 'cleanup' then
    finish('failed')
  else
    rec.done = step
    if ARGV[5] == '1' then
      rec.result = cjson.decode(ARGV[8])
      finish('finished')
    elseif redis.call('GET', K_LEASE) == turn_id then
      -- the lease covers the hand-over to the next step, which renews it
      redis.call('PEXPIRE', K_LEASE, lease_ms)
    end
  end
elseif outcome == 'failed' then
  if step == 'cleanup' then
    rec.cleanup_error = cjson.decode(ARGV[8])
    finish('failed')
  else
    rec.error = cjson.decode(ARGV[8])
    if ARGV[9] == '1' then
      rec.state = 'failing'
    else
      finish('failed')
    end
  end
end
save_record(turn_id, rec)
return {'ok', rec.state}
