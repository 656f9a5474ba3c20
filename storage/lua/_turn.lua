-- Shared by the turn scripts (turn_*.lua): a turn record is JSON in K_RUNS under the
-- turn id (see storage/turns.py for its fields). Steps are numbered 0.. (the last
-- one ends the turn); 'done' is the last step that finished (-1: none).
-- A step runs only as the holder of the record's claim (a random token per
-- execution): a delivery that finds the claim held and alive elsewhere does not run.
-- 'deadline' (ms) is when the turn reconciler looks at the turn again: the claim's
-- heartbeat deadline while a step runs, else when the next step should have begun.
local TERMINAL = {finished = true, failed = true}

local function load_record(turn_id)
  local raw = redis.call('HGET', K_RUNS, turn_id)
  if not raw then
    return nil
  end
  return cjson.decode(raw)
end

local function save_record(turn_id, rec)
  redis.call('HSET', K_RUNS, turn_id, cjson.encode(rec))
end

-- The step a re-woken turn continues with: the cleanup of a failing turn, else the
-- step after the last one that finished.
local function next_step(rec)
  if rec.state == 'failing' then
    return 'cleanup'
  end
  return rec.done + 1
end

-- The lease of a running turn: renew it (ours), take it (free, the thread exists),
-- or report its other holder. Returns '' or the other holder.
local function hold_lease(turn_id, lease_ms)
  local holder = redis.call('GET', K_LEASE)
  if holder == turn_id then
    redis.call('PEXPIRE', K_LEASE, lease_ms)
    return ''
  end
  if holder then
    return holder
  end
  if redis.call('EXISTS', K_META) == 1 and redis.call('HEXISTS', K_TURNS, turn_id) == 0 then
    redis.call('SET', K_LEASE, turn_id, 'PX', lease_ms)
  end
  return ''
end
