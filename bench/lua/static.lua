-- The same request every time. Args: METHOD PATH [TOKEN|-] [BODY] [CONTENT-TYPE]
local req

function init(args)
  local headers = {}
  if args[3] and args[3] ~= "-" then headers["Authorization"] = "Bearer " .. args[3] end
  local body = args[4]
  if body ~= nil and body ~= "" then
    headers["Content-Type"] = args[5] or "application/json"
  else
    body = nil
  end
  req = wrk.format(args[1], args[2], headers, body)
end

function request()
  return req
end
