-- turn_heartbeat: a running step is alive; renew its claim and the turn's lease.
-- ARGV: turn_id, token, lease_ms
-- Returns {'ok', lease holder other than the turn or ''}; {'superseded'} (the claim
-- is another execution's, or the turn ended).
local turn_id, token, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local rec = load_record(turn_id)
if rec == nil or type(rec.claim) ~= 'table' or rec.claim.token ~= token then
  return {'superseded'}
end
local holder = ''
if rec.step ~= 0 then
  holder = hold_lease(turn_id, lease_ms)
end
rec.deadline = now_ms() + lease_ms
rec.beats = (rec.beats or 0) + 1
save_record(turn_id, rec)
return {'ok', holder}
