-- turn_note: what a step reports while it runs, keyed so a repeat is harmless.
-- kind 'usage': one model call's token counts (ARGV[4] JSON) under a call key
--   (ARGV[3]); a model call repeated by a resumed turn is a second entry (it cost).
-- kind 'tool_begin': the execution holding the claim (token ARGV[3]; '' = outside a
--   claimed step) starts tool call ARGV[4]; counts its runs. Refused ('superseded')
--   for an execution whose claim was taken over, so a tool never runs in two live
--   executions. kind 'tool_end': tool call ARGV[4] has its result stored.
-- ARGV: turn_id, kind, ...
-- Returns {'ok', runs}; {'missing'}; {'superseded'}.
local turn_id, kind = ARGV[1], ARGV[2]
local rec = load_record(turn_id)
if rec == nil then
  return {'missing'}
end
local runs = 0
if kind == 'usage' then
  local usage = type(rec.usage) == 'table' and rec.usage or {}
  local entry = cjson.decode(ARGV[4])
  entry.call = ARGV[3]
  entry.at_ms = now_ms()
  usage[#usage + 1] = entry
  rec.usage = usage
else
  local tools = type(rec.tools) == 'table' and rec.tools or {}
  local call = ARGV[4]
  local tool = tools[call] or {runs = 0, done = false}
  if kind == 'tool_begin' then
    if ARGV[3] ~= '' and (type(rec.claim) ~= 'table' or rec.claim.token ~= ARGV[3]) then
      return {'superseded'}
    end
    tool.runs = tool.runs + 1
  else
    tool.done = true
  end
  runs = tool.runs
  tools[call] = tool
  rec.tools = tools
end
save_record(turn_id, rec)
return {'ok', runs}
