-- The libcurl transport (core.http_session) at the C level: fork safety
-- first, then what it parses, refuses and reports.
--
-- Fork: a client that has made one call keeps its TLS connection pooled;
-- after fork() parent and child would both write on that one connection and
-- read each other's answers (a coupon granted to the wrong user, silently).
-- nginx forks its workers after init_by_lua, so this is the ordinary case
-- there, not a curiosity.  The child must start afresh and close nothing the
-- parent still uses.
--
-- The other specs talk plain HTTP to a loopback socket served from this very
-- process (http is allowed at the C level), so that a reply can carry any
-- bytes and the request can be read byte for byte.
local core = require("wechatpay.core")
local mock = require("wechatpay.mock")
local socket = require("socket")
local ossl = require("support.openssl")
local support = require("support.async")

local SLOW = os.getenv("WECHATPAY_VALGRIND") and 10 or 1

-- fork/pipe/_exit/wait from the test-only helper, compiled for whichever
-- interpreter runs the spec (see spec/random_spec.lua).
local function process_api(dir)
  local version = _VERSION:match("%d+%.%d+")
  local incdir = os.getenv("LUA_INCDIR") or (jit and "/usr/include/luajit-2.1" or ("/usr/include/lua" .. version))
  local so = dir .. "/fork_helper.so"
  ossl.run("cc -shared -fPIC -O1 -I" .. ossl.quote(incdir) .. " -o " .. ossl.quote(so) .. " "
    .. ossl.quote(ossl.repo_root() .. "/spec/fixtures/fork_helper.c"))
  return assert(package.loadlib(so, "luaopen_fork_helper"))()
end

describe("after fork()", function()
  local dir, proc, server, users

  setup(function()
    dir = ossl.tmpdir()
    proc = process_api(dir)
    server = assert(mock.start{ latency = 0.05 * SLOW })
    users = support.users(server)
  end)
  teardown(function()
    if server then server:stop() end
    ossl.remove(dir)
  end)
  before_each(function() server:reset() end)

  -- Forks; the child sends fn()'s result through a pipe and _exits at once
  -- (never back into busted).  The parent goes on at once: collect() waits.
  local function spawn(fn)
    local r, w = proc.pipe()
    local pid = proc.fork()
    if pid == 0 then
      proc.close(r)
      local ok, value = pcall(fn)
      pcall(proc.write, w, ok and tostring(value) or ("child error: " .. tostring(value)))
      proc._exit(0)
    end
    proc.close(w)
    return { pid = pid, fd = r }
  end

  local function collect(child)
    local parts = {}
    while true do
      local s = proc.read(child.fd, 4096)
      if not s or s == "" then break end
      parts[#parts + 1] = s
    end
    proc.close(child.fd)
    assert.equal(0, proc.wait(child.pid))
    return table.concat(parts)
  end

  -- What the mock recorded for a coupon id: "openid out_request_no".
  local function granted_to(coupon_id)
    local record = coupon_id and server:coupon(coupon_id)
    return record and (record.openid .. " " .. record.out_request_no) or "no such coupon"
  end

  it("parent and child each get the coupon they asked for (20 trials)", function()
    local problems, trials = {}, 20
    for trial = 1, trials do
      local client = server:client{ retry = false, timeout = 5 * SLOW }
      -- one call first, so the client holds a pooled connection when it forks
      assert(support.grant_async(client, users[1], support.request_no("PRE")):wait())
      local parent_user, child_user = users[2], users[3]
      local parent_no, child_no = support.request_no("PARENT"), support.request_no("CHILD")
      local child = spawn(function()
        local res, err = support.grant_async(client, child_user, child_no):wait()
        if not res then return "error " .. tostring(err) end
        return "coupon " .. tostring(res:json().coupon_id)
      end)
      local res, err = support.grant_async(client, parent_user, parent_no):wait()
      local said = collect(child)
      client:close()

      local parent_got = res and granted_to(res:json().coupon_id) or ("error " .. tostring(err))
      if parent_got ~= parent_user.openid .. " " .. parent_no then
        problems[#problems + 1] = ("trial %d: parent asked for %s, got %s"):format(trial, parent_no, parent_got)
      end
      local child_coupon = said:match("^coupon (%S+)$")
      local child_got = child_coupon and granted_to(child_coupon) or said
      if child_got ~= child_user.openid .. " " .. child_no then
        problems[#problems + 1] = ("trial %d: child asked for %s, got %s"):format(trial, child_no, child_got)
      end
      if #problems >= 4 then break end   -- broken: say so without waiting for 20
    end
    assert.same({}, problems)
    local stats = server:stats()
    assert.equal(3 * trials, stats.grants)
    assert.equal(3 * trials, stats.requests)
    -- each trial: the parent's one pooled connection, and the child's own
    assert.equal(2 * trials, stats.connections)
  end)

  it("a child that closes the client leaves the parent's connection alone", function()
    local client = server:client{ retry = false, timeout = 5 * SLOW }
    assert(support.grant_async(client, users[1], support.request_no("PRE")):wait())
    local child = spawn(function()
      client:close()
      return "closed"
    end)
    assert.equal("closed", collect(child))
    assert(support.grant_async(client, users[2], support.request_no("AFTER")):wait())
    client:close()
    -- the parent reused its connection: the child sent no TLS close_notify on it
    assert.equal(1, server:stats().connections)
  end)

  it("a child's garbage collector leaves the parent's connection alone", function()
    local holder = { session = core.http_session{ cafile = server.cafile } }
    local request = { method = "GET", url = server.base_url, timeout = 5 * SLOW }
    local function fetch(session)
      local id = session:submit(request)
      for _ = 1, 100 * SLOW do
        local done = session:perform(0.1)
        if done[1] then
          assert.equal(id, done[1].id)
          return done[1]
        end
      end
      error("no answer")
    end
    assert.equal(200, fetch(holder.session).status)
    local child = spawn(function()
      holder.session = nil
      collectgarbage()
      collectgarbage()
      return "collected"
    end)
    assert.equal("collected", collect(child))
    assert.equal(200, fetch(holder.session).status)
    holder.session:close()
    assert.equal(1, server:stats().connections)
  end)

  it("a transfer in flight at the fork fails in the child and finishes in the parent", function()
    local listener = assert(socket.bind("127.0.0.1", 0))
    listener:settimeout(5 * SLOW)
    local _, port = listener:getsockname()
    local session = core.http_session()
    local id = session:submit{ method = "GET", url = "http://127.0.0.1:" .. port .. "/slow", timeout = 5 * SLOW }
    session:perform(0)
    local conn = assert(listener:accept())
    conn:settimeout(5 * SLOW)
    local request = {}
    repeat   -- the whole request has arrived: it is in flight
      session:perform(0)
      local line = assert(conn:receive("*l"))
      request[#request + 1] = line
    until line == ""
    local child = spawn(function()
      local found
      for _ = 1, 20 do   -- an unfixed child would wait here for the parent's answer
        for _, r in ipairs(session:perform(0.05)) do
          if r.id == id then found = r end
        end
        if found then break end
      end
      if not found then return "nothing reported" end
      return table.concat({ tostring(found.error), tostring(found.retry),
                            tostring(found.message), tostring(session:pending()) }, "|")
    end)
    local said = collect(child)
    local error_kind, retry, message, pending = said:match("^([^|]*)|([^|]*)|([^|]*)|([^|]*)$")
    assert.equal("network", error_kind, said)
    assert.equal("idempotent", retry, said)
    assert.matches("fork", message)
    assert.equal("0", pending)

    -- the parent's transfer was untouched by the child and completes
    assert(conn:send("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nparent"))
    local got
    for _ = 1, 100 * SLOW do
      got = session:perform(0.05)[1]
      if got then break end
    end
    assert.equal(id, got.id)
    assert.equal(200, got.status)
    assert.equal("parent", got.body)
    conn:close()
    listener:close()
    session:close()
  end)

  it("a child can use the session at once, and its close is idempotent", function()
    local session = core.http_session{ cafile = server.cafile }
    local function fetch()
      session:submit{ method = "GET", url = server.base_url, timeout = 5 * SLOW }
      for _ = 1, 100 * SLOW do
        local r = session:perform(0.1)[1]
        if r then return r end
      end
    end
    assert.equal(200, fetch().status)
    local child = spawn(function()
      local r = fetch()
      local before = session:pending()
      session:close()
      session:close()
      return tostring(r and r.status) .. " " .. before .. " " .. tostring(session)
    end)
    assert.equal("200 0 wechatpay.http_session (closed)", collect(child))
    assert.equal(200, fetch().status)
    session:close()
    assert.equal(2, server:stats().connections)
  end)
end)

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
end)
