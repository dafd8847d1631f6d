--- Test support: a DNS server on 127.0.0.1 that answers every A query with
-- 127.0.0.1, for a real nginx `resolver` (nginx does not read /etc/hosts).
-- It runs in a process of its own, so it answers while the spec waits on
-- nginx.
--
--   local dns = require("support.dns").start()   -- dns.port, dns:stop()
--   .start{ slow = 1.5 }: names whose first label begins "slow" are answered
--   that many seconds late (a lookup that eats into a call's connect budget)
--   -- nginx.conf: resolver 127.0.0.1:<dns.port> ipv6=off;
local socket = require("socket")

local M = {}

local function u16(s, i) return s:byte(i) * 256 + s:byte(i + 1) end
local function be16(n) return string.char(math.floor(n / 256) % 256, n % 256) end

-- The answer to one query: the question echoed; one A record (127.0.0.1)
-- for an A question, none for anything else (nginx also asks AAAA unless
-- ipv6=off).
function M.answer(query)
  if #query < 17 then return nil end
  local i = 13
  while true do   -- the question's name: length-prefixed labels up to a 0
    local n = query:byte(i)
    if not n then return nil end
    i = i + 1
    if n == 0 then break end
    i = i + n
  end
  local question_end = i + 3
  if #query < question_end then return nil end
  local qtype = u16(query, i)
  local is_a = qtype == 1
  local header = query:sub(1, 2) .. be16(0x8180) .. be16(1) .. be16(is_a and 1 or 0) .. be16(0) .. be16(0)
  local answer = ""
  if is_a then   -- a pointer to the question's name, A, IN, TTL 60, 4 bytes
    answer = be16(0xC00C) .. be16(1) .. be16(1) .. "\0\0\0\60" .. be16(4) .. "\127\0\0\1"
  end
  return header .. query:sub(13, question_end) .. answer
end

function M.serve(port, slow)
  local udp = assert(socket.udp())
  assert(udp:setsockname("127.0.0.1", port))
  while true do
    local query, ip, from = udp:receivefrom()
    if query then
      local reply = M.answer(query)
      -- the first label's text starts after the 12-byte header and its length byte
      if reply and slow and query:sub(14, 17) == "slow" then socket.sleep(slow) end
      if reply then udp:sendto(reply, ip, from) end
    end
  end
end

local function free_udp_port()
  local udp = assert(socket.udp())
  assert(udp:setsockname("127.0.0.1", 0))
  local _, port = udp:getsockname()
  udp:close()
  return port
end

--- start([{ slow = seconds }]) -> { port, stop }: the server in a background interpreter.
function M.start(opts)
  local slow = opts and tonumber(opts.slow)
  local port = free_udp_port()
  local interpreter = jit and "luajit" or "lua5.4"
  local cmd = ("%s -e 'package.path = %q .. package.path; require(\"support.dns\").serve(%d, %s)' "
    .. ">/dev/null 2>&1 & echo $!"):format(interpreter, "./spec/?.lua;", port, slow and ("%.3f"):format(slow) or "nil")
  local pipe = assert(io.popen(cmd))
  local pid = pipe:read("*l")
  pipe:close()
  assert(pid and pid:match("^%d+$"), "the DNS server did not start")
  -- ready when it answers
  local probe = assert(socket.udp())
  probe:settimeout(0.1)
  assert(probe:setpeername("127.0.0.1", port))
  local query = "\0\1\1\0\0\1\0\0\0\0\0\0\9localhost\0\0\1\0\1"
  local answered
  for _ = 1, 50 do
    probe:send(query)
    answered = probe:receive()
    if answered then break end
    socket.sleep(0.05)   -- refused at once until the server has bound its port
  end
  probe:close()
  if not answered then
    os.execute("kill " .. pid .. " 2>/dev/null")
    error("the DNS server on 127.0.0.1:" .. port .. " does not answer")
  end
  return {
    port = port,
    stop = function() os.execute("kill " .. pid .. " 2>/dev/null") end,
  }
end

return M
