-- core.http_session, the libcurl transport, at the C level: what it parses,
-- refuses and reports.  The specs talk plain HTTP to a loopback socket served
-- from this very process (http is allowed at the C level), so that a reply
-- can carry any bytes and the request can be read byte for byte.
local core = require("wechatpay.core")
local mock = require("wechatpay.mock")
local socket = require("socket")
local support = require("support.async")
local ossl = require("support.openssl")

local SLOW = os.getenv("WECHATPAY_VALGRIND") and 10 or 1
-- One request against a loopback listener served step by step from this
-- process.  reply: the raw bytes to answer with once the request has
-- arrived, or false to never answer.  Returns the result and the request.
local function exchange(request, reply, session_options)
  local session = core.http_session(session_options)
  local listener = assert(socket.bind("127.0.0.1", 0))
  listener:settimeout(0)
  local _, port = listener:getsockname()
  local req = { method = "GET", timeout = 5 * SLOW }
  for k, v in pairs(request) do req[k] = v end
  req.url = req.url or ("http://127.0.0.1:" .. port .. (request.path or "/x"))
  req.path = nil
  local id = session:submit(req)
  local conn, got, answered = nil, "", false
  local deadline = socket.gettime() + 10 * SLOW
  local result
  while not result and socket.gettime() < deadline do
    for _, r in ipairs(session:perform(0.01)) do
      if r.id == id then result = r end
    end
    if not conn then
      conn = listener:accept()
      if conn then conn:settimeout(0) end
    elseif not answered and reply then
      local data, _, partial = conn:receive(4096)
      got = got .. (data or partial or "")
      local head_end = got:find("\r\n\r\n", 1, true)
      local length = tonumber(got:match("[Cc]ontent%-[Ll]ength: (%d+)") or "0")
      if head_end and #got >= head_end + 3 + length then
        conn:settimeout(5)
        assert(conn:send(reply))
        conn:settimeout(0)
        answered = true
      end
    end
  end
  -- anything more on the connection (a followed redirect, say) is seen here
  if conn then
    conn:settimeout(0.1)
    local data, _, partial = conn:receive(4096)
    got = got .. (data or partial or "")
    conn:close()
  end
  listener:close()
  session:close()
  return assert(result, "no result for the request"), got
end

local OK = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

describe("core.http_session", function()
  describe("response headers", function()
    it("keeps the lines before a header line that begins with HTTP/", function()
      local res = exchange({}, "HTTP/1.1 200 OK\r\nX-Before: 1\r\nHTTP/1.1-Foo: x\r\n"
        .. "X-After: 2\r\nContent-Length: 2\r\n\r\nok")
      assert.equal(200, res.status)
      assert.equal("1", res.headers["x-before"])
      assert.equal("x", res.headers["http/1.1-foo"])
      assert.equal("2", res.headers["x-after"])
      assert.equal("2", res.headers["content-length"])
    end)

    it("keeps a chunked body's trailers out of the headers: none joins a header, none wipes them", function()
      local res = exchange({}, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nRequest-ID: abc\r\n"
        .. "Trailer: Request-ID\r\n\r\n2\r\nok\r\n0\r\nRequest-ID: evil\r\nX-Trailer: 1\r\n\r\n")
      assert.equal(200, res.status)
      assert.equal("ok", res.body)
      assert.equal("abc", res.headers["request-id"])
      assert.is_nil(res.headers["x-trailer"])
      res = exchange({}, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nWechatpay-Serial: PUB_KEY_ID_1\r\n"
        .. "\r\n2\r\nok\r\n0\r\nHTTP/1.1-Trailer: x\r\nX-T: 1\r\n\r\n")
      assert.equal(200, res.status)
      assert.equal("PUB_KEY_ID_1", res.headers["wechatpay-serial"])
      assert.is_nil(res.headers["x-t"])
    end)

    it("starts afresh with the status line after a 100 Continue", function()
      local res = exchange({}, "HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
        .. "HTTP/1.1 200 OK\r\nX-Final: 1\r\nContent-Length: 2\r\n\r\nok")
      assert.equal(200, res.status)
      assert.is_nil(res.headers["x-interim"])
      assert.equal("1", res.headers["x-final"])
      assert.equal("ok", res.body)
    end)
  end)

  describe("timeouts and options", function()
    local session
    setup(function() session = core.http_session() end)
    teardown(function() session:close() end)

    local BAD_SECONDS = { 0 / 0, math.huge, -math.huge, -1, 0, 0.0004, 1e300, "1" }

    for _, field in ipairs{ "timeout", "connect_timeout" } do
      it("refuses a " .. field .. " that is NaN, infinite, negative or under 1 ms", function()
        for _, bad in ipairs(BAD_SECONDS) do
          local ok, err = pcall(session.submit, session,
            { method = "GET", url = "http://127.0.0.1:9/", [field] = bad })
          assert.is_false(ok, field .. " = " .. tostring(bad) .. " was accepted")
          assert.matches("'" .. field .. "'", err)
        end
        assert.equal(0, session:pending())
        local id = session:submit{ method = "GET", url = "http://127.0.0.1:9/", [field] = 0.001 }
        assert.is_true(session:cancel(id))
      end)
    end

    it("refuses NaN, huge, negative or fractional session options", function()
      local cases = {
        idle_timeout = { 0 / 0, math.huge, 0, 0.5, -1, 1e300 },
        max_connections = { 0 / 0, math.huge, -1, 1.5, 1e300 },
        max_body = { 0 / 0, math.huge, 0, -1, 1.5, 1e300 },
      }
      for name, values in pairs(cases) do
        for _, bad in ipairs(values) do
          local ok, err = pcall(core.http_session, { [name] = bad })
          assert.is_false(ok, name .. " = " .. tostring(bad) .. " was accepted")
          assert.matches("'" .. name .. "'", err)
        end
      end
      core.http_session{ idle_timeout = 1.5, max_connections = 0, max_body = 1 }:close()
    end)

    it("refuses a wait that is NaN or negative", function()
      assert.has_error(function() session:perform(0 / 0) end)
      assert.has_error(function() session:perform(-1) end)
    end)
  end)

  describe("request bytes", function()
    local session
    setup(function() session = core.http_session() end)
    teardown(function() session:close() end)

    local function refused(request, pattern)
      local full = { method = "GET", url = "http://127.0.0.1:9/" }
      for k, v in pairs(request) do full[k] = v end
      local ok, err = pcall(session.submit, session, full)
      assert.is_false(ok)
      assert.matches(pattern, err)
      assert.equal(0, session:pending())
    end

    it("refuses a NUL in a header, the url or the method", function()
      refused({ headers = { "X-Good: 1", "X-Bad: a\0b" } }, "NUL")
      refused({ url = "http://127.0.0.1:9/a\0b" }, "url")
      refused({ method = "GET\0X" }, "method")
    end)

    it("refuses a line break in a header, the url or the method", function()
      refused({ headers = { "X-Bad: a\r\nX-Injected: 1" } }, "line break")
      refused({ url = "http://127.0.0.1:9/a\r\nX: 1" }, "url")
      refused({ method = "GET /x HTTP/1.1\r\n" }, "method")
      refused({ method = "GE T" }, "method")
    end)

    it("reads a request and the options raw: no metamethod runs (it could free a string in use)", function()
      local ran = {}
      -- fresh strings, and a collection at every later field: read through
      -- __index, the url would be freed before curl is given it
      local function behind_index(fields)
        return setmetatable({}, { __index = function(_, name)
          ran[#ran + 1] = name
          collectgarbage()
          local value = fields[name]
          return type(value) == "string" and value:sub(1) or value
        end })
      end
      local ok, err = pcall(session.submit, session,
        behind_index{ method = "GET", url = "http://127.0.0.1:9/", timeout = 5 })
      assert.is_false(ok)
      assert.matches("request needs a method and a url", err, 1, true)
      assert.equal(0, session:pending())
      local other = core.http_session(behind_index{ cafile = "/nonexistent", max_body = 10 })
      other:close()
      assert.same({}, ran)
    end)

    it("refuses to run a request with a CA bundle curl did not take, rather than trust its default one", function()
      -- curl takes no blob over 8 MB: without the check the transfer ran on the system's CAs
      local big = core.http_session{ ca_pem = ("#"):rep(8 * 1000 * 1000 + 1) }
      local ok, err = pcall(big.submit, big, { method = "GET", url = "https://127.0.0.1:9/" })
      assert.is_false(ok)
      assert.matches("cannot give the HTTP transfer its CA bundle (cafile)", err, 1, true)
      assert.equal(0, big:pending())
      big:close()
    end)

    it("sends /./ and /../ in the path as they are", function()
      local res, got = exchange({ path = "/v3/a/./b/../c/%2e/d" }, OK)
      assert.equal(200, res.status)
      assert.equal("GET /v3/a/./b/../c/%2e/d HTTP/1.1", got:match("^[^\r]*"))
    end)

    it("sends a body with NUL bytes whole", function()
      local body = "a\0b\0c"
      local res, got = exchange({ method = "POST", body = body }, OK)
      assert.equal(200, res.status)
      assert.equal(body, got:sub(-#body))
    end)

    it("reports a redirect instead of following it", function()
      local res, got = exchange({}, "HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n")
      assert.equal(302, res.status)
      assert.equal("/elsewhere", res.headers.location)
      local _, requests = got:gsub("HTTP/1%.1\r\n", "")
      assert.equal(1, requests)
    end)
  end)

  describe("failures say whether a retry may help", function()
    local server
    setup(function() server = assert(mock.start()) end)
    teardown(function() if server then server:stop() end end)

    local function fetch(session, request)
      local id = session:submit(request)
      for _ = 1, 200 * SLOW do
        local r = session:perform(0.05)[1]
        if r then
          assert.equal(id, r.id)
          return r
        end
      end
      error("no result")
    end

    it("a closed port: safe, nothing sent", function()
      local session = core.http_session()
      local r = fetch(session, { method = "POST", body = "{}",
        url = "http://127.0.0.1:" .. support.closed_port() .. "/" })
      session:close()
      assert.equal("network", r.error)
      assert.equal("safe", r.retry)
      assert.equal(0, r.sent)
    end)

    it("a server that takes the request and never answers: idempotent", function()
      local listener = assert(socket.bind("127.0.0.1", 0))   -- never accepts: the kernel does
      local _, port = listener:getsockname()
      local session = core.http_session()
      local r = fetch(session, { method = "POST", body = "{}", timeout = 0.3 * SLOW,
        url = "http://127.0.0.1:" .. port .. "/" })
      session:close()
      listener:close()
      assert.equal("timeout", r.error)
      assert.equal("idempotent", r.retry)
      assert.is_true(r.sent > 0)
    end)

    it("a server that closes the connection after the request: idempotent", function()
      local listener = assert(socket.bind("127.0.0.1", 0))
      listener:settimeout(0)
      local _, port = listener:getsockname()
      local session = core.http_session()
      local id = session:submit{ method = "POST", body = "{}", url = "http://127.0.0.1:" .. port .. "/" }
      local r, conn
      for _ = 1, 200 * SLOW do
        r = session:perform(0.02)[1]
        if r then break end
        conn = conn or listener:accept()
        if conn then
          conn:settimeout(1)
          local data = conn:receive("*l")
          if data then
            repeat data = conn:receive("*l") until data == "" or not data
            conn:receive(2)
            conn:close()
          end
        end
      end
      session:close()
      listener:close()
      assert.equal(id, r.id)
      assert.equal("network", r.error)
      assert.equal("idempotent", r.retry)
    end)

    it("a certificate nobody trusts: false", function()
      local session = core.http_session()   -- the mock's CA is not in the system store
      local r = fetch(session, { method = "GET", url = server.base_url })
      session:close()
      assert.equal("network", r.error)
      assert.is_false(r.retry)
      assert.equal(0, r.sent)
    end)

    it("a protocol other than http(s): false", function()
      local session = core.http_session()
      local r = fetch(session, { method = "GET", url = "ftp://127.0.0.1:" .. support.closed_port() .. "/" })
      session:close()
      assert.equal("network", r.error)
      assert.is_false(r.retry)
    end)

    it("a body over max_body: false", function()
      local res = exchange({}, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" .. ("x"):rep(100),
        { max_body = 10 })
      assert.equal("network", res.error)
      assert.matches("larger than 10 bytes", res.message)
      assert.is_false(res.retry)
    end)
  end)
  describe("trust", function()
    -- curl_easy_reset brings back libcurl's built-in CA bundle and directory
    -- (Debian's: /etc/ssl/certs): with cafile or capath given, neither may
    -- be consulted.  Seen from outside: strace of a child that connects.
    local traceable = os.execute("strace -f -qq -e trace=none true >/dev/null 2>&1")
    local it_traced = (traceable == true or traceable == 0) and it or pending

    it_traced("trusts only the CAs given: the system's bundle and directory are never read", function()
      local server = assert(mock.start())
      local dir = ossl.tmpdir()
      finally(function() server:stop() ossl.remove(dir) end)
      -- a CA that did not issue the mock's certificate, as a bundle and as a hashed folder
      ossl.run("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=unrelated -days 2 -keyout "
        .. ossl.quote(dir .. "/ca.key") .. " -out " .. ossl.quote(dir .. "/ca.pem"))
      ossl.run("mkdir " .. ossl.quote(dir .. "/hashed") .. " && cp " .. ossl.quote(dir .. "/ca.pem") .. " "
        .. ossl.quote(dir .. "/hashed/") .. "$(openssl x509 -hash -noout -in " .. ossl.quote(dir .. "/ca.pem") .. ").0")
      local runtime = jit and "luajit" or "lua5.4"
      for _, option in ipairs{ "ca_pem", "cafile", "capath" } do
        local value = ({ ca_pem = ossl.read(dir .. "/ca.pem"), cafile = dir .. "/ca.pem", capath = dir .. "/hashed" })[option]
        ossl.write(dir .. "/child.lua", ("package.path, package.cpath = %q, %q\n"):format(package.path, package.cpath)
          .. ([[
local core = require("wechatpay.core")
local s = core.http_session{ %s = %q }
local id = s:submit{ method = "GET", url = %q }
local got
while not got do got = s:perform(0.5)[1] end
io.write(got.error or "answered", " ", got.message or "")
]]):format(option, value, server.base_url))
        -- (a sanitizer build's core.so needs its runtime loaded first)
        local output = ossl.run(require("support.nginx").sanitizer_preload() .. "strace -f -qq -e trace=file -o "
          .. ossl.quote(dir .. "/trace") .. " " .. runtime .. " " .. ossl.quote(dir .. "/child.lua"))
        assert.matches("^network .*certificate", output, nil, option)
        local trace = ossl.read(dir .. "/trace")
        assert.is_nil(trace:find("/etc/ssl/certs", 1, true), option .. " let curl read the system's CAs")
        assert.is_nil(trace:find("ca-certificates.crt", 1, true), option .. " let curl read the system's bundle")
      end
    end)
  end)

  describe("a memory error in perform", function()
    -- the host with fail_allocation_after: the DEV=1 run's own, else built here
    local function lua54_host(dir)
      local given = os.getenv("WECHATPAY_LUA")
      if given and given:find("lua5%.4%-host$") then return given end
      local host = dir .. "/lua5.4-host"
      ossl.run("cc -O1 -I/usr/include/lua5.4 -o " .. ossl.quote(host) .. " "
        .. ossl.quote(ossl.repo_root() .. "/scripts/lua_host.c") .. " -llua5.4")
      return host
    end

    it("loses no finished transfer: the next perform reports what the failed one did not", function()
      if jit then
        return pending("LuaJIT's 64-bit states take no other allocator; checked under Lua 5.4")
      end
      local dir = ossl.tmpdir()
      local host = lua54_host(dir)
      local out = ossl.run(("LUA_PATH=%s LUA_CPATH=%s timeout %d %s %s 40"):format(
        ossl.quote(package.path), ossl.quote(package.cpath), 120 * SLOW, ossl.quote(host),
        ossl.quote(ossl.repo_root() .. "/spec/support/perform_memory.lua")))
      ossl.remove(dir)
      local failed, reported_together, budgets = 0, 0, 0
      for budget, raised, at_once, a, b in out:gmatch("(%d+)\t(%a+)\t(%d+)\t(%d+)\t(%d+)") do
        budgets = budgets + 1
        assert.equal("1 1", a .. " " .. b, "budget " .. budget .. ": each transfer reported once")
        if raised == "yes" then failed = failed + 1 end
        if at_once == "2" then reported_together = reported_together + 1 end
      end
      assert.equal(41, budgets, out)
      -- the sweep went through the building of a list of two, and past it
      assert.is_true(failed >= 3, out)
      assert.is_true(reported_together >= 1, out)
    end)
  end)
end)
