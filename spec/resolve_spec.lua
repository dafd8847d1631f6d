-- Options the nginx work added that the curl transport honours too: resolve
-- (a name pinned to an address), the CA bundle read once at new(), the
-- transport names, the shared-dict rate limit outside nginx, the limiter's
-- reservations, and jitter that does not come from math.random.
local wechatpay = require("wechatpay")
local mock = require("wechatpay.mock")
local ratelimit = require("wechatpay.ratelimit")
local ossl = require("support.openssl")

describe("resolve and the CA bundle, on the curl transport", function()
  local server

  setup(function() server = assert(mock.start{ rate_limit = false }) end)
  teardown(function() if server then server:stop() end end)

  it("reaches a name pinned with resolve, verifying the certificate's DNS name", function()
    local client = server:client{
      base_url = "https://wechatpay-mock.test:" .. server.port .. "/",
      resolve = { ["wechatpay-mock.test:" .. server.port] = "127.0.0.1" },
      timeout = 5, retry = false,
    }
    -- the mock's certificate names localhost and 127.0.0.1, not this name
    local res, err = client.v3.mock.echo:get()
    assert.is_nil(res)
    assert.are.equal("network", err.kind)
    client = server:client{
      base_url = "https://localhost:" .. server.port .. "/",
      resolve = { ["localhost:" .. server.port] = "127.0.0.1" },
      timeout = 5,
    }
    res, err = client.v3.mock.echo:get()
    assert.is_truthy(res, tostring(err))
    assert.are.equal(200, res.status)
  end)

  it("reads cafile once, at new(): the file may be gone by the first call", function()
    local dir = ossl.tmpdir()
    local copy = ossl.write(dir .. "/ca.pem", ossl.read(server.cafile))
    local client = server:client{ cafile = copy, timeout = 5 }
    os.remove(copy)
    local res, err = client.v3.mock.echo:get()
    assert.is_truthy(res, tostring(err))
  end)

  it("refuses resolve entries that are not host:port -> address", function()
    for _, bad in ipairs{
      { ["localhost"] = "127.0.0.1" }, { ["localhost:0"] = "127.0.0.1" }, { ["localhost:443"] = "not an address" },
      { ["localhost:443"] = 1 }, "localhost:443:127.0.0.1",
    } do
      assert.has_error(function() server:client{ resolve = bad } end)
    end
  end)

  it("takes transport = \"auto\" and \"curl\" outside nginx, refuses \"ngx\" there and unknown names", function()
    assert.is_truthy(server:client{ transport = "auto" }.v3.mock.echo:get())
    assert.is_truthy(server:client{ transport = "curl" }.v3.mock.echo:get())
    local ok, err = pcall(server.client, server, { transport = "ngx" })
    assert.is_false(ok)
    assert.matches("needs nginx", err, 1, true)
    assert.has_error(function() server:client{ transport = "cosocket" } end)
  end)

  it("accepts rate_limit.shared_dict outside nginx, as a limit of this process", function()
    local client = server:client{ rate_limit = { calls = 600, per = 60, shared_dict = "wechatpay" } }
    assert.is_truthy(client.v3.mock.echo:get())
    assert.has_error(function() server:client{ rate_limit = { calls = 1, shared_dict = "no spaces allowed" } } end)
  end)
end)

describe("client:set_timeout", function()
  it("sets the timeout of later calls in milliseconds; nil restores; a call's own timeout wins", function()
    local server = assert(mock.start{ rate_limit = false })
    finally(function() server:stop() end)
    local client = server:client{ timeout = 5, retry = false }
    client:set_timeout(100)
    server:fault("delay", { seconds = 0.5, then_process = true })
    local started = require("wechatpay.core").monotonic()
    local res, err = client.v3.mock.echo:get()
    assert.is_nil(res)
    assert.are.equal("timeout", err.kind)
    assert.is_true(require("wechatpay.core").monotonic() - started < 0.45)
    server:fault("delay", { seconds = 0.3, then_process = true })
    assert.is_truthy(client.v3.mock.echo:get{ timeout = 2 })
    client:set_timeout(nil)
    server:fault("delay", { seconds = 0.3, then_process = true })
    assert.is_truthy(client.v3.mock.echo:get())
    assert.has_error(function() client:set_timeout(0) end)
    assert.has_error(function() client:set_timeout(0 / 0) end)
  end)
end)

describe("ratelimit", function()
  it("reserves: a call told to wait owns its slot, and the next waits one interval more", function()
    local limiter = ratelimit.new({ calls = 10, per = 1 }, "1900000001")
    local t = limiter.updated
    assert.are.equal(0, limiter:take(t))
    assert.is_near(0.1, limiter:take(t), 1e-9)
    assert.is_near(0.2, limiter:take(t), 1e-9)
    -- 0.3 s later the two reserved slots are used and one more is free
    assert.is_near(0, limiter:take(t + 0.3), 1e-9)
  end)

  it("shared across workers: the schedule outlives a backlog of reservations, however long", function()
    -- an ngx.shared.DICT whose entries expire by the clock the limiter is given
    local now, data = 1000, {}
    local dict = {
      get = function(_, k) local e = data[k]; if e and (not e.until_ or e.until_ > now) then return e.v end end,
      set = function(_, k, v, ttl) data[k] = { v = v, until_ = ttl and ttl > 0 and now + ttl or nil }; return true end,
      add = function(self, k, v, ttl) if self:get(k) ~= nil then return false, "exists" end return self:set(k, v, ttl) end,
      delete = function(_, k) data[k] = nil end,
    }
    local saved = rawget(_G, "ngx")
    _G.ngx = { shared = { wechatpay = dict }, get_phase = function() return "timer" end }
    local ok, limiter = pcall(ratelimit.new, { calls = 1000, per = 60, shared_dict = "wechatpay" }, "1900000001")
    _G.ngx = saved
    assert(ok, limiter)
    -- 3000 calls at once: the last waits 180 s
    local wait
    for _ = 1, 3000 do wait = limiter:take(now) end
    assert.is_near(179.94, wait, 0.01)
    -- 130 s on, no call in between: the backlog still runs to 180 s, so a new call waits for its end
    now = now + 130
    assert.is_near(50, limiter:take(now), 0.01)
  end)

  it("lets a burst through at once, then spaces the rest", function()
    local limiter = ratelimit.new({ calls = 10, per = 1, burst = 3 }, "1900000001")
    local t = limiter.updated
    for _ = 1, 3 do assert.are.equal(0, limiter:take(t)) end
    assert.is_near(0.1, limiter:take(t), 1e-9)
  end)
end)

describe("errors in nginx handlers", function()
  it("concatenate as tostring() prints them", function()
    local err = wechatpay.errors.new("network", "refused\nforged line")
    assert.are.equal("grant failed: " .. tostring(err), "grant failed: " .. err)
    assert.are.equal(tostring(err) .. "!", err .. "!")
    assert.is_nil(("x" .. err):find("\n", 1, true))
  end)
end)

describe("retry jitter", function()
  it("does not come from math.random (seeded alike in every nginx worker)", function()
    local server = assert(mock.start{ rate_limit = false })
    local client = server:client{ timeout = 5, retry = { idempotent = true, attempts = 3, backoff = 0.01 } }
    server:fault("status", { status = 503, count = 2, path = "/echo/" })
    local real = math.random
    local used = false
    math.random = function(...) used = true return real(...) end   -- luacheck: ignore
    local ok, res, err = pcall(function() return client.v3.mock.echo.j:get() end)
    math.random = real   -- luacheck: ignore
    local requests = server:stats().requests
    server:stop()
    assert(ok, res)
    assert.is_truthy(res, tostring(err))
    assert.equal(3, requests)   -- two retries, each after a jittered wait
    assert.is_false(used, "a retry's wait was drawn with math.random")
  end)
end)
