-- create: make an empty thread if it does not exist; never deletes or overwrites.
-- ARGV: ttl_ms, has_state ('1'|'0'), state_json
-- Returns {created (1|0), version}
local ttl = tonumber(ARGV[1])
if redis.call('EXISTS', K_META) == 1 then
  touch(ttl)
  return {0, current_version()}
end
local now = now_ms()
redis.call('HSET', K_META, 'created', now, 'updated', now, 'version', 1)
if ARGV[2] == '1' then
  redis.call('SET', K_STATE, ARGV[3])
end
touch(ttl)
return {1, 1}
