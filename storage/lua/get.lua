-- get: records by message id, through the ledger (no list scan).
-- ARGV: ids. Returns {'ok', record_or_false, ...} in ARGV order; {'not_found'}.
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
local out = {'ok'}
for i = 1, #ARGV do
  local pos = tonumber(redis.call('HGET', K_IDS, ARGV[i]) or '-1')
  local record = false
  if pos >= 0 then
    record = redis.call('LINDEX', K_MSGS, pos) or false
  end
  out[#out + 1] = record
end
return out
