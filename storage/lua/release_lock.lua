-- release_lock: delete a lock only if it still holds our token (a lock that expired
-- and was taken by another caller is theirs). KEYS[1] is the lock, not a thread key.
-- ARGV: token. Returns 1 if released, 0 if the lock was not ours (or gone).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
