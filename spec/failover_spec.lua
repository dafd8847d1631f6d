-- base_url as a list: the backup hosts, against the mock WeChat Pay over
-- real HTTPS.  The mock answers under two names (127.0.0.1 and localhost,
-- both on its certificate), so one mock is a primary and its backup, and
-- its faults make the primary fail; a dead primary is a closed port, or a
-- listening socket that never answers the TLS handshake (its accept queue
-- counts the connections the client made to it).
local socket = require("socket")
local core = require("wechatpay.core")
local mock = require("wechatpay.mock")
local merchant = require("support.merchant")
local wechatpay = require("wechatpay")

local now = core.monotonic

-- A port nothing listens on: connecting is refused.
local function closed_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- A port that accepts connections (the kernel completes them) and never
-- answers: a TLS handshake there times out.  :connections() counts and
-- drops the ones made since the last count.
local function silent_host()
  local listener = assert(socket.bind("127.0.0.1", 0, 64))
  local _, port = listener:getsockname()
  local held = {}
  return {
    url = "https://127.0.0.1:" .. port .. "/",
    connections = function()
      listener:settimeout(0.05)
      local n = 0
      while true do
        local conn = listener:accept()
        if not conn then break end
        n = n + 1
        held[#held + 1] = conn
      end
      return n
    end,
    close = function()
      for _, conn in ipairs(held) do conn:close() end
      listener:close()
    end,
  }
end

-- A child process forwarding 127.0.0.1:port to 127.0.0.1:target, byte for
-- byte both ways (the TLS is the mock's); stop() ends it and returns how
-- many connections it took.
local function forward(port, target)
  local script = ([[
    local socket = require("socket")
    local listener = assert(socket.bind("127.0.0.1", %d))
    listener:settimeout(0)
    io.write("listening\n")
    io.stdout:flush()
    local peer, all, accepted = {}, { listener }, 0
    local function drop(s)
      for i = #all, 1, -1 do if all[i] == s or all[i] == peer[s] then table.remove(all, i) end end
      s:close()
      if peer[s] then peer[s]:close() end
    end
    while true do
      local readable = socket.select(all, nil, 0.1)
      for _, s in ipairs(readable) do
        if s == listener then
          local client = listener:accept()
          if client then
            accepted = accepted + 1
            io.stderr:write(accepted, "\n")
            local upstream = assert(socket.connect("127.0.0.1", %d))
            client:settimeout(0)
            upstream:settimeout(0)
            peer[client], peer[upstream] = upstream, client
            all[#all + 1] = client
            all[#all + 1] = upstream
          end
        elseif peer[s] then
          local data, err, partial = s:receive(65536)
          data = data or partial
          if data and #data > 0 then
            local out = peer[s]
            out:settimeout(5)
            out:send(data)
            out:settimeout(0)
          end
          if err == "closed" then drop(s) end
        end
      end
    end
  ]]):format(port, target)
  local log = os.tmpname()
  local p = assert(io.popen("echo $$; exec " .. require("support.process").lua_command(script) .. " 2>" .. log))
  local pid = assert(tonumber(p:read("*l")))
  assert(p:read("*l") == "listening", "the forwarder did not start")
  local stopped
  return {
    stop = function()
      if not stopped then
        os.execute("kill " .. pid)
        p:close()
        local f = io.open(log)
        stopped = 0
        for line in f:lines() do stopped = tonumber(line) or stopped end
        f:close()
        os.remove(log)
      end
      return stopped
    end,
  }
end

describe("base_url with backups", function()
  local server, primary, backup, counter

  setup(function()
    server = assert(mock.start{ rate_limit = false })
    primary = server.base_url                                  -- https://127.0.0.1:port/
    backup = "https://localhost:" .. server.port .. "/"
    counter = 0
  end)
  teardown(function() if server then server:stop() end end)
  before_each(function() server:reset() end)

  local function client(opts, records)
    opts = opts or {}
    if records then opts.on_call = function(record) records[#records + 1] = record end end
    return server:client(opts)
  end

  local function a_user()
    local ids = {}
    for openid in pairs(server.users) do ids[#ids + 1] = openid end
    table.sort(ids)
    return ids[1], server.users[ids[1]]
  end

  local function grant(c, opts)
    counter = counter + 1
    local openid, user = a_user()
    local call = { openid = openid, json = {
      stock_id = "9856000", out_request_no = ("failover%d%d"):format(os.time(), counter),
      user_name = assert(c:encrypt(user.name)), id_card_number = assert(c:encrypt(user.id_card)),
      appid = "wx233544546545989", card_type = "ID_CARD", amount = 100,
    } }
    for k, v in pairs(opts or {}) do call[k] = v end
    return c.v3.multiuse.users._openid_.coupons:post(call)
  end

  -- The Host header the mock received: which of its names answered.
  local function answered_by(res)
    return res:json().headers.host
  end

  it("keeps a primary whose pooled connection closed unanswered: it was reached, it is not down", function()
    local c = client({ base_url = { primary, backup }, timeout = 5 })
    assert.equal("127.0.0.1:" .. server.port, answered_by(assert(c.v3.mock.echo.warm:get())))
    server:fault("reset", { path = "no_content" })   -- acts on it, then closes without a byte
    assert.equal(204, assert(c:request("GET", "v3/mock/no_content")).status)
    for _ = 1, 3 do
      assert.equal("127.0.0.1:" .. server.port, answered_by(assert(c.v3.mock.echo.after:get())))
    end
    c:close()
  end)

  describe("when the primary cannot be reached", function()
    it("sends a POST grant to the backup, signed anew, and grants it once", function()
      local records = {}
      local c = client({ base_url = { "https://127.0.0.1:" .. closed_port() .. "/", backup }, timeout = 5 }, records)
      local res, err = grant(c)
      assert.is_truthy(res, tostring(err))
      assert.equal(200, res.status)
      assert.equal(1, server:stats().grants)
      assert.equal(1, #records)
      assert.equal("localhost:" .. server.port, records[1].host)
      assert.equal(1, records[1].failovers)
      assert.equal(2, records[1].attempts)
    end)

    it("fails over with retry = false too: nothing was sent, and the whole call keeps to its timeout", function()
      local c = client{ base_url = { "https://127.0.0.1:" .. closed_port() .. "/", backup }, timeout = 2, retry = false }
      local started = now()
      local res, err = c.v3.mock.echo:get()
      assert.is_truthy(res, tostring(err))
      assert.equal("localhost:" .. server.port, answered_by(res))
      assert.is_true(now() - started < 2)
    end)

    it("fails with the last host's error when every host is down, naming how many were tried", function()
      local records = {}
      local c = client({ base_url = { "https://127.0.0.1:" .. closed_port() .. "/",
        "https://localhost:" .. closed_port() .. "/" }, retry = false, timeout = 2 }, records)
      local res, err = c.v3.mock.echo:get()
      assert.is_nil(res)
      assert.equal("network", err.kind)
      assert.equal(2, err.attempts)
      assert.equal(1, err.failovers)
      assert.equal(1, #records)
      assert.equal("network", records[1].error)
      assert.equal(2, records[1].attempts)
    end)

    it("remembers the dead host: the next calls go to the backup without connecting to it, "
      .. "until the cooldown ends and one call probes it", function()
      local silent = silent_host()
      finally(silent.close)
      local records = {}
      local c = client({ base_url = { silent.url, backup }, connect_timeout = 0.3, timeout = 3,
        failover_cooldown = 1.5 }, records)
      local started = now()
      local res, err = c.v3.mock.echo:get()
      assert.is_truthy(res, tostring(err))
      assert.is_true(now() - started < 2, "a handshake that never ends costs one connect_timeout")
      assert.equal(1, records[1].failovers)
      assert.equal(1, silent.connections())

      for i = 2, 4 do
        res, err = c.v3.mock.echo:get()
        assert.is_truthy(res, tostring(err))
        assert.equal("localhost:" .. server.port, answered_by(res))
        assert.equal(0, records[i].failovers)
        assert.equal(1, records[i].attempts)
      end
      assert.equal(0, silent.connections(), "a remembered host is not connected to")

      socket.sleep(1.6)
      -- three calls at once after the cooldown: one probes, two keep to the backup
      local list = {}
      for i = 1, 3 do list[i] = c.v3.mock.echo:getAsync() end
      local all, aerr = wechatpay.all(list):wait()
      assert.is_truthy(all, tostring(aerr))
      assert.equal(1, silent.connections(), "exactly one call probes the primary")
      local probes = 0
      for i = 5, 7 do probes = probes + records[i].failovers end
      assert.equal(1, probes)
      -- the probe failed: remembered again
      assert.is_truthy(c.v3.mock.echo:get())
      assert.equal(0, silent.connections())
    end)

    it("keeps to the primary while it answers, whatever the backup's state", function()
      local records = {}
      -- the backup is the dead one here: the primary, remembered as down
      -- by no one, is always first
      local c = client({ base_url = { primary, "https://localhost:" .. closed_port() .. "/" }, timeout = 2 }, records)
      for _ = 1, 3 do assert.is_truthy(c.v3.mock.echo:get()) end
      for i = 1, 3 do
        assert.equal("127.0.0.1:" .. server.port, records[i].host)
        assert.equal(0, records[i].failovers)
      end
    end)
    it("goes back to the primary once it answers again: the probe after the cooldown is answered", function()
      -- the primary is a port that refuses, then a child process forwarding
      -- it to the mock (whose certificate names 127.0.0.1, whatever the port)
      local port = closed_port()
      local records = {}
      local c = client({ base_url = { "https://127.0.0.1:" .. port .. "/", backup }, connect_timeout = 0.5,
        timeout = 3, failover_cooldown = 1 }, records)
      assert.is_truthy(c.v3.mock.echo.down:get())
      assert.equal(1, records[1].failovers)
      local forwarder = forward(port, server.port)
      finally(forwarder.stop)
      -- within the cooldown: the backup, and the primary not even connected to
      assert.equal("localhost:" .. server.port, answered_by(assert(c.v3.mock.echo.cooling:get())))
      assert.equal(0, records[2].failovers)
      socket.sleep(1.2)
      -- the probe: answered by the primary, no failover; then the primary again
      for i = 3, 4 do
        assert.equal("127.0.0.1:" .. port, answered_by(assert(c.v3.mock.echo.back:get())))
        assert.equal(0, records[i].failovers)
      end
      assert.equal(1, forwarder.stop(), "one connection: the probe's, kept for the call after it; none in the cooldown")
    end)
  end)

  describe("when the primary answers 5xx or hangs", function()
    it("sends a GET to the backup after a 5xx", function()
      local records = {}
      local c = client({ base_url = { primary, backup }, timeout = 2 }, records)
      server:fault("status", { status = 503 })
      local res, err = c.v3.mock.echo:get()
      assert.is_truthy(res, tostring(err))
      assert.equal("localhost:" .. server.port, answered_by(res))
      assert.equal(1, records[1].failovers)
      -- a 5xx is an answer: the primary is not remembered as down
      assert.is_truthy(c.v3.mock.echo:get())
      assert.equal("127.0.0.1:" .. server.port, records[2].host)
    end)

    it("sends a GET to the backup after a timeout, within the call's deadline", function()
      local records = {}
      local c = client({ base_url = { primary, backup }, timeout = 0.5 }, records)
      server:fault("delay", { seconds = 3 })
      local started = now()
      local res, err = c.v3.mock.echo:get()
      local elapsed = now() - started
      assert.is_truthy(res, tostring(err))
      assert.equal("localhost:" .. server.port, answered_by(res))
      assert.is_true(elapsed >= 0.5 and elapsed < 1.4, "took " .. elapsed)
      assert.equal(1, records[1].failovers)
    end)

    it("gives the backup only what is left of the deadline", function()
      local c = client{ base_url = { primary, backup }, timeout = 1, retry = { deadline = 1.5 } }
      server:fault("delay", { seconds = 4, count = 2 })
      local started = now()
      local res, err = c.v3.mock.echo:get()
      local elapsed = now() - started
      assert.is_nil(res)
      assert.equal("timeout", err.kind)
      assert.equal(2, err.attempts)
      assert.equal(1, err.failovers)
      assert.is_true(elapsed >= 1.4 and elapsed < 2.2, "took " .. elapsed)
    end)

    it("does not send a POST grant again after a 5xx or a timeout, and says why", function()
      local records = {}
      local c = client({ base_url = { primary, backup }, timeout = 0.5 }, records)
      server:fault("status", { status = 500, path = "/coupons$" })
      local res, err = grant(c)
      assert.is_nil(res)
      assert.equal(500, err.status)
      assert.matches("not sent to the next base_url", err.message, 1, true)
      assert.matches("retry = { idempotent = true }", err.message, 1, true)
      assert.equal(0, records[1].failovers)

      server:fault("delay", { seconds = 2, then_process = true, path = "/coupons$" })
      res, err = grant(c)
      assert.is_nil(res)
      assert.equal("timeout", err.kind)
      assert.matches("not sent to the next base_url", tostring(err), 1, true)
      assert.equal(1, err.attempts)
      assert.equal(0, records[2].failovers)
    end)

    it("sends a POST grant again when the retry policy judges it idempotent (a merchant number)", function()
      local records = {}
      local c = client({ base_url = { primary, backup }, timeout = 2, retry = { idempotent = true } }, records)
      server:fault("status", { status = 500, path = "/coupons$" })
      local res, err = grant(c)
      assert.is_truthy(res, tostring(err))
      assert.equal(1, records[1].failovers)
      assert.equal("localhost:" .. server.port, records[1].host)
      assert.equal(1, server:stats().grants)
    end)

    it("does not send a POST without a merchant number again, even with retry = { idempotent = true }", function()
      local c = client{ base_url = { primary, backup }, timeout = 0.5, retry = { idempotent = true } }
      server:fault("delay", { seconds = 2, then_process = true })
      local res, err = c.v3.mock.echo:post{ json = { note = "no merchant number" } }
      assert.is_nil(res)
      assert.equal("timeout", err.kind)
      assert.matches("not sent to the next base_url", err.message, 1, true)
      assert.equal(1, err.attempts)
    end)
  end)

  describe("configuration", function()
    local function refused(opts, message)
      local ok, err = pcall(wechatpay.new, merchant.options(opts))
      assert.is_false(ok)
      assert.matches(message, tostring(err), 1, true)
    end

    -- the rules alone, on a transport that answers from a script
    local function scripted(script, extra)
      local transport = merchant.recording_transport(function(request)
        local step = table.remove(script, 1)
        if type(step) == "function" then return step(request) end
        if step == "answer" then return { status = 404, headers = {}, body = '{"code":"NOT_FOUND","message":"x"}' } end
        return nil, step
      end)
      local opts = { transport = transport, base_url = { "https://a.test/", "https://b.test/" } }
      for k, v in pairs(extra or {}) do opts[k] = v end
      return wechatpay.new(merchant.options(opts)), transport
    end
    local function hosts_of(transport)
      local list = {}
      for i, request in ipairs(transport.requests) do list[i] = request.url:match("^https://(%a)%.test/") end
      return table.concat(list, " ")
    end
    local REFUSED = { kind = "network", message = "refused", sent = 0, retry = "safe" }
    local HUNG = { kind = "timeout", message = "timed out", sent = 120, retry = "idempotent" }

    it("a probe that times out after sending leaves the host down for another cooldown", function()
      local c, transport = scripted({ REFUSED, "answer", HUNG, "answer", "answer" }, { failover_cooldown = 0.2 })
      c.v3.mock.echo:get()           -- a refused: b answers
      socket.sleep(0.25)
      c.v3.mock.echo:get()           -- the probe of a hangs: b answers
      c.v3.mock.echo:get()           -- a is still down: straight to b
      assert.equal("a b a b b", hosts_of(transport))
    end)

    it("a call that may move after a timeout gives each host its share of the deadline", function()
      local c, transport = scripted({ "answer", "answer" })   -- timeout and deadline: 30 s each
      c.v3.mock.echo:get()
      assert.equal(15, math.floor(transport.requests[1].timeout + 0.5))
      -- a POST that cannot be sent again keeps the whole timeout on the one host it may reach
      c.v3.mock.echo:post{ json = { a = 1 } }
      assert.equal(30, math.floor(transport.requests[2].timeout + 0.5))
    end)

    it("with three hosts, each still to try gets its share: a hanging one never takes the last one's", function()
      local c, transport = scripted({ HUNG, HUNG, "answer" }, { base_url = { "https://a.test/", "https://b.test/",
        "https://c.test/" }, timeout = 0.6, retry = false })
      c.v3.mock.echo:get()
      assert.equal("a b c", hosts_of(transport))
      assert.is_true(math.abs(transport.requests[1].timeout - 0.2) < 0.05, tostring(transport.requests[1].timeout))
      assert.is_true(math.abs(transport.requests[2].timeout - 0.3) < 0.05, tostring(transport.requests[2].timeout))
    end)

    it("a timeout too short to share is not cut under 1 ms: the call fails, it does not raise", function()
      local c, transport = scripted({ HUNG, HUNG }, { timeout = 0.0015, retry = false })
      local res, err = c.v3.mock.echo:get()
      assert.is_nil(res)
      assert.equal("timeout", err.kind)
      for _, request in ipairs(transport.requests) do assert.is_true(request.timeout >= 0.001) end
    end)

    it("a retry ends inside the deadline, not only starts inside it", function()
      local c, transport = scripted({ function()
        socket.sleep(0.5)
        return { status = 500, headers = {}, body = '{"code":"SYSTEM_ERROR","message":"x"}' }
      end, "answer" }, { base_url = "https://a.test/", timeout = 2,
        retry = { idempotent = true, deadline = 2, backoff = 0.01 } })
      c.v3.mock.echo:get()
      assert.equal(2, #transport.requests)
      assert.is_true(transport.requests[2].timeout <= 1.5, "the retry was given " .. transport.requests[2].timeout)
    end)

    it("takes a list of distinct https URLs, at most " .. 4, function()
      refused({ base_url = { "https://a.test/", "http://b.test/" } }, "base_url[2] must use https, not http")
      refused({ base_url = { "https://a.test/", "https://A.test:443/" } }, "base_url[2] repeats base_url[1]")
      refused({ base_url = {} }, "holds 1 to 4 URLs")
      refused({ base_url = { "https://a.test/", "https://b.test/", "https://c.test/", "https://d.test/",
        "https://e.test/" } }, "holds 1 to 4 URLs")
      refused({ base_url = { "https://a.test/", nil, "https://c.test/" } }, "base_url")
      refused({ base_url = { primary = "https://a.test/" } }, "a list of URLs")
      refused({ base_url = { "https://a.test/", 443 } }, "base_url[2] must be a string")
      refused({ base_url = { "https://a.test/x" } }, "base_url[1] must be https://host[:port]/ without a path")
      refused({ failover_cooldown = -1 }, "failover_cooldown must be a finite number of seconds")
      refused({ failover_cooldown = 0 / 0 }, "failover_cooldown")
    end)

    it("reads base_url as the primary and base_urls as a copy of the list", function()
      local c = wechatpay.new(merchant.options{ base_url = { "https://api.mch.weixin.qq.com/",
        "https://api2.mch.weixin.qq.com/" } })
      assert.equal("https://api.mch.weixin.qq.com", c.base_url)
      local list = c.base_urls
      assert.same({ "https://api.mch.weixin.qq.com", "https://api2.mch.weixin.qq.com" }, list)
      list[1] = "https://evil.test"
      assert.equal("https://api.mch.weixin.qq.com", c.base_urls[1])
      assert.matches("https://api.mch.weixin.qq.com then https://api2.mch.weixin.qq.com", tostring(c), 1, true)
      local single = wechatpay.new(merchant.options{ base_url = "https://a.test:8443/" })
      assert.equal("https://a.test:8443", single.base_url)
      assert.same({ "https://a.test:8443" }, single.base_urls)
    end)
  end)
end)
