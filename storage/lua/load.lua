-- load: a range of records, read together with the existence check.
-- ARGV: start, stop (LRANGE semantics, inclusive, negative from the end)
-- Returns {'ok', records}; {'not_found'}.
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
return {'ok', redis.call('LRANGE', K_MSGS, ARGV[1], ARGV[2])}
