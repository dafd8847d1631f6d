--- APIv2 signing, as WeChat Pay documents it: the parameters with an
-- empty value and `sign` left out, sorted by name in byte order, joined
-- `k=v&...&key=<APIv2 key>`, then MD5 (the default) or HMAC-SHA256 keyed
-- with the APIv2 key, in upper-case hex.
--
--   local sign = require("wechatpay.v2.sign")
--   sign.sign({ appid = "wx...", mch_id = "...", nonce_str = "..." }, apiv2_key)          --> "9A0A8659..."
--   sign.sign(fields, apiv2_key, "HMAC-SHA256")
--   sign.verify(fields, apiv2_key [, sign_type]) --> true | false (constant-time compare)
local core = require("wechatpay.core")
local errors = require("wechatpay.errors")

local sign = {}

sign.MD5 = "MD5"
sign.HMAC_SHA256 = "HMAC-SHA256"

local TYPES = { [sign.MD5] = true, [sign.HMAC_SHA256] = true }

--- true for a sign_type WeChat Pay knows ("MD5", "HMAC-SHA256").
function sign.is_type(value)
  return TYPES[value] == true
end

-- Byte order whatever the locale: Lua 5.4 compares strings with strcoll.
-- (xml.lua writes fields in the same order.)
local function bytewise(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = a:byte(i), b:byte(i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
sign.bytewise = bytewise

--- string_to_sign(fields) -> "a=1&b=2" (without the key): fields maps
-- names to strings; empty values and `sign` are left out.
function sign.string_to_sign(fields)
  if type(fields) ~= "table" then errors.raise("v2 sign: fields must be a table of name -> string") end
  local names = {}
  for name, value in pairs(fields) do
    if type(name) ~= "string" then errors.raise("v2 sign: field names must be strings") end
    if type(value) ~= "string" then
      errors.raise(("v2 sign: field '%s' must be a string, got %s"):format(name, type(value)))
    end
    if name ~= "sign" and value ~= "" then names[#names + 1] = name end
  end
  table.sort(names, bytewise)
  local pairs_out = {}
  for i, name in ipairs(names) do pairs_out[i] = name .. "=" .. fields[name] end
  return table.concat(pairs_out, "&")
end

local function check_key(apiv2_key)
  if type(apiv2_key) ~= "string" or apiv2_key == "" then
    errors.raise("v2 sign: the APIv2 key must be a non-empty string")
  end
end

--- sign(fields, apiv2_key [, sign_type]) -> upper-case hex signature.
function sign.sign(fields, apiv2_key, sign_type)
  check_key(apiv2_key)
  sign_type = sign_type or sign.MD5
  if not TYPES[sign_type] then
    errors.raise(("v2 sign: sign_type must be \"MD5\" or \"HMAC-SHA256\", got %s")
      :format(type(sign_type) == "string" and ("%q"):format(sign_type:sub(1, 32)) or type(sign_type)))
  end
  local text = sign.string_to_sign(fields) .. "&key=" .. apiv2_key
  if sign_type == sign.MD5 then return core.md5(text):upper() end
  return core.hmac_sha256(apiv2_key, text):upper()
end

--- verify(fields, apiv2_key [, sign_type]) -> true | false: fields.sign
-- against the signature of the other fields (absent or not a string: false).
function sign.verify(fields, apiv2_key, sign_type)
  local given = fields.sign
  if type(given) ~= "string" then return false end
  local expected = sign.sign(fields, apiv2_key, sign_type)
  return #given == #expected and core.equals(expected, given:upper())
end

return sign
