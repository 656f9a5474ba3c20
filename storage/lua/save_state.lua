-- save_state: set the thread's JSON state slice; an identical state changes nothing.
-- ARGV: ttl_ms, state_json
-- Returns {'ok', changed (1|0), version}; {'not_found'}.
local ttl = tonumber(ARGV[1])
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
if redis.call('GET', K_STATE) == ARGV[2] then
  touch(ttl)
  return {'ok', 0, current_version()}
end
redis.call('SET', K_STATE, ARGV[2])
local version = bump()
touch(ttl)
return {'ok', 1, version}
