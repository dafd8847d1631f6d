-- Run by http_session_spec in scripts/lua_host.c built for Lua 5.4:
-- session:perform() with memory running out at each allocation in turn,
-- while two transfers are finished.  Prints one line per budget:
--   "<budget> <raised: yes|no> <reported at once> <a seen> <b seen>"
-- where "seen" counts how often each transfer was reported in all.
local core = require("wechatpay.core")
local socket = require("socket")

local function serve_two(session, listener)
  local conns, requests, deadline = {}, {}, socket.gettime() + 10
  while #requests < 2 and socket.gettime() < deadline do
    assert(#session:perform(0.01) == 0, "a transfer finished before its answer was sent")
    local conn = listener:accept()
    if conn then
      conn:settimeout(0)
      conns[#conns + 1] = { conn = conn, got = "" }
    end
    for _, c in ipairs(conns) do
      if not c.done then
        local data, _, partial = c.conn:receive(4096)
        c.got = c.got .. (data or partial or "")
        if c.got:find("\r\n\r\n", 1, true) then
          c.done = true
          requests[#requests + 1] = c
        end
      end
    end
  end
  assert(#requests == 2, "the two requests did not arrive")
  for _, c in ipairs(requests) do
    local name = c.got:match("^GET /(%a+) ")
    c.conn:settimeout(5)
    assert(c.conn:send("HTTP/1.1 200 OK\r\nContent-Length: " .. #name .. "\r\nConnection: close\r\n\r\n" .. name))
  end
  socket.sleep(0.05)   -- both answers are in the socket buffers before the next perform
  return requests
end

for budget = 0, tonumber(arg[1]) do
  local session = core.http_session()
  local listener = assert(socket.bind("127.0.0.1", 0))
  listener:settimeout(0)
  local _, port = listener:getsockname()
  local names = {}
  for _, name in ipairs{ "a", "b" } do
    names[session:submit{ method = "GET", url = ("http://127.0.0.1:%d/%s"):format(port, name), timeout = 10 }] = name
  end
  local requests = serve_two(session, listener)
  local seen = { a = 0, b = 0 }
  local function count(done)
    for _, r in ipairs(done) do
      assert(r.body == names[r.id], "a transfer was reported with another's body")
      seen[names[r.id]] = seen[names[r.id]] + 1
    end
  end
  fail_allocation_after(budget)
  local ok, done = pcall(session.perform, session, 0)
  fail_allocation_after(nil)
  local at_once = ok and #done or 0
  if ok then count(done) else assert(tostring(done):find("not enough memory"), tostring(done)) end
  local deadline = socket.gettime() + 2
  while seen.a + seen.b < 2 and socket.gettime() < deadline do count(session:perform(0.01)) end
  for _ = 1, 3 do count(session:perform(0)) end   -- nothing more may come
  print(budget, ok and "no" or "yes", at_once, seen.a, seen.b)
  for _, c in ipairs(requests) do c.conn:close() end
  listener:close()
  session:close()
end
