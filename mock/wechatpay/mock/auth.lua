-- Checks the Authorization header of an API request like WeChat Pay does
-- (worker side). Returns nil when the request is authentic, or an unsigned
-- error response. The header itself is never echoed nor logged: it carries
-- the merchant's signature.
local digest = require("openssl.digest")
local response = require("wechatpay.mock.response")
local state = require("wechatpay.mock.state")

local auth = {}

local SCHEME = "WECHATPAY2-SHA256-RSA2048 "
local FIELDS = { "mchid", "nonce_str", "signature", "timestamp", "serial_no" }
local WINDOW = 300
-- WeChat echoes the expected message; cap it so a huge body is not sent back whole.
local MAX_ECHO = 4096

local function sign_error(message, detail)
  return response.error(401, "SIGN_ERROR", message, detail)
end

-- 'k1="v1",k2="v2",...' -> table, or nil, reason. Strict: exactly the five
-- known keys, each once, no spaces, every value quoted.
local function parse_pairs(text)
  local found = {}
  local pos = 1
  local len = #text
  while true do
    local key, value, next_pos = text:match('^([%w_]+)="([^"]*)"()', pos)
    if not key then
      return nil, "expected key=\"value\" at offset " .. (pos - 1)
    end
    if found[key] ~= nil then
      return nil, "duplicate " .. key
    end
    found[key] = value
    pos = next_pos
    if pos > len then
      break
    end
    if text:sub(pos, pos) ~= "," then
      return nil, "pairs must be separated by ',' without spaces"
    end
    pos = pos + 1
  end
  local allowed = {}
  for _, name in ipairs(FIELDS) do
    allowed[name] = true
    if found[name] == nil then
      return nil, "missing " .. name
    end
  end
  for key in pairs(found) do
    if not allowed[key] then
      return nil, "unknown key " .. key
    end
  end
  return found
end

-- method, request_uri (as received), body (raw bytes).
function auth.verify(method, request_uri, body, clock)
  local config = state.config
  local header = ngx.var.http_authorization
  if header == nil or header == "" then
    return sign_error("Authorization header is missing",
      { field = "Authorization", location = "header" })
  end
  if header:sub(1, #SCHEME) ~= SCHEME then
    return sign_error("Authorization must start with '" .. SCHEME .. "'",
      { field = "Authorization", location = "header", issue = "unsupported scheme" })
  end
  local fields, reason = parse_pairs(header:sub(#SCHEME + 1))
  if not fields then
    return sign_error("malformed Authorization header: " .. reason,
      { field = "Authorization", location = "header" })
  end

  if fields.mchid ~= config.mchid then
    return sign_error("mchid in Authorization does not match this merchant ("
      .. config.mchid .. ")", { field = "mchid", location = "Authorization" })
  end
  if fields.serial_no ~= config.merchant_serial then
    return sign_error("serial_no in Authorization does not name the merchant API certificate ("
      .. config.merchant_serial .. ")", { field = "serial_no", location = "Authorization",
      value = fields.serial_no })
  end

  local timestamp = fields.timestamp
  local now = clock or ngx.time()   -- clock: the server's own, under the date fault
  if not timestamp:match("^%d+$") or #timestamp ~= 10 then
    return sign_error("timestamp in Authorization must be unix seconds (10 digits)",
      { field = "timestamp", location = "Authorization" })
  end
  if math.abs(now - tonumber(timestamp)) > WINDOW then
    return sign_error("timestamp " .. timestamp .. " is more than " .. WINDOW
      .. " seconds away from the server time " .. now,
      { field = "timestamp", location = "Authorization", server_time = now })
  end

  local nonce = fields.nonce_str
  -- a nonce_str of 32 characters of [0-9A-Za-z], as WeChat Pay's own SDKs
  -- make it, and a padded standard base64 signature: a client that makes
  -- them otherwise fails here, not first against WeChat Pay
  if #nonce ~= 32 or nonce:find("[^0-9A-Za-z]") then
    return sign_error("nonce_str in Authorization must be 32 characters of [0-9A-Za-z]",
      { field = "nonce_str", location = "Authorization" })
  end
  if #fields.signature % 4 ~= 0 or not fields.signature:find("^[A-Za-z0-9+/]+=?=?$") then
    return sign_error("signature in Authorization must be standard base64, padded",
      { field = "signature", location = "Authorization" })
  end

  local message = method .. "\n" .. request_uri .. "\n" .. timestamp .. "\n"
    .. nonce .. "\n" .. body .. "\n"
  local signature = ngx.decode_base64(fields.signature)
  local verified = false
  if signature and #signature == 256 then
    local md = digest.new("sha256")
    md:update(message)
    local ok, result = pcall(state.keys.merchant_public.verify,
      state.keys.merchant_public, signature, md)
    verified = ok and result == true
  end
  if not verified then
    local echoed = message
    if #echoed > MAX_ECHO then
      echoed = echoed:sub(1, MAX_ECHO)
    end
    return sign_error("signature does not verify", {
      field = "signature",
      issue = "sign not match",
      expect = echoed,
      sign_information = {
        method = method,
        url = request_uri,
        sign_message_length = #message,
        truncated = #message > MAX_ECHO,
      },
    })
  end
  -- A nonce signs one request: every attempt, a retry too, is signed anew
  -- with a fresh nonce and timestamp.  One seen again within the window is a replay,
  -- refused, so a client that re-sends a signed header cannot pass.
  local fresh, err = state.dicts().nonces:add(nonce, true, WINDOW + 1)
  if not fresh and err == "exists" then
    return sign_error("nonce_str was already used within " .. WINDOW .. " seconds: each request is signed "
      .. "with a new nonce", { field = "nonce_str", location = "Authorization", issue = "replayed" })
  end
  return nil
end

return auth
