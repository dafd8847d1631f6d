-- transport/ngx.lua's connection logic with scripted cosockets, outside
-- nginx: what real nginx cannot be made to do on demand (a pooled
-- connection that died while idle).  spec/nginx_spec.lua runs the rest in
-- a real nginx.
local ngx_transport = require("wechatpay.transport.ngx")

local OK_RESPONSE = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

-- A fake cosocket: reused (from the pool) or not, a send that fails or
-- not, then the bytes of a response, handed out by receiveany in pieces of
-- at most script.piece bytes (7 by default: lines and bodies arrive torn).
local function fake_socket(script, log)
  local stream = script.response or OK_RESPONSE
  local pos = 1
  return {
    settimeout = function() end,
    connect = function(_, host, port, opts)
      log[#log + 1] = ("connect %s:%d pool=%s"):format(host, port, opts.pool)
      return true
    end,
    getreusedtimes = function() return script.reused and 1 or 0 end,
    sslhandshake = function(_, _, name, verify)
      log[#log + 1] = ("handshake %s verify=%s"):format(name, tostring(verify))
      if script.handshake_raises then error("assertion failed!") end
      if script.handshake_error then return nil, script.handshake_error end
      return {}
    end,
    send = function(_, bytes)
      log[#log + 1] = "send"
      if script.send_fails then return nil, "closed" end
      script.sent = bytes
      return #bytes
    end,
    receiveany = function(_, max)
      if pos > #stream then return nil, script.read_error or "closed" end
      local piece = stream:sub(pos, pos + math.min(max, script.piece or 7) - 1)
      pos = pos + #piece
      script.read = pos - 1
      return piece
    end,
    setkeepalive = function()
      log[#log + 1] = "keepalive"
      if script.keepalive_fails then return nil, "unread data in buffer" end
      return true
    end,
    close = function() log[#log + 1] = "close" return true end,
  }
end

local function with_ngx(scripts, fn)
  local log, i = {}, 0
  local saved = rawget(_G, "ngx")
  rawset(_G, "ngx", {
    socket = { tcp = function() i = i + 1 return fake_socket(scripts[i] or {}, log) end },
    thread = { spawn = function(f, ...) f(...) return {} end },
  })
  package.loaded["ngx.semaphore"] = { new = function()
    return { post = function() end, wait = function() end, count = function() return 0 end }
  end }
  local ok, err = pcall(fn, log)
  rawset(_G, "ngx", saved)
  package.loaded["ngx.semaphore"] = nil
  if not ok then error(err, 0) end
  return log
end

local function call(transport, request)
  local res, fail
  transport:submit(request or { method = "POST", url = "https://api.example.test/v3/x", headers = { "A: b" }, body = "{}" },
    function(r, f) res, fail = r, f end)
  return res, fail
end

describe("the cosocket transport's connections", function()
  it("sends the request as signed, verifies TLS by name, and pools the connection", function()
    local scripts = { {} }
    local log = with_ngx(scripts, function()
      local res = call(ngx_transport.new{ resolve = { ["api.example.test:443"] = "10.0.0.1" } })
      assert.are.equal(200, res.status)
      assert.are.equal("ok", res.body)
    end)
    assert.are.same({ "connect 10.0.0.1:443 pool=wechatpay:https:api.example.test:443:10.0.0.1:verify",
      "handshake api.example.test verify=true", "send", "keepalive" }, log)
    assert.are.equal("POST /v3/x HTTP/1.1\r\nHost: api.example.test\r\nA: b\r\nContent-Length: 2\r\n\r\n{}",
      scripts[1].sent)
  end)

  it("replaces a pooled connection whose send fails, once, without a handshake on the pooled one", function()
    local log = with_ngx({ { reused = true, send_fails = true }, {} }, function()
      local res, fail = call(ngx_transport.new())
      assert.is_nil(fail)
      assert.are.equal(200, res.status)
    end)
    assert.are.same({ "connect api.example.test:443 pool=wechatpay:https:api.example.test:443:api.example.test:verify",
      "send", "close",
      "connect api.example.test:443 pool=wechatpay:https:api.example.test:443:api.example.test:verify",
      "handshake api.example.test verify=true", "send", "keepalive" }, log)
  end)

  it("does not resend when a fresh connection's send fails, nor after the request went out", function()
    with_ngx({ { send_fails = true } }, function()
      local _, fail = call(ngx_transport.new())
      assert.are.equal("network", fail.kind)
      assert.are.equal("idempotent", fail.retry)
    end)
    local log = with_ngx({ { reused = true, response = "" } }, function()
      local _, fail = call(ngx_transport.new())
      assert.are.equal("network", fail.kind)
      assert.are.equal("idempotent", fail.retry)   -- the server may have acted: the retry policy decides
      assert.is_true(fail.sent > 0)
    end)
    local sends = 0
    for _, line in ipairs(log) do if line == "send" then sends = sends + 1 end end
    assert.are.equal(1, sends)
  end)

  it("turns a raising handshake (Debian's lua-resty-core) into a failure naming the directives", function()
    with_ngx({ { handshake_raises = true } }, function()
      local _, fail = call(ngx_transport.new())
      assert.are.equal("network", fail.kind)
      assert.is_false(fail.retry)
      assert.matches("assertion failed!", fail.message, 1, true)
      assert.matches("lua_ssl_verify_depth", fail.message, 1, true)
    end)
  end)

  it("classes a handshake that failed before anything was sent as safe, a certificate refused as final", function()
    for _, case in ipairs{
      { "handshake failed", "safe" },
      { "closed", "safe" },
      { "connection reset by peer", "safe" },
      { "18: self-signed certificate", false },
      { "20: unable to get local issuer certificate", false },
      { "certificate host mismatch", false },
      { 'certificate does not match host "api.example.test"', false },
    } do
      with_ngx({ { handshake_error = case[1] } }, function()
        local _, fail = call(ngx_transport.new())
        assert.are.equal("network", fail.kind)
        assert.are.equal(case[2], fail.retry, case[1])
        assert.are.equal(0, fail.sent)
        assert.matches(case[1], fail.message, 1, true)
        if case[2] == false then assert.matches("lua_ssl_trusted_certificate", fail.message, 1, true) end
      end)
    end
  end)

  it("an interrupt in on_chunk closes the connection, fails the call as interrupted and is raised by step", function()
    local log = with_ngx({ {} }, function()
      local t = ngx_transport.new()
      local res, fail = call(t, { method = "GET", url = "https://api.example.test/v3/billdownload/file",
        on_chunk = function() error("interrupted!", 0) end })
      assert.is_nil(res)
      assert.are.equal("interrupted", fail.kind)
      assert.is_false(fail.retry)
      assert.are.equal("interrupted!", fail.raised)
      local ok, raised = pcall(t.step, t, 0)
      assert.is_false(ok)
      assert.are.equal("interrupted!", raised)
      assert.is_true(pcall(t.step, t, 0))   -- raised once
    end)
    assert.are.equal("close", log[#log])
  end)

  it("retries a body cut short only if none of it was handed on to on_chunk", function()
    -- one chunk, then the connection closes
    local cut = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    with_ngx({ { response = cut }, { response = cut }, { response = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" } },
      function()
        local t = ngx_transport.new()
        local res, fail = call(t)   -- read whole: nothing left the transport
        assert.is_nil(res)
        assert.are.equal("network", fail.kind)
        assert.are.equal("idempotent", fail.retry)
        local got = {}
        local download = { method = "GET", url = "https://api.example.test/v3/billdownload/file",
          on_chunk = function(bytes) got[#got + 1] = bytes return true end }
        res, fail = call(t, download)   -- "abc" went to on_chunk: a retry would repeat it
        assert.is_nil(res)
        assert.are.same({ "abc" }, got)
        assert.is_false(fail.retry)
        got = {}
        res, fail = call(t, download)   -- cut before any byte: safe to retry
        assert.is_nil(res)
        assert.are.same({}, got)
        assert.are.equal("idempotent", fail.retry)
      end)
  end)

  it("reads a body that runs to the close no further than one byte past max_body", function()
    local head = "HTTP/1.1 200 OK\r\n\r\n"
    local script = { response = head .. ("x"):rep(5000), piece = 100000 }
    with_ngx({ script }, function()
      local res, fail = call(ngx_transport.new{ max_body = 1000 })
      assert.is_nil(res)
      assert.matches("over max_body (1000 bytes)", fail.message, 1, true)
      assert.is_false(fail.retry)
    end)
    -- what the head's reads took beyond it counts; nothing more is asked for
    assert.is_true(script.read <= #head + 1001 + 4096, tostring(script.read))
  end)

  it("reads a response that arrives a byte at a time, and refuses what is not HTTP/1.1 framing", function()
    local chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Folded: a\r\n  b\r\n\r\n"
      .. "2;ext=1\r\nok\r\n3\r\nabc\r\n0\r\nTrailer: t\r\n\r\n"
    with_ngx({ { response = chunked, piece = 1 },
        { response = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok" },
        { response = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXY0\r\n\r\n" },
        { response = "HTTP/1.1 200 OK\r\nX-Long: " .. ("h"):rep(70000) .. "\r\n\r\n", piece = 4096 } },
      function()
        local t = ngx_transport.new()
        local res = assert(call(t))
        assert.are.equal("okabc", res.body)
        assert.are.equal("a b", res.headers["x-folded"])
        assert.are.equal("ok", assert(call(t)).body)   -- the same length twice is one length
        local _, fail = call(t)
        assert.matches("malformed chunk end", fail.message, 1, true)
        _, fail = call(t)
        assert.matches("over 65536 bytes", fail.message, 1, true)
        assert.is_false(fail.retry)
      end)
  end)

  it("never pools a connection with bytes past the answer, nor one nginx would not pool", function()
    local log = with_ngx({ { response = OK_RESPONSE .. "GARBAGE" } }, function()
      assert.are.equal("ok", assert(call(ngx_transport.new())).body)
    end)
    assert.are.equal("close", log[#log])
    log = with_ngx({ { keepalive_fails = true } }, function()
      assert.are.equal("ok", assert(call(ngx_transport.new())).body)
    end)
    assert.are.same({ "keepalive", "close" }, { log[#log - 1], log[#log] })
  end)

  it("closes a connection the server marks Connection: close, and an HTTP/1.0 one", function()
    local log = with_ngx({ { response = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n" },
        { response = "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n" } }, function()
      local t = ngx_transport.new()
      assert.are.equal(200, (call(t)).status)
      assert.are.equal(200, (call(t)).status)
    end)
    assert.are.equal("close", log[4])
    assert.are.equal("close", log[8])
  end)
end)
