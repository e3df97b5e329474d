-- Response conventions of the REST edge that the transcoder cannot express.
--
-- * Status: the service names the HTTP status in the `x-http-status`
--   response metadata (initial metadata on success, e.g. 201 for a start;
--   trailing metadata of a trailers-only error, e.g. 422). It is copied to
--   `:status` and never reaches the client.
-- * Errors: every error body is {"error":"<message>"}. The message is the
--   service's own only when the service set `x-http-status` (a deliberate,
--   safe abort); anything else, an unhandled exception included, gets a
--   fixed text so internals never leak.
-- * Caching: every answer is `no-store`, except a successful answer of a
--   route whose metadata names a `cache_control` (the public key set).
-- * Shapes: typed single-field responses are unwrapped to the bare object or
--   array the contract names; the list's page token moves to the
--   `x-next-page-token` header.
--
-- * Requests: a path segment or query value whose percent-decoding is not
--   clean UTF-8 text (invalid UTF-8, control characters, `\`, or an encoded
--   `/`; in a JSON-valued parameter only the first two) can name nothing
--   Orchestra stores. The transcoder would refuse it
--   with a bare 400 or hand the service bytes it cannot decode (a 500), so it
--   is replaced by U+FFFD and the service answers as for any unknown id:
--   404, 422 or `{}`, exactly as the contract says.
--
-- The route names the operation (route metadata `op`). Header edits are made
-- before the body is read wherever the value is known then; a header handle
-- taken before body() is void afterwards (a Lua error that leaves the
-- response unchanged), so the one edit that depends on the body takes a
-- fresh handle.

local FIXED_MESSAGES = {
  [400] = "bad request",
  [401] = "unauthorized",
  [403] = "forbidden",
  [404] = "not found",
  [409] = "conflict",
  [413] = "request body too large",
  [422] = "unprocessable request",
  [429] = "too many requests",
  [500] = "internal error",
  [501] = "not implemented",
  [503] = "service unavailable",
  [504] = "upstream timeout",
}

local REPLACEMENT = "%EF%BF%BD"

-- Query parameters whose value carries JSON (the operations API's
-- `variable=name=<JSON>` filter): a JSON string may hold `/` and `\`, and
-- `+` is a space, as in any form-encoded query.
local JSON_PARAMETERS = { variable = true }

-- True when `text` is UTF-8 with no control character and, unless `json`
-- allows them, no backslash or slash.
local function clean_text(text, json)
  local i, n = 1, #text
  while i <= n do
    local c = text:byte(i)
    local extra, low, high = 0, 0x80, 0xBF
    if c < 0x80 then
      if c < 0x20 or c == 0x7F or (not json and (c == 0x5C or c == 0x2F)) then
        return false
      end
    elseif c >= 0xC2 and c <= 0xDF then
      extra = 1
    elseif c >= 0xE0 and c <= 0xEF then
      extra = 2
      if c == 0xE0 then low = 0xA0 elseif c == 0xED then high = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      extra = 3
      if c == 0xF0 then low = 0x90 elseif c == 0xF4 then high = 0x8F end
    else
      return false
    end
    for k = 1, extra do
      local d = text:byte(i + k)
      if d == nil or d < (k == 1 and low or 0x80) or d > (k == 1 and high or 0xBF) then
        return false
      end
    end
    i = i + 1 + extra
  end
  return true
end

local function clean_component(component, plus_is_space, json)
  -- A stray `%` not followed by two hex digits is malformed on its own.
  if component:find("%%%X") or component:find("%%%x%X") or component:find("%%$") or component:find("%%%x$") then
    return REPLACEMENT
  end
  local decoded = component
  if plus_is_space then
    decoded = decoded:gsub("%+", " ")
  end
  decoded = decoded:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end)
  if clean_text(decoded, json) then
    return component
  end
  return REPLACEMENT
end

local function clean_path(path)
  local base, query = path:match("^([^?]*)%??(.*)$")
  local changed = false
  local cleaned_base = base:gsub("[^/]+", function(segment)
    local cleaned = clean_component(segment, false, false)
    if cleaned ~= segment then changed = true end
    return cleaned
  end)
  local cleaned_query = query:gsub("([^&=]*)=([^&]*)", function(name, value)
    local json = JSON_PARAMETERS[name] == true
    local cleaned = clean_component(value, true, json)
    if json then
      -- The transcoder decodes only percent escapes, but a form-encoded
      -- space (Python's urlencode, browsers) arrives as `+`; a JSON value
      -- meaning `+` sends `%2B`.
      cleaned = (cleaned:gsub("%+", "%%20"))
    end
    if cleaned ~= value then changed = true end
    return name .. "=" .. cleaned
  end)
  if not changed then
    return nil
  end
  if path:find("?", 1, true) then
    return cleaned_base .. "?" .. cleaned_query
  end
  return cleaned_base
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local path = headers:get(":path")
  if path ~= nil then
    local cleaned = clean_path(path)
    if cleaned ~= nil then
      headers:replace(":path", cleaned)
    end
  end
end

local function fixed_message(status)
  return FIXED_MESSAGES[status] or (status >= 500 and "internal error" or "request failed")
end

-- The transcoder prints a failed call as {"code":N,"message":"...","details":[]}
-- (canonical JSON, so the message is already a valid escaped JSON string).
local function grpc_code(body)
  return tonumber(body:match('^{"code":(%d+)'))
end

local function grpc_message(body)
  return body:match('^{"code":%d+,"message":"(.-)","details":')
    or body:match('^{"code":%d+,"message":"(.-)"}$')
end

local function read_body(handle)
  local body = handle:body()
  if body == nil then
    return nil, nil
  end
  return body, body:getBytes(0, body:length())
end

local function write_json(buffer, text)
  buffer:setBytes(text)
end

local function on_error(handle, headers, status, requested)
  local final = requested or status
  local trusted = requested ~= nil
  headers:replace(":status", tostring(final))
  headers:replace("content-type", "application/json")
  -- The final length is unknown until the body is read; let the codec
  -- frame it.
  headers:remove("content-length")
  local buffer, body = read_body(handle)
  if buffer == nil then
    return
  end
  -- Envoy's own replies arrive already shaped by local_reply_config.
  if body:sub(1, 10) == '{"error":"' then
    return
  end
  local message = nil
  if trusted then
    message = grpc_message(body)
  end
  if grpc_code(body) == 2 then
    -- UNKNOWN: an exception the service did not map.
    message = nil
  end
  if message == nil or message == "" then
    message = fixed_message(final)
  end
  write_json(buffer, '{"error":"' .. message .. '"}')
end

-- A success whose JSON is not the expected message is a service fault; never
-- pass a shape the contract does not know.
local function broken_shape(handle, buffer)
  handle:headers():replace(":status", "500")
  write_json(buffer, '{"error":"internal error"}')
end

local UNWRAP = {
  get_instance = '^{"instance":(.*)}$',
  get_variables = '^{"variables":(.*)}$',
}

function envoy_on_response(handle)
  local headers = handle:headers()
  local cache_control = "no-store"
  if headers:get(":status") == "200" then
    cache_control = handle:metadata():get("cache_control") or cache_control
  end
  headers:replace("cache-control", cache_control)
  -- A raw gRPC call (refused for want of a route) keeps its gRPC status.
  local content_type = headers:get("content-type") or ""
  if content_type:sub(1, 16) == "application/grpc" then
    return
  end
  -- gRPC framing details mean nothing to a REST client.
  headers:remove("grpc-status")
  headers:remove("grpc-message")
  headers:remove("grpc-accept-encoding")
  local status = tonumber(headers:get(":status")) or 500
  local requested = nil
  local wanted = headers:get("x-http-status")
  if wanted ~= nil then
    headers:remove("x-http-status")
    if wanted:match("^[1-5]%d%d$") then
      requested = tonumber(wanted)
    end
  end

  -- An error stays an error and a success a success, whatever is asked.
  if status >= 400 then
    if requested ~= nil and requested < 400 then
      requested = nil
    end
    on_error(handle, headers, status, requested)
    return
  end
  if requested ~= nil and requested < 300 then
    headers:replace(":status", tostring(requested))
  end

  local op = handle:metadata():get("op")
  local pattern = UNWRAP[op]
  if pattern ~= nil then
    headers:remove("content-length")
    local buffer, body = read_body(handle)
    if buffer ~= nil then
      local inner = body:match(pattern)
      if inner ~= nil then
        write_json(buffer, inner)
      else
        broken_shape(handle, buffer)
      end
    end
  elseif op == "list_instances" then
    headers:remove("content-length")
    local buffer, body = read_body(handle)
    if buffer ~= nil then
      local items, token = body:match('^{"instances":(.*),"next_page_token":"([^"]*)"}$')
      if items ~= nil then
        if token ~= "" then
          -- The handle taken before body() is void after it; a fresh one
          -- still edits the held headers.
          handle:headers():replace("x-next-page-token", token)
        end
        write_json(buffer, items)
      else
        broken_shape(handle, buffer)
      end
    end
  end
end
