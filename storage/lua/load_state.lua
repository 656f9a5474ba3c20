-- load_state: the JSON state slice, read together with the existence check.
-- Returns {'ok', state_json_or_empty}; {'not_found'}.
if redis.call('EXISTS', K_META) == 0 then
  return {'not_found'}
end
return {'ok', redis.call('GET', K_STATE) or ''}
