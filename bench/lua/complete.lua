-- An instance from start to end: start it, get it (for its parked token), signal the token.
-- Every response says which step it answers, so a thread keeps two queues of follow-up work
-- and always prefers finishing an instance to starting one. "completed" counts instances
-- whose signal succeeded. Args: TOKEN DEFINITION-ID, where TOKEN may be @FILE, a file of
-- tokens one per line, of which thread N takes line N (with -tN -cN: one tenant a connection).
local headers, start_req, start_body
local to_get, to_signal = {}, {}
completed = 0
bad = 0

function init(args)
  local token = args[1]
  if token:sub(1, 1) == "@" then
    local tokens = read_lines(token:sub(2))
    token = tokens[(tid - 1) % #tokens + 1]
  end
  headers = { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }
  start_req = wrk.format("POST", "/orchestra-api/process/" .. args[2] .. "/start", headers,
    '{"variables":{"amount":1}}')
end

function request()
  local t = table.remove(to_signal)
  if t then
    return wrk.format("POST", "/orchestra-api/token/" .. t .. "/signal", headers, "{}")
  end
  local i = table.remove(to_get)
  if i then
    return wrk.format("GET", "/orchestra-api/instance/" .. i, { ["Authorization"] = headers["Authorization"] })
  end
  return start_req
end

function response(status, hdrs, body)
  if status == 201 then
    local id = body:match('"instance_id":"([^"]+)"')
    if id then to_get[#to_get + 1] = id else bad = bad + 1 end
  elseif status == 200 then
    if body:find('"signalled"', 1, true) then
      completed = completed + 1
    else
      local t = body:match('"tokens":%[{"id":"([^"]+)"')
      if t then to_signal[#to_signal + 1] = t else bad = bad + 1 end
    end
  else
    bad = bad + 1
  end
end
