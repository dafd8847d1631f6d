--- Errors: the one list of error kinds, the error objects calls fail with,
-- and the helper that raises programmer errors at the caller's line.
--
-- Operational failures are returned as `nil, err`, err a plain table with a
-- __tostring (so it prints under Lua 5.4 and LuaJIT alike):
--   err.kind        one of errors.KINDS below
--   err.message     what went wrong, for a person (full text)
--   err.status      HTTP status, when a response arrived
--   err.code        WeChat Pay's error code (e.g. "PARAM_ERROR")
--   err.detail      WeChat Pay's detail object, when given
--   err.request_id  the Request-ID header, to quote to WeChat Pay support
--   err.response    the response, when one arrived (a 2xx that failed
--                   verification may still have been acted on)
--   err.attempts    how many times the call was sent
--   err.failovers   with backup hosts (base_url a list): how many times the
--                   call moved to the next host
-- tostring(err) is one line of at most MAX_LINE bytes with control
-- characters escaped: a server's message cannot forge log lines.
local errors = {}

--- Every kind an operational error can have, and what it means.
errors.KINDS = {
  http = "WeChat Pay answered with a status outside 2xx; status, code and message say what it refused",
  verify = "a 2xx answer or a callback whose signature does not verify: it may have been acted on, "
    .. "but its content cannot be trusted",
  network = "no complete answer: the connection failed, was reset or broke mid-body",
  timeout = "no complete answer within the timeout",
  closed = "client:close() was called while the call was queued or in flight",
  interrupted = "the call was interrupted (Ctrl-C) while it was being signed or sent",
  internal = "the client or a handler raised while finishing the call: a bug, with the raised error as message",
  decrypt = "a callback or certificate download that verified but does not decrypt with the client's "
    .. "apiv3_key: check the APIv3 key (32 characters, set in the merchant platform; not the APIv2 key)",
  integrity = "a downloaded file (a bill) whose bytes do not match the hash WeChat Pay gave, or whose gzip "
    .. "stream is corrupt or ends early: nothing was kept",
  malformed = "a callback or certificate download that verified but is not what WeChat Pay sends "
    .. "(not JSON, or without its id, resource or certificates); or a bill whose download URL is not on the "
    .. "client's base_url or cannot be requested as it reads: nothing was sent",
  file = "a media upload's file that cannot be read, is empty, is not of a type the endpoint takes "
    .. "(judged by its bytes) or is over its size limit: nothing was sent; or a downloaded bill that cannot "
    .. "be written to its file (the temporary file beside it, or the rename): nothing was kept",
}

errors.MAX_LINE = 1024

local error_mt = {}
error_mt.__index = error_mt

-- Control bytes (CR, LF, ESC of ANSI sequences, NUL...) become \ddd escapes.
local function one_line(value)
  return (tostring(value):gsub("[%z\1-\31\127]", function(c) return ("\\%d"):format(c:byte()) end))
end

function error_mt:__tostring()
  local head = { "wechatpay " .. one_line(self.kind) .. " error" }
  if self.status then head[#head + 1] = one_line(self.status) end
  if self.code then head[#head + 1] = one_line(self.code):sub(1, 64) end
  local tail = ""
  if self.request_id then tail = " (Request-ID " .. one_line(self.request_id):sub(1, 128) .. ")" end
  local line = table.concat(head, " ") .. ": "
  local message = one_line(self.message)
  local room = errors.MAX_LINE - #line - #tail
  if #message > room then
    local cut = ("... (%d bytes more)"):format(#message - room)
    message = message:sub(1, room - #cut) .. cut
  end
  return line .. message .. tail
end

-- "failed: " .. err works as tostring(err) does (nginx handlers concatenate).
function error_mt.__concat(a, b)
  return tostring(a) .. tostring(b)
end

--- new(kind, message [, fields]) -> error table.  The kind must be listed.
function errors.new(kind, message, fields)
  if not errors.KINDS[kind] then error("wechatpay.errors: unknown error kind " .. tostring(kind), 2) end
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

--- true for an interrupt (Ctrl-C): an error of kind "interrupted", or the
-- "interrupted!" that lua.c raises from its SIGINT hook.
function errors.is_interrupt(value)
  if type(value) == "table" then return value.kind == "interrupted" end
  return type(value) == "string" and value:find("interrupted!", 1, true) ~= nil
end

--- The error of a call whose handling raised `raised`: an interrupt keeps
-- its own kind, anything else is a bug in the client or a handler.
function errors.from_raise(raised, where)
  local kind = errors.is_interrupt(raised) and "interrupted" or "internal"
  return errors.new(kind, tostring(raised) .. " (" .. where .. ")", { raised = raised })
end

-- ---- programmer errors -----------------------------------------------------

-- The folder of this library's Lua files: frames there are ours.
local OWN_SOURCE = debug.getinfo(1, "S").source:match("^@(.*[/\\])")

--- raise(message): a programmer error, reported at the first line of the
-- caller's code outside this library, wherever inside it the check sits.
function errors.raise(message)
  local level = 2   -- as for error(): 1 is this function, 2 its caller
  while true do
    local info = debug.getinfo(level, "S")
    if not info then level = 2 break end
    local ours = OWN_SOURCE ~= nil and info.source:sub(1, #OWN_SOURCE + 1) == "@" .. OWN_SOURCE
    if not ours and info.what ~= "C" then break end
    level = level + 1
  end
  error(message, level)
end

return errors
