-- One request per id from a file; each thread takes every n-th id.
-- Args: METHOD PATH-TEMPLATE ("{}" is the id) TOKEN IDS-FILE MODE THREADS [BODY]
-- MODE "once": each id is used once (signals), the thread stops when its share runs out;
-- MODE "cycle": ids are reused round-robin (reads, variable writes; "{n}" in BODY is a counter).
local method, template, headers, ids, mode, body
local pos, n = 0, 0
completed = 0
bad = 0

function init(args)
  method, template, mode, body = args[1], args[2], args[5], args[7]
  headers = { ["Authorization"] = "Bearer " .. args[3] }
  if body ~= nil and body ~= "" then headers["Content-Type"] = "application/json" else body = nil end
  local all = read_lines(args[4])
  ids = {}
  local count = tonumber(args[6]) or 1
  for i = tid, #all, count do ids[#ids + 1] = all[i] end
end

function request()
  pos = pos + 1
  if pos > #ids then
    if mode == "once" then
      wrk.thread:stop()
      pos = #ids
    else
      pos = 1
    end
  end
  n = n + 1
  -- "%" in a gsub replacement starts a capture reference: URL-encoded ids need it doubled.
  local path = template:gsub("{}", (ids[pos]:gsub("%%", "%%%%")))
  local b = body and body:gsub("{n}", tostring(n)) or nil
  return wrk.format(method, path, headers, b)
end

function response(status, hdrs, resp)
  if status >= 200 and status < 300 then completed = completed + 1 else bad = bad + 1 end
end
