--- Test support: the merchant's notify_url, a plain HTTP server on
-- 127.0.0.1 made with luasocket, for the mock's server:notify() to POST to.
--
--   local r = receiver.new()
--   r:serve(function(headers, body) return status, body end, until_fn, timeout)
-- The answer function may call r:accept_one(answer) itself, to take a
-- second delivery while the first one is still being handled.
local socket = require("socket")

local receiver = {}
receiver.__index = receiver

function receiver.new()
  local server = assert(socket.bind("127.0.0.1", 0))
  server:settimeout(0.02)
  local _, port = server:getsockname()
  return setmetatable({ server = server, port = tonumber(port), requests = 0,
    url = "http://127.0.0.1:" .. port .. "/notify" }, receiver)
end

-- Reads one HTTP request: header table (names as sent), body.
local function read_request(conn)
  conn:settimeout(5)
  local line = conn:receive("*l")
  if not line then return nil end
  local headers, length = {}, 0
  while true do
    local h = conn:receive("*l")
    if not h or h == "" then break end
    local name, value = h:match("^([^:]+):%s*(.-)%s*$")
    if name then
      headers[name] = value
      if name:lower() == "content-length" then length = tonumber(value) end
    end
  end
  local body = length > 0 and conn:receive(length) or ""
  return headers, body
end

local REASONS = { [200] = "OK", [204] = "No Content", [400] = "Bad Request", [401] = "Unauthorized",
  [500] = "Internal Server Error", [503] = "Service Unavailable" }

--- Takes one connection if one is waiting (within the accept timeout) and
-- answers it with answer(headers, body) -> status, body.  -> true if served.
function receiver:accept_one(answer, wait)
  self.server:settimeout(wait or 0.02)
  local conn = self.server:accept()
  if not conn then return false end
  local headers, body = read_request(conn)
  if headers then
    self.requests = self.requests + 1
    local status, out = answer(headers, body)
    out = out or ""
    conn:send(("HTTP/1.1 %d %s\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n%s")
      :format(status, REASONS[status] or "Status", #out, out ~= "" and "Content-Type: application/json\r\n" or "", out))
  end
  conn:close()
  return true
end

--- Serves until done() is true or timeout seconds pass; -> done()
function receiver:serve(answer, done, timeout)
  local deadline = socket.gettime() + (timeout or 10)
  while socket.gettime() < deadline do
    self:accept_one(answer)
    if done() then return true end
  end
  return done()
end

function receiver:close()
  self.server:close()
end

return receiver
