--- API errors: plain tables with a __tostring, so they print on one line
-- under Lua 5.4 and LuaJIT alike.
--
--   err.kind        "http" | "verify" | "network" | "timeout" | "config"
--   err.status      HTTP status, when a response arrived
--   err.code        WeChat Pay's error code (e.g. "PARAM_ERROR")
--   err.message     what went wrong, for a person
--   err.detail      WeChat Pay's detail object, when given
--   err.request_id  the Request-ID header, to quote to WeChat Pay support
--   err.response    the response, when one arrived (a 2xx that failed
--                   verification may still have been acted on)
local errors = {}

local error_mt = {}
error_mt.__index = error_mt

function error_mt:__tostring()
  local parts = { "wechatpay " .. tostring(self.kind) .. " error" }
  if self.status then parts[#parts + 1] = tostring(self.status) end
  if self.code then parts[#parts + 1] = tostring(self.code) end
  local line = table.concat(parts, " ") .. ": " .. tostring(self.message)
  if self.request_id then line = line .. " (Request-ID " .. self.request_id .. ")" end
  return line
end

--- new(kind, message [, fields]) -> error table
function errors.new(kind, message, fields)
  local err = {}
  if fields then
    for k, v in pairs(fields) do err[k] = v end
  end
  err.kind = kind
  err.message = message
  return setmetatable(err, error_mt)
end

function errors.is_error(value)
  return getmetatable(value) == error_mt
end

--- true for an interrupt (Ctrl-C): an error of kind "interrupted", or the "interrupted!" that lua.c raises from its SIGINT hook.
function errors.is_interrupt(value)
  if type(value) == "table" then return value.kind == "interrupted" end
  return type(value) == "string" and value:find("interrupted!", 1, true) ~= nil
end

return errors
