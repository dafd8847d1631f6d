--- Responses: status, headers with case-insensitive lookup, the raw body.
local core = require("wechatpay.core")
local headers = require("wechatpay.headers")

local response = {}

local response_mt = {}
response_mt.__index = response_mt

--- res:json() -> decoded body | nil, err
-- Strict JSON (core.json_decode, as callbacks): integers stay integers on
-- Lua 5.4 (amounts are in fen), null is cjson.null.
function response_mt:json()
  if self.body == nil or self.body == "" then return nil, "response has no body" end
  local value, err = core.json_decode(self.body)
  if value == nil then return nil, "response body is not JSON: " .. tostring(err) end
  return value
end

--- res:header(name) -> value | nil (any case)
function response_mt:header(name)
  return self.headers[name]
end

function response_mt:__tostring()
  return ("wechatpay.response (%d, %d bytes)"):format(self.status, #(self.body or ""))
end

--- Wraps a transport's { status, headers, body }.
function response.new(raw)
  return setmetatable({ status = raw.status, headers = headers.new(raw.headers), body = raw.body or "" },
    response_mt)
end

return response
