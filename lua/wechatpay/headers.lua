--- Case-insensitive HTTP header tables, the same for responses and callbacks.
--
--   local h = headers.new{ ["Wechatpay-Serial"] = "PUB_KEY_ID_..." }
--   h["wechatpay-serial"] == h["WECHATPAY-SERIAL"]   --> true
--
-- Names are stored lower-case; values are kept as given, so a repeated
-- header from ngx.req.get_headers() stays a table for the reader to refuse.
local headers = {}

local headers_mt = {}

function headers_mt.__index(t, name)
  if type(name) == "string" then return rawget(t, name:lower()) end
end

function headers_mt.__newindex(t, name, value)
  if type(name) ~= "string" then
    error(("header name must be a string, got %s"):format(type(name)), 2)
  end
  rawset(t, name:lower(), value)
end

--- new([map]) -> header table from a name -> value map (any case).
-- Two names that differ only in case are one header given twice: both
-- values are kept, as a list.
function headers.new(map)
  local t = setmetatable({}, headers_mt)
  for name, value in pairs(map or {}) do
    if type(name) == "string" then
      local lower = name:lower()
      local previous = rawget(t, lower)
      if previous == nil then
        rawset(t, lower, value)
      else
        local list = type(previous) == "table" and previous or { previous }
        if type(value) == "table" then
          for i = 1, #value do list[#list + 1] = value[i] end
        else
          list[#list + 1] = value
        end
        rawset(t, lower, list)
      end
    end
  end
  return t
end

function headers.is_headers(value)
  return getmetatable(value) == headers_mt
end

-- RFC 9110 token characters: what a header name may hold.
local TOKEN = "^[%w!#%$%%&'%*%+%-%.%^_`|~]+$"

--- true when name is a valid header field name.
function headers.valid_name(name)
  return type(name) == "string" and name:find(TOKEN) ~= nil
end

--- true when value holds no CR, LF or NUL (which would end or cut the line).
function headers.valid_value(value)
  return type(value) == "string" and value:find("[%z\r\n]") == nil
end

return headers
