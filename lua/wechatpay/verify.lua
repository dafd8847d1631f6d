--- Verifying what WeChat Pay signed: API responses and callbacks.
--
-- message = TIMESTAMP\n NONCE\n BODY\n, SHA256withRSA with the platform key
-- named by Wechatpay-Serial (a certificate serial or a PUB_KEY_ID_...).
-- Nothing here raises on what arrives from the network: every bad header,
-- body or signature is `nil, err` with err.kind "verify".
local core = require("wechatpay.core")
local errors = require("wechatpay.errors")
local headers = require("wechatpay.headers")
local response = require("wechatpay.response")

local verify = {}

verify.WINDOW = 300   -- seconds either side of the local clock

-- 2xx responses that WeChat Pay does not sign: file downloads, whose
-- integrity comes from the hash given by the call that returned the URL.
local UNSIGNED_PATHS = {
  "^/v3/billdownload/file",
  "^/v3/statements",
  "^/v3/global/statements",
  "^/v3/transferdownload/",
  "^/v3/new%-tax%-control%-fapiao/download",
}

--- true when a 2xx of this request target carries no signature.
function verify.is_unsigned(target)
  local path = target:match("^[^?]*")
  if path:find("^/v3/merchant%-service/images/") then
    return not path:find("^/v3/merchant%-service/images/upload")
  end
  for _, pattern in ipairs(UNSIGNED_PATHS) do
    if path:find(pattern) then return true end
  end
  return false
end

local function known_serials(keys)
  local list = {}
  for serial in pairs(keys) do list[#list + 1] = serial end
  table.sort(list)
  return table.concat(list, ", ")
end

local SIGNED_HEADERS = { "Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial" }
-- by the names as WeChat Pay writes them and as nginx gives them (lower
-- case), so the usual maps need no string.lower per header
local SIGNED_INDEX = {}
for i, name in ipairs(SIGNED_HEADERS) do
  SIGNED_INDEX[name] = i
  SIGNED_INDEX[name:lower()] = i
end
-- the lengths of those names: no other header needs lowering
local SIGNED_LENGTH = {}
for _, name in ipairs(SIGNED_HEADERS) do SIGNED_LENGTH[#name] = true end

-- The four signature headers of a plain name -> value map, in one pass and
-- without copying it (callbacks come this way, and the copy showed in the
-- callback benchmark): a name given twice in two cases counts as repeated.
local function from_map(map)
  local values, lower = { nil, nil, nil, nil }, string.lower   -- sized once for the four
  for name, value in pairs(map) do
    local i = SIGNED_INDEX[name]
    if not i and type(name) == "string" and SIGNED_LENGTH[#name] then i = SIGNED_INDEX[lower(name)] end
    if i then
      if values[i] ~= nil then value = { values[i], value } end
      values[i] = value
    end
  end
  return values
end

-- The four signature headers as strings, or nil and why not.
local function signature_headers(h)
  local values = headers.is_headers(h) and { h[SIGNED_HEADERS[1]], h[SIGNED_HEADERS[2]], h[SIGNED_HEADERS[3]],
    h[SIGNED_HEADERS[4]] } or from_map(h)
  local missing
  for i = 1, 4 do
    local value, name = values[i], SIGNED_HEADERS[i]
    if value == nil then
      missing = missing or {}
      missing[#missing + 1] = name
    elseif type(value) == "table" then
      return nil, name .. " is repeated: a message carries one signature, so repeated headers are refused"
    elseif type(value) ~= "string" then
      return nil, ("%s must be a string, got %s"):format(name, type(value))
    end
  end
  if missing then
    return nil, "unsigned message: missing " .. table.concat(missing, ", ") .. " (a 2xx without them is forged)"
  end
  return values
end

-- A header value quoted in an error, which may reach a log: anyone can
-- POST a callback, so only a value of the form expected is shown.
local function quoted(value, pattern, max)
  if #value <= max and value:find(pattern) then return value end
  return ("(%d bytes that are not one)"):format(#value)
end

--- signed(keys, headers, body [, now]) -> true | nil, reason [, unknown serial]
-- keys: serial or PUB_KEY_ID -> key object; headers: a header table (or
-- any name -> value map; names in any case).
function verify.signed(keys, h, body, now)
  if type(body) ~= "string" then return nil, ("the body must be the raw bytes received, got %s"):format(type(body)) end
  local values, why = signature_headers(h)
  if not values then return nil, why end
  local timestamp, nonce, signature, serial = values[1], values[2], values[3], values[4]
  -- unix seconds have 10 digits until 2286; 12 leave room and stay exact
  local ts = #timestamp <= 12 and timestamp:find("^%d+$") and tonumber(timestamp)
  if not ts then
    return nil, "Wechatpay-Timestamp is not unix seconds: " .. quoted(timestamp, "^[%w%-%+%.:]*$", 32)
  end
  now = now or os.time()
  if math.abs(now - ts) > verify.WINDOW then
    return nil, ("Wechatpay-Timestamp %d is %d s from the local clock %d (allowed: %d s): a replay, or a clock out of sync")
      :format(ts, now - ts, now, verify.WINDOW)
  end
  local key = keys[serial] or keys[serial:upper()]
  if not key then
    -- the third value lets a certificate manager refresh and retry
    return nil, ("unknown Wechatpay-Serial %s: the client knows %s"):format(quoted(serial, "^[%w_]+$", 64),
      known_serials(keys)),
      serial
  end
  if core.verify_message(key, timestamp, nonce, body, signature) then return true end
  -- a probe cannot verify: it is named only to say why
  if signature:find("^WECHATPAY/SIGNTEST/") then
    return nil, "Wechatpay-Signature is a WECHATPAY/SIGNTEST/ probe, which must not verify"
  end
  return nil, "Wechatpay-Signature does not verify with the key " .. serial .. ": body or headers altered"
end

--- callback(keys, headers, body) -> true | nil, err (kind "verify")
function verify.callback(keys, h, body)
  if type(h) ~= "table" then
    return nil, errors.new("verify", ("headers must be a table of name -> value, got %s"):format(type(h)))
  end
  local ok, reason, unknown = verify.signed(keys, h, body)
  if not ok then return nil, errors.new("verify", reason, { unknown_serial = unknown }) end
  return true
end

-- The error of a non-2xx answer: WeChat Pay's code and message when the
-- body has them.  Never verified: gateways answer errors unsigned.
local function api_error(res, target)
  local body = res:json()
  local code, message, detail
  if type(body) == "table" then
    code = type(body.code) == "string" and body.code or nil
    message = type(body.message) == "string" and body.message or nil
    detail = body.detail
  end
  return errors.new("http", message or ("HTTP " .. res.status .. " from " .. target:match("^[^?]*")), {
    status = res.status, code = code, detail = detail,
    request_id = res.headers["request-id"], response = res,
  })
end

--- response(keys, raw, target) -> response | nil, err
-- raw is a transport's { status, headers, body }: a 2xx is verified unless
-- its path is one of the unsigned downloads; anything else is an error.
function verify.response(keys, raw, target)
  local res = response.new(raw)
  if res.status < 200 or res.status >= 300 then
    return nil, api_error(res, target)
  end
  if not verify.is_unsigned(target) then
    local ok, reason, unknown = verify.signed(keys, res.headers, res.body)
    if not ok then
      return nil, errors.new("verify", reason, {
        status = res.status, request_id = res.headers["request-id"], response = res, unknown_serial = unknown,
      })
    end
  end
  return res
end

return verify
