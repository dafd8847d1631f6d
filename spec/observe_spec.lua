-- The on_call hook against the mock WeChat Pay over real HTTPS: one record
-- per call when it settles, its timings, and nothing in it that a merchant
-- may not log (secrets, personal data, anything a call carried).
local cjson = require("cjson")
local core = require("wechatpay.core")
local mock = require("wechatpay.mock")
local observe = require("wechatpay.observe")
local merchant = require("support.merchant")
local nginx = require("support.nginx")
local socket = require("socket")
local wechatpay = require("wechatpay")

local now = core.monotonic

local FIELDS = {
  method = "string", path = "string", host = "string", attempts = "number", failovers = "number",
  queue_time = "number", sign_time = "number", network_time = "number", verify_time = "number",
  total_time = "number", status = "number", code = "string", error = "string", request_id = "string",
}

-- Every field a known one of the right type, timings within the total.
local function check_record(record)
  for name, value in pairs(record) do
    assert.is_not_nil(FIELDS[name], "unexpected field " .. tostring(name))
    assert.equal(FIELDS[name], type(value), name)
  end
  for _, name in ipairs{ "queue_time", "sign_time", "network_time", "verify_time" } do
    assert.is_true(record[name] >= 0, name)
  end
  local parts = record.queue_time + record.sign_time + record.network_time + record.verify_time
  assert.is_true(parts <= record.total_time + 1e-6, "parts " .. parts .. " > total " .. record.total_time)
end

describe("on_call", function()
  local server

  setup(function() server = assert(mock.start{ rate_limit = false }) end)
  teardown(function() if server then server:stop() end end)
  before_each(function()
    server:reset()
    server:configure{ latency = 0 }
  end)

  local function client(opts, records)
    opts = opts or {}
    opts.on_call = function(record) records[#records + 1] = record end
    return server:client(opts)
  end

  local function a_user()
    local ids = {}
    for openid in pairs(server.users) do ids[#ids + 1] = openid end
    table.sort(ids)
    return ids[1], server.users[ids[1]]
  end

  it("gets one record per call, when it settles, with what the call did", function()
    local records = {}
    local c = client({ timeout = 2 }, records)
    local res = assert(c.v3.mock.echo:get())
    assert.equal(1, #records)
    local r = records[1]
    check_record(r)
    assert.equal("GET", r.method)
    assert.equal("v3/mock/echo", r.path)
    assert.equal(200, r.status)
    assert.is_nil(r.error)
    assert.equal(res.headers["Request-ID"], r.request_id)
    assert.equal(1, r.attempts)
    assert.equal(0, r.failovers)
    assert.equal("127.0.0.1:" .. server.port, r.host)
    assert.is_true(r.sign_time > 0 and r.network_time > 0 and r.verify_time > 0)
  end)

  it("a bill download whose hash does not match is recorded with its integrity error, not as a 200", function()
    local records = {}
    local c = client({ timeout = 5, retry = false }, records)
    server:fault("wrong_hash", { path = "^/v3/bill/tradebill" })
    local bill = assert(c.v3.bill.tradebill:get{ query = { bill_date = "2026-11-26", tar_type = "GZIP" } })
    local info, err = c:download(bill, { to = function() end })
    assert.is_nil(info)
    assert.equal("integrity", err.kind)
    assert.equal(2, #records)
    local r = records[2]
    check_record(r)
    assert.equal("v3/billdownload/file", r.path)
    assert.equal("integrity", r.error)
    assert.equal(200, r.status)
    -- and a good one is recorded as the 200 it is
    assert(c:download(assert(c.v3.bill.tradebill:get{ query = { bill_date = "2026-11-26" } }), { to = function() end }))
    assert.equal(4, #records)
    assert.is_nil(records[4].error)
    assert.equal(200, records[4].status)
  end)

  it("gets one record after the retries, with WeChat Pay's code and the error kind", function()
    local records = {}
    local c = client({ timeout = 2, retry = { idempotent = true, backoff = 0.01 } }, records)
    server:fault("status", { status = 500, code = "SYSTEM_ERROR", count = 3 })
    local res, err = c.v3.mock.echo:get()
    assert.is_nil(res)
    assert.equal(1, #records)
    local r = records[1]
    check_record(r)
    assert.equal(3, r.attempts)
    assert.equal("http", r.error)
    assert.equal(500, r.status)
    assert.equal("SYSTEM_ERROR", r.code)
    assert.equal(err.request_id, r.request_id)

    server:fault("status", { status = 500, count = 1 })
    assert.is_truthy(c.v3.mock.echo:get())
    assert.equal(2, #records)
    assert.equal(2, records[2].attempts)
    assert.equal(200, records[2].status)
  end)

  it("times the network, the queue (a slot, the rate limit) and the whole call", function()
    local records = {}
    local c = client({ timeout = 5, max_concurrency = 1 }, records)
    server:configure{ latency = 0.2 }
    local started = now()
    local list = { c.v3.mock.echo:getAsync(), c.v3.mock.echo:getAsync() }
    assert.is_truthy(wechatpay.all(list):wait())
    local elapsed = now() - started
    assert.equal(2, #records)
    for _, r in ipairs(records) do
      check_record(r)
      -- the mock sleeps 0.2 s on nginx's millisecond clock, which may end it up to 1 ms early
      assert.is_true(r.network_time >= 0.19, "network " .. r.network_time)
      assert.is_true(r.total_time <= elapsed + 1e-6)
    end
    -- the second waited for the first's slot
    assert.is_true(records[2].queue_time >= 0.18, "queue " .. records[2].queue_time)
    assert.is_true(records[1].queue_time < 0.05, "queue " .. records[1].queue_time)

    server:configure{ latency = 0 }
    local limited = {}
    local l = client({ timeout = 5, rate_limit = { calls = 2, per = 1 } }, limited)
    list = { l.v3.mock.echo:getAsync(), l.v3.mock.echo:getAsync() }
    assert.is_truthy(wechatpay.all(list):wait())
    table.sort(limited, function(a, b) return a.queue_time < b.queue_time end)
    assert.is_true(limited[2].queue_time >= 0.4, "rate limited queue " .. limited[2].queue_time)
    assert.is_true(limited[2].total_time >= limited[2].queue_time)
  end)

  it("keeps every secret and personal value out of the records", function()
    local records = {}
    local c = client({ timeout = 1, retry = false }, records)
    local openid, user = a_user()
    local secrets = {
      "SecretQueryValue7", "SecretHeaderValue8", "SecretJsonValue9", "SecretPathValue10",
      "oSecretOpenid11Abc", "SecretMessage12", openid, user.name, user.id_card, server.apiv3_key,
    }
    local calls = {
      function() return c.v3.mock.echo:get{ query = { card = secrets[1] }, headers = { ["X-Note"] = secrets[2] } } end,
      function() return c.v3.mock.echo:post{ json = { id_card = secrets[3] }, headers = { ["X-Note"] = secrets[2] } } end,
      function() return c.v3.mock.echo[secrets[4]]:get() end,
      function() return c:chain("v3/mock/echo/{id}"):get{ id = secrets[5] } end,
      function() return c.v3.mock.echo[secrets[5]]:get{ query = "q=" .. secrets[1] } end,
      function()
        return c.v3.multiuse.users[openid].coupons:post{ json = {
          stock_id = "9856000", out_request_no = "observe" .. os.time(), appid = "wx233544546545989",
          card_type = "ID_CARD", user_name = assert(c:encrypt(user.name)),
          id_card_number = assert(c:encrypt(user.id_card)) } }
      end,
      function()   -- an error whose message quotes a value
        server:fault("status", { status = 400, code = "PARAM_ERROR", message = secrets[6] .. " " .. secrets[3] })
        return c.v3.mock.echo:post{ json = { id_card = secrets[3] } }
      end,
      function()   -- a 2xx that fails verification
        server:fault("tamper_body")
        return c.v3.mock.echo:get{ query = { card = secrets[1] } }
      end,
      function()   -- a timeout
        server:fault("delay", { seconds = 2 })
        return c.v3.mock.echo[secrets[4]]:get()
      end,
      function() return c.v3.marketing.favor.users._openid_.coupons["9856000"]:get{ openid = openid,
        query = { appid = "wx233544546545989" } } end,
    }
    for _, call in ipairs(calls) do call() end
    assert.equal(#calls, #records)
    local text = cjson.encode(records)
    local key_pem = io.open(server.merchant_key_file):read("*a")
    for _, secret in ipairs(secrets) do
      assert.is_nil(text:find(secret, 1, true), "a record holds " .. secret)
    end
    assert.is_nil(text:find(key_pem:sub(40, 80), 1, true))
    for _, word in ipairs{ "Authorization", "WECHATPAY2", "signature", "PRIVATE", "body" } do
      assert.is_nil(text:find(word, 1, true), "a record holds " .. word)
    end
    -- what they do say
    assert.equal("v3/mock/echo/{?}", records[3].path)
    assert.equal("v3/mock/echo/{id}", records[4].path)
    assert.equal("v3/multiuse/users/{?}/coupons", records[6].path)
    assert.equal("PARAM_ERROR", records[7].code)
    assert.equal("verify", records[8].error)
    assert.equal("timeout", records[9].error)
    assert.equal("v3/marketing/favor/users/{openid}/coupons/{?}", records[10].path)
    for _, r in ipairs(records) do check_record(r) end
  end)

  it("survives a hook that raises: every call settles, one warning is written", function()
    local warnings = {}
    local real = io.stderr
    io.stderr = { write = function(_, ...) warnings[#warnings + 1] = table.concat({ ... }) end }
    local ok, err = pcall(function()
      local calls = 0
      local c = server:client{ timeout = 2, on_call = function() calls = calls + 1 error("hook broke " .. calls) end }
      assert.is_truthy(c.v3.mock.echo:get())
      local list = {}
      for i = 1, 3 do list[i] = c.v3.mock.echo:getAsync() end
      local all, aerr = wechatpay.all(list):wait()
      assert.is_truthy(all, tostring(aerr))
      server:fault("status", { status = 400 })
      local res, cerr = c.v3.mock.echo:get()
      assert.is_nil(res)
      assert.equal(400, cerr.status)
      assert.equal(5, calls)
    end)
    io.stderr = real
    assert(ok, err)
    assert.equal(1, #warnings)
    assert.matches("on_call hook raised", warnings[1], 1, true)
    assert.matches("hook broke 1", warnings[1], 1, true)
  end)

  it("survives a hook that raises a value that does not print", function()
    local warnings = {}
    local real = io.stderr
    io.stderr = { write = function(_, ...) warnings[#warnings + 1] = table.concat({ ... }) end }
    local ok, err = pcall(function()
      local unprintable = setmetatable({}, { __tostring = function() return nil end })
      local c = server:client{ timeout = 2, on_call = function() error(unprintable) end }
      local res, cerr = c.v3.mock.echo:getAsync():wait()
      assert.is_truthy(res, tostring(cerr))
    end)
    io.stderr = real
    assert(ok, err)
    assert.equal(1, #warnings)
    assert.matches("on_call hook raised", warnings[1], 1, true)
    assert.matches("a table that does not print", warnings[1], 1, true)
  end)

  it("is refused when not a function", function()
    local ok, err = pcall(wechatpay.new, merchant.options{ on_call = "log" })
    assert.is_false(ok)
    assert.matches("on_call must be a function", err, 1, true)
  end)
end)

describe("on_call inside nginx, with a dead primary (cosockets)", function()
  local server, app, dead

  setup(function()
    server = assert(mock.start{ rate_limit = false })
    app = nginx.start(server, { workers = 1 })
    local s = assert(socket.bind("127.0.0.1", 0))
    local _
    _, dead = s:getsockname()
    s:close()
  end)
  teardown(function()
    if app then app:stop() end
    if server then server:stop() end
  end)

  it("fires once per call, fails over once per worker, and feeds a /metrics counter", function()
    local run = tostring(os.time()) .. math.random(1e6)
    local status, body = app:get("/observed?n=2&dead=" .. dead .. "&no=obs1-" .. run)
    assert.equal(200, status)
    assert.same({}, body.errors)
    local records = body.records
    assert.equal(3, #records)
    for _, r in ipairs(records) do check_record(r) end
    assert.equal("localhost:" .. server.port, records[1].host)
    assert.equal(1, records[1].failovers)
    assert.equal(2, records[1].attempts)
    assert.equal("v3/mock/echo", records[1].path)
    assert.is_true(records[1].network_time > 0)
    assert.equal(0, records[2].failovers)
    assert.equal("POST", records[3].method)
    assert.equal("v3/multiuse/users/{?}/coupons", records[3].path)
    assert.equal(200, records[3].status)

    -- a later request of the same worker: the dead host is remembered
    status, body = app:get("/observed?n=1&dead=" .. dead .. "&no=obs2-" .. run)
    assert.equal(200, status)
    assert.equal(2, #body.records)
    assert.equal(0, body.records[1].failovers)
    assert.equal(1, body.records[1].attempts)

    local _, metrics = app:get("/metrics")
    assert.matches('wechatpay_calls_total{method="GET",path="v3/mock/echo",status="200"} 3', metrics, 1, true)
    assert.matches('wechatpay_calls_total{method="POST",path="v3/multiuse/users/{?}/coupons",status="200"} 2',
      metrics, 1, true)
    local log = app:error_log()
    local logged = select(2, log:gsub("wechatpay call ", ""))
    assert.equal(5, logged)
    local personal = { "SecretQuery" }
    for openid in pairs(server.users) do personal[#personal + 1] = openid end
    for _, value in ipairs(personal) do
      assert.is_nil(log:find(value, 1, true), "the log holds " .. value)
    end
  end)

  it("refuses a backup that names an IP address, as it refuses such a primary", function()
    local status, body = app:get("/backup_ip_literal")
    assert.equal(200, status)
    assert.is_false(body.ok)
    assert.matches("base_url " .. server.base_url:gsub("/$", "") .. " names an IP address", body.error, 1, true)
  end)

  it("keeps serving calls when the hook raises, with one warning in the error log", function()
    local run = tostring(os.time()) .. math.random(1e6)
    for i = 1, 2 do
      local status, body = app:get("/observed?raise=1&n=2&dead=" .. dead .. "&no=obs-raise" .. i .. "-" .. run)
      assert.equal(200, status)
      assert.same({}, body.errors)
    end
    local log = app:error_log()
    assert.equal(1, select(2, log:gsub("the on_call hook raised", "")))
    assert.matches("the hook broke", log, 1, true)
  end)

  it("fails over from a primary whose TLS handshake fails (it speaks plain HTTP): nothing was sent", function()
    local run = tostring(os.time()) .. math.random(1e6)
    local status, body = app:get("/observed?n=1&dead=" .. app.port .. "&no=obs-tls-" .. run)
    assert.equal(200, status)
    assert.same({}, body.errors)
    assert.equal(1, body.records[1].failovers)
    assert.equal(2, body.records[1].attempts)
    assert.equal("localhost:" .. server.port, body.records[1].host)
  end)
end)

describe("observe.template", function()
  it("keeps templates and API words, hides what may identify someone", function()
    local cases = {
      ["v3/multiuse/users/{openid}/coupons"] = "v3/multiuse/users/{openid}/coupons",
      ["/v3/pay/transactions/out-trade-no/{out_trade_no}"] = "v3/pay/transactions/out-trade-no/{out_trade_no}",
      ["v3/pay/transactions/out-trade-no/1217752501201407033233368018"] = "v3/pay/transactions/out-trade-no/{?}",
      ["v3/multiuse/users/oUpF8uMuAJO_M2pxb1Q9zNjWeS6o/coupons"] = "v3/multiuse/users/{?}/coupons",
      ["v3/pay/transactions/h5"] = "v3/pay/transactions/h5",
      ["v3/refund/domestic/refunds/REFUND-1"] = "v3/refund/domestic/refunds/{?}",
      ["v3/bill/tradebill?bill_date=2026-11-27"] = "v3/bill/{?}",
      ["v3/x/pre{id}"] = "v3/x/pre{id}",
      ["v3/x/Secret{id}"] = "v3/x/{?}",
      ["v3/x/" .. ("a"):rep(41)] = "v3/x/{?}",
    }
    for path, shown in pairs(cases) do assert.equal(shown, observe.template(path), path) end
  end)
end)
