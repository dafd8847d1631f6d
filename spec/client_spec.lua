-- The v3 client end to end against the mock WeChat Pay over real HTTPS:
-- every call style, what is sent and signed, verification of every
-- response, and each fault giving the right error with the response kept.
local wechatpay = require("wechatpay")
local mock = require("wechatpay.mock")

describe("wechatpay client against the mock", function()
  local server, client

  setup(function()
    server = assert(mock.start{ rate_limit = false })
    client = server:client{ timeout = 2, retry = false }
  end)

  teardown(function()
    if client then client:close() end
    if server then server:stop() end
  end)

  before_each(function() server:reset() end)

  local function a_user()
    local ids = {}
    for openid in pairs(server.users) do ids[#ids + 1] = openid end
    table.sort(ids)
    return ids[1], server.users[ids[1]]
  end

  local counter = 0
  local function grant_json(user)
    counter = counter + 1
    return {
      stock_id = "9856000",
      out_request_no = ("spec%d%d"):format(os.time(), counter),
      user_name = assert(client:encrypt(user.name)),
      id_card_number = assert(client:encrypt(user.id_card)),
      appid = "wx233544546545989",
      card_type = "ID_CARD",
      amount = 100,
    }
  end

  describe("grants a coupon", function()
    it("in each call style, each verified, each a new grant", function()
      local openid, user = a_user()
      local calls = {
        function() return client.v3.multiuse.users._openid_.coupons:post{ openid = openid, json = grant_json(user),
          headers = { ["Wechatpay-Serial"] = server.platform_key_id } } end,
        function() return client:chain("v3/multiuse/users/{openid}/coupons"):post{ openid = openid, json = grant_json(user) } end,
        function() return client["v3/multiuse/users/{openid}/coupons"]:post{ openid = openid, json = grant_json(user) } end,
        function() return client.v3.multiuse.users[openid].coupons:post{ json = grant_json(user) } end,
      }
      local ids = {}
      for i, call in ipairs(calls) do
        local res, err = call()
        assert.is_truthy(res, tostring(err))
        assert.equal(200, res.status)
        local coupon_id = res:json().coupon_id
        assert.is_string(coupon_id)
        assert.is_nil(ids[coupon_id], "style " .. i .. " repeated a coupon")
        ids[coupon_id] = true
        assert.equal(openid, server:coupon(coupon_id).openid)
        assert.is_string(res.headers["Request-ID"])
        assert.equal(res.headers["request-id"], res:header("REQUEST-ID"))
      end
      assert.equal(4, server:stats().grants)
    end)

    it("for every seeded openid (mixed case, _ and -), which arrive byte for byte", function()
      for openid, user in pairs(server.users) do
        local res, err = client.v3.multiuse.users[openid].coupons:post{ json = grant_json(user) }
        assert.is_truthy(res, openid .. ": " .. tostring(err))
        assert.equal(openid, server:coupon(res:json().coupon_id).openid)
      end
    end)

    it("the same out_request_no returns the first coupon, changed fields a 4xx", function()
      local openid, user = a_user()
      local json = grant_json(user)
      local first = assert(client.v3.multiuse.users[openid].coupons:post{ json = json })
      json.user_name = assert(client:encrypt(user.name))   -- OAEP is randomised: same person, new bytes
      local again = assert(client.v3.multiuse.users[openid].coupons:post{ json = json })
      assert.equal(first:json().coupon_id, again:json().coupon_id)
      json.amount = 200
      local res, err = client.v3.multiuse.users[openid].coupons:post{ json = json }
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.is_true(err.status >= 400 and err.status < 500)
      assert.equal(1, server:stats().grants)
    end)

    it("a wrong real name is the server's 400, with its code and Request-ID", function()
      local openid, user = a_user()
      local json = grant_json(user)
      json.user_name = assert(client:encrypt("李四"))
      local res, err = client.v3.multiuse.users[openid].coupons:post{ json = json }
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.equal(400, err.status)
      assert.is_string(err.code)
      assert.is_string(err.request_id)
      assert.equal(400, err.response.status)
      assert.matches("wechatpay http error 400 " .. err.code, tostring(err))
      assert.is_nil(tostring(err):find("李四", 1, true))
    end)
  end)

  describe("sends what it signs", function()
    it("a GET with a query: the mock verifies the signature over the encoded query", function()
      local res = assert(client.v3.mock.echo.q:get{ query = { b = "x y", a = "中文", c = { 1, 2 } } })
      local echo = res:json()
      assert.equal("GET", echo.method)
      assert.equal("a=%E4%B8%AD%E6%96%87&b=x%20y&c=1&c=2", echo.query)
      assert.equal("", echo.body)
    end)

    it("Chinese text in a JSON body arrives as the bytes signed", function()
      local res = assert(client.v3.mock.echo.body:post{ json = { name = "张三", note = "消费金" } })
      local echo = res:json()
      local sent = require("cjson").decode(echo.body)
      assert.equal("张三", sent.name)
      assert.equal("消费金", sent.note)
    end)

    it("each verb, and a 204 whose empty body is verified", function()
      for _, verb in ipairs{ "get", "post", "put", "patch" } do
        local res = assert(client.v3.mock.echo.verbs[verb](client.v3.mock.echo.verbs, { json = verb ~= "get" and { v = verb } or nil }))
        assert.equal(verb:upper(), res:json().method)
      end
      local res, err = client.v3.mock.echo.gone:delete()
      assert.is_truthy(res, tostring(err))
      assert.equal(204, res.status)
      assert.equal("", res.body)
    end)

    it("a default Wechatpay-Serial naming the platform key, and a User-Agent naming the SDK", function()
      local headers = assert(client.v3.mock.echo.h:get()):json().headers
      assert.equal(server.platform_key_id, headers["wechatpay-serial"])
      assert.matches("^wechatpay%-lua/%S+ %(", headers["user-agent"])
      assert.matches("curl/", headers["user-agent"])
      assert.equal("application/json", headers["accept"])
      assert.is_nil(headers["expect"])
    end)

    it("100 calls over one kept-alive connection", function()
      local fresh = server:client{ retry = false }   -- no pooled connection yet
      for _ = 1, 100 do assert(fresh.v3.mock.echo.keepalive:get()) end
      local stats = server:stats()
      assert.equal(100, stats.requests)
      assert.equal(1, stats.connections)
      fresh:close()
    end)

    it("an unsigned download endpoint is accepted without Wechatpay-* headers", function()
      local bill = assert(client.v3.bill.tradebill:get{ query = { bill_date = "2026-11-26" } }):json()
      local path = bill.download_url:match("^https?://[^/]+(/.*)$")
      local res, err = client:request("GET", path:match("^[^?]+"):sub(2), {
        query = path:match("%?(.*)$") })
      assert.is_truthy(res, tostring(err))
      assert.is_nil(res.headers["wechatpay-signature"])
      assert.equal(bill.hash_value:lower(), require("wechatpay.hash")[bill.hash_type:lower()](res.body))
    end)
  end)

  describe("verifies every 2xx and keeps the response reachable", function()
    local function expect_verify_error(fault, opts, pattern)
      server:fault(fault, opts)
      local res, err = client.v3.mock.echo.v:get()
      assert.is_nil(res)
      assert.equal("verify", err.kind, tostring(err))
      assert.equal(200, err.status)
      assert.equal(200, err.response.status)
      assert.is_string(err.response.body)
      assert.matches(pattern, err.message)
      return err
    end

    it("a body changed after signing", function()
      expect_verify_error("tamper_body", nil, "does not verify")
    end)

    it("a WECHATPAY/SIGNTEST/ probe fails cleanly", function()
      expect_verify_error("signtest", nil, "SIGNTEST")
    end)

    -- 5 s either side of the 300 s window: the mock's clock (nginx caches
    -- the time per event loop turn) and ours may read a second apart
    it("a response 305 s old or 305 s ahead is refused and says both clocks; 295 s is accepted", function()
      local err = expect_verify_error("timestamp", { offset = -305 }, "from the local clock")
      local ts = tonumber(err.response.headers["Wechatpay-Timestamp"])
      assert.matches(tostring(ts), err.message)
      assert.is_truthy(err.message:match("local clock (%d+)"))
      expect_verify_error("timestamp", { offset = 305 }, "allowed: 300 s")
      server:fault("timestamp", { offset = -295 })
      assert.is_truthy(client.v3.mock.echo.v:get())
      server:fault("timestamp", { offset = 295 })
      assert.is_truthy(client.v3.mock.echo.v:get())
    end)

    it("an unknown serial, listing the serials the client knows", function()
      local err = expect_verify_error("unknown_serial", nil, "unknown Wechatpay%-Serial")
      assert.matches(server.platform_key_id, err.message, 1, true)
    end)

    it("missing signature headers", function()
      expect_verify_error("missing_headers", nil, "missing Wechatpay%-Timestamp, Wechatpay%-Nonce")
      expect_verify_error("missing_headers", { headers = { "Wechatpay-Signature" } }, "missing Wechatpay%-Signature")
    end)
  end)

  describe("trust", function()
    local ossl = require("support.openssl")
    local function options(extra)
      local opts = { mchid = server.mchid, serial = server.merchant_serial, retry = false,
        private_key = "file://" .. server.merchant_key_file, base_url = server.base_url,
        certs = { [server.platform_key_id] = "file://" .. server.platform_public_key_file } }
      for k, v in pairs(extra) do opts[k] = v end
      return opts
    end

    it("trusts a capath folder of hashed CA certificates as it trusts cafile", function()
      local dir = ossl.tmpdir()
      finally(function() ossl.remove(dir) end)
      ossl.run("cp " .. ossl.quote(server.cafile) .. " " .. ossl.quote(dir .. "/ca.pem")
        .. " && openssl rehash " .. ossl.quote(dir))
      local c = wechatpay.new(options{ capath = dir })
      local res, err = c.v3.mock.echo.capath:get()
      assert.is_truthy(res, tostring(err))
      c:close()
      -- an empty folder trusts nothing: the same call fails, and is not retried
      local empty = ossl.tmpdir()
      finally(function() ossl.remove(empty) end)
      c = wechatpay.new(options{ capath = empty, retry = { attempts = 3 } })
      local none
      none, err = c.v3.mock.echo.capath:get()
      c:close()
      assert.is_nil(none)
      assert.equal("network", err.kind)
      assert.is_false(err.retry)
      assert.equal(1, err.attempts)
    end)
  end)

  describe("operational failures are nil, err with the right kind", function()
    it("500, 503 and 429 are http errors with WeChat Pay's code and no verification", function()
      for status, code in pairs{ [500] = "SYSTEM_ERROR", [503] = "SERVICE_UNAVAILABLE", [429] = "FREQUENCY_LIMITED" } do
        server:fault("status", { status = status })
        local res, err = client.v3.mock.echo.s:get()
        assert.is_nil(res)
        assert.equal("http", err.kind)
        assert.equal(status, err.status)
        assert.equal(code, err.code)
        assert.equal(status, err.response.status)
      end
    end)

    it("a response slower than the timeout is a timeout", function()
      server:fault("delay", { seconds = 3 })
      local started = os.time()
      local res, err = client.v3.mock.echo.slow:get{ timeout = 0.5 }
      assert.is_nil(res)
      assert.equal("timeout", err.kind, tostring(err))
      assert.is_true(os.time() - started <= 2)
    end)

    it("a connection reset mid-body and a truncated body are network errors", function()
      for _, fault in ipairs{ "reset", "truncate" } do
        server:fault(fault)
        local res, err = client.v3.mock.echo.cut:get()
        assert.is_nil(res)
        assert.equal("network", err.kind, fault .. ": " .. tostring(err))
        assert.is_nil(err.response)
      end
      assert.is_truthy(client.v3.mock.echo.after:get())   -- and the client recovers
    end)

    it("a TLS certificate the client does not trust is refused (verification is always on)", function()
      -- without the mock's CA: a fresh client using the system store
      local opts = { mchid = server.mchid, serial = server.merchant_serial,
        private_key = "file://" .. server.merchant_key_file,
        certs = { [server.platform_key_id] = "file://" .. server.platform_public_key_file },
        base_url = server.base_url }
      local strict = wechatpay.new(opts)
      local res, err = strict.v3.mock.echo.tls:get()
      assert.is_nil(res)
      assert.equal("network", err.kind)
      assert.matches("certificate", err.message:lower())
      assert.equal(1, err.attempts, "a certificate that does not verify is not worth a retry")
      assert.is_truthy(client.v3.mock.echo.tls:get())   -- the same server with its CA given
    end)

    it("errors and the client never show the Authorization or key material", function()
      server:fault("status", { status = 401, code = "SIGN_ERROR" })
      local _, err = client.v3.mock.echo.secret:post{ json = { a = 1 } }
      local text = tostring(err) .. tostring(client)
      assert.is_nil(text:find("WECHATPAY2-SHA256-RSA2048", 1, true))
      assert.is_nil(text:find("signature=", 1, true))
      assert.is_nil(text:find("PRIVATE KEY", 1, true))
    end)
  end)
end)
