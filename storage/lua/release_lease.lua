-- release_lease: drop the lease only if this owner holds it (a stale or repeated
-- release never frees another owner's lease).
-- ARGV: owner
-- Returns 1 if released, else 0.
if redis.call('GET', K_LEASE) == ARGV[1] then
  return redis.call('DEL', K_LEASE)
end
return 0
