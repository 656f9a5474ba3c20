-- The two halves of a fork, shared by fork.lua (source and destination in one
-- slot), fork_read.lua (the source, across Redis Cluster slots) and
-- fork_write.lua (the destination, across slots), so all of them read, refuse,
-- repeat and create forks by the same rules. Prepended after _prelude.lua;
-- K_* are the destination's keys (fork_read.lua's K_* are the source's).

-- Where the fork cuts the source: the position of up_to ('' = -1, everything),
-- or nil and the refusal {'not_found'} (no source) / {'no_message'} (no up_to).
local function fork_cut(s_meta, s_ids, up_to)
  if redis.call('EXISTS', s_meta) == 0 then
    return nil, {'not_found'}
  end
  if up_to == '' then
    return -1
  end
  local pos = tonumber(redis.call('HGET', s_ids, up_to) or '-1')
  if pos < 0 then
    return nil, {'no_message'}
  end
  return pos
end

-- What the fork copies: the records up to the cut and the ledger entries at those
-- positions; retired ids (-1) stay retired in the fork.
local function fork_copy(s_msgs, s_ids, cut)
  local ledger = redis.call('HGETALL', s_ids)
  local copied = {}
  for i = 1, #ledger, 2 do
    if cut < 0 or tonumber(ledger[i + 1]) <= cut then
      copied[#copied + 1] = ledger[i]
      copied[#copied + 1] = ledger[i + 1]
    end
  end
  return redis.call('LRANGE', s_msgs, 0, cut), copied
end

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
  local now = created_ms()
  redis.call('HSET', K_META, 'created', now, 'updated', now, 'version', 1,
    'parent', source, 'fork_point', up_to, 'epoch', epoch, 'head', stamp(1))
  touch(ttl)
  return {'ok', 1, length, 1}
end
