-- The destination half of a fork, shared by fork.lua (source in the same slot)
-- and fork_write.lua (source in another Redis Cluster slot), so both refuse,
-- repeat and create forks by the same rules. Prepended after _prelude.lua;
-- K_* are the destination's keys.

-- Why the destination cannot take this fork, or nil if it is free:
--   {'ok', 0, length, version} it already is this fork (same parent and fork
--   point): a repeat, answered with the existing fork untouched;
--   {'exists', parent_or_empty, fork_point} it holds other content;
--   {'archived'} it is evicted to the cold tier (hydrate it first).
local function fork_refusal(ttl, source, up_to)
  if redis.call('EXISTS', K_META) == 1 then
    local found = redis.call('HMGET', K_META, 'parent', 'fork_point')
    if found[1] == source and (found[2] or '') == up_to then
      touch(ttl)
      return {'ok', 0, redis.call('LLEN', K_MSGS), current_version()}
    end
    return {'exists', found[1] or '', found[2] or ''}
  end
  if redis.call('EXISTS', K_ARCHIVED) == 1 then
    return {'archived'}
  end
  return nil
end

-- Complete a fork whose records and ledger are in place: state, meta (version 1,
-- parent, fork point, a new epoch) and expiry. Returns {'ok', 1, length, 1}.
local function fork_finish(ttl, source, up_to, epoch, state, length)
  if state and state ~= '' then
    redis.call('SET', K_STATE, state)
  end
  local now = now_ms()
  redis.call('HSET', K_META, 'created', now, 'updated', now, 'version', 1,
    'parent', source, 'fork_point', up_to, 'epoch', epoch)
  touch(ttl)
  return {'ok', 1, length, 1}
end
