-- create: make an empty thread if it does not exist; never deletes or overwrites.
-- A thread evicted to the cold tier is refused: creating it hot would shadow
-- the archive (hydrate it instead).
-- ARGV: ttl_ms, has_state ('1'|'0'), state_json, epoch (random, new per thread), creator
-- Returns {'ok', created (1|0), version, creator_or_empty}; {'archived', version}
local ttl = tonumber(ARGV[1])
if redis.call('EXISTS', K_META) == 1 then
  touch(ttl)
  return {'ok', 0, current_version(), redis.call('HGET', K_META, 'creator') or ''}
end
if redis.call('EXISTS', K_ARCHIVED) == 1 then
  return {'archived', redis.call('HGET', K_ARCHIVED, 'version')}
end
local now = created_ms()
redis.call('HSET', K_META, 'created', now, 'updated', now, 'version', 1,
  'epoch', ARGV[4], 'creator', ARGV[5], 'head', stamp(1))
if ARGV[2] == '1' then
  redis.call('SET', K_STATE, ARGV[3])
end
touch(ttl)
return {'ok', 1, 1, ARGV[5]}
