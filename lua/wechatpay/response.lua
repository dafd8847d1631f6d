--- Responses: status, headers with case-insensitive lookup, the raw body.
local cjson = require("cjson.safe")

local response = {}

local response_mt = {}
response_mt.__index = response_mt

local headers_mt = {
  __index = function(headers, name)
    if type(name) == "string" then return rawget(headers, name:lower()) end
  end,
}

--- res:json() -> decoded body | nil, err
function response_mt:json()
  if self.body == nil or self.body == "" then return nil, "response has no body" end
  local value, err = cjson.decode(self.body)
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

--- Wraps a transport's { status, headers, body } (header names lower-case).
function response.new(raw)
  local headers = setmetatable({}, headers_mt)
  for name, value in pairs(raw.headers or {}) do headers[name:lower()] = value end
  return setmetatable({ status = raw.status, headers = headers, body = raw.body or "" }, response_mt)
end

return response
