-- The client inside a real nginx (Debian's nginx + libnginx-mod-http-lua,
-- LuaJIT), against the mock WeChat Pay over real HTTPS: the app nginx is
-- started by spec/support/nginx.lua, runs spec/support/nginx_app.lua, and
-- verifies the mock's `localhost` certificate with lua_ssl_trusted_certificate
-- (lua_ssl_verify_depth 3); `resolve` pins localhost:port to 127.0.0.1.
-- That nothing blocks the worker is shown by the mock's own counters.
local cjson = require("cjson")
local core = require("wechatpay.core")
local mock = require("wechatpay.mock")
local nginx = require("support.nginx")
local socket = require("socket")

local now = core.monotonic
-- The sanitizer build signs some 3x slower: latencies that must outlast 50
-- signatures on one worker grow with it.
local SLOW = (os.getenv("WECHATPAY_BUILD") or ""):find("/dev", 1, true) and 3 or 1
local RUN = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

-- n GET requests at once through one curl multi session, plus a /ping
-- measured one at a time while they run.  -> results by index, ping times (s)
local function concurrent(app, paths, opts)
  opts = opts or {}
  local session = app:session()
  local ids, results = {}, {}
  for i, path in ipairs(paths) do
    ids[session:submit{ method = "GET", url = app:url(path), timeout = 30 }] = i
  end
  local pings, remaining, deadline = {}, #paths, now() + 30
  local ping_id, ping_started
  while remaining > 0 and now() < deadline do
    if opts.ping and not ping_id then
      ping_started = now()
      ping_id = session:submit{ method = "GET", url = app:url("/ping"), timeout = 10 }
    end
    for _, r in ipairs(session:perform(0.005)) do
      if r.id == ping_id then
        assert(r.status == 200, "ping failed")
        pings[#pings + 1] = now() - ping_started
        ping_id = nil
      else
        local body = r.body and r.body:sub(1, 1) == "{" and cjson.decode(r.body) or r.body
        results[ids[r.id]] = { status = r.status or r.error, body = body }
        remaining = remaining - 1
      end
    end
  end
  session:close()
  return results, pings
end

local function percentile(list, p)
  local sorted = {}
  for i, v in ipairs(list) do sorted[i] = v end
  table.sort(sorted)
  return sorted[math.max(1, math.ceil(#sorted * p))]
end

describe("inside nginx, one worker", function()
  local server, app, init_record, dns

  setup(function()
    server = assert(mock.start{ latency = 0, rate_limit = false })
    dns = require("support.dns").start{ slow = 1.2 }
    app = nginx.start(server, { workers = 1, init_call = "INIT-" .. RUN, dns_port = dns.port })
    local _, body = app:get("/result?key=init_call")
    init_record = server:coupon(body.value)   -- before_each resets the mock's records
  end)
  teardown(function()
    if app then app:stop() end
    if dns then dns.stop() end
    if server then server:stop() end
  end)
  before_each(function() server:configure{ latency = 0 } server:reset() end)

  it("grants in every call style from a content handler, and from ngx.timer.at", function()
    for _, style in ipairs{ "sync", "chain", "path", "index", "async" } do
      local no = "STYLE-" .. style .. "-" .. RUN
      local status, body = app:get("/grant?style=" .. style .. "&no=" .. no)
      assert.are.equal(200, status, cjson.encode(body))
      assert.are.equal(no, server:coupon(body.coupon_id).out_request_no)
    end
    for _, style in ipairs{ "sync", "async" } do
      local no = "TIMER-" .. style .. "-" .. RUN
      local status, body = app:get("/timer?style=" .. style .. "&no=" .. no)
      assert.are.equal(200, status, cjson.encode(body))
      assert.are.equal(no, server:coupon(body.coupon_id).out_request_no)
    end
    assert.are.equal(7, server:stats().grants)
  end)

  it("runs an async batch with wechatpay.all, and settle, in one request, all at once at the mock", function()
    server:configure{ latency = 0.2 * SLOW }
    local status, body = app:get("/batch?n=8&prefix=BATCH-" .. RUN)
    assert.are.equal(200, status, cjson.encode(body))
    assert.are.equal(8, #body.coupon_ids)
    for i, id in ipairs(body.coupon_ids) do
      assert.are.equal("BATCH-" .. RUN .. "-" .. i, server:coupon(id).out_request_no)
    end
    assert.are.equal(8, server:stats().in_flight_max)
    status, body = app:get("/settle?n=3&prefix=SETTLE-" .. RUN)
    assert.are.equal(200, status)
    for i, id in ipairs(body.coupon_ids) do
      assert.are.equal("SETTLE-" .. RUN .. "-" .. i, server:coupon(id).out_request_no)
    end
  end)

  it("a promise handler may make a synchronous call: the request's wait() returns once it has", function()
    local status, body = app:get("/nested?prefix=NESTED-" .. RUN)
    assert.are.equal(200, status, cjson.encode(body))
    assert.is_true(body.handler_done)
    for i, suffix in ipairs{ "A", "B", "C" } do
      assert.are.equal("NESTED-" .. RUN .. "-" .. suffix, server:coupon(body.coupon_ids[i]).out_request_no)
    end
  end)

  it("handlers that wait on each other fail with 'nothing is in flight' instead of hanging the request", function()
    local started = now()
    local status, body = app:get("/deadlocked", 10 * SLOW)
    assert.are.equal(200, status, cjson.encode(body))
    assert.is_true(now() - started < 10 * SLOW)
    for i = 1, 2 do assert.matches("nothing is in flight", body.errors[i]) end
  end)

  it("never blocks the worker: 50 handlers in flight at the mock at once, /ping under 50 ms at p99", function()
    server:configure{ latency = 0.4 * SLOW }
    local paths = {}
    -- a first round fills the pool, as a running server's is: the measured
    -- round then spends its CPU on signing, not on 50 TLS handshakes
    for i = 1, 50 do paths[i] = ("/grant?style=async&no=NBW-%d-%s"):format(i, RUN) end
    for i, r in ipairs(concurrent(app, paths)) do assert.are.equal(200, r.status, "warm-up " .. i) end
    -- Fifty signatures take 90-190 ms of the one worker's CPU (mbedTLS, a
    -- loaded machine), inside the 0.4 s the first call waits; a second round
    -- is allowed before calling it a failure.
    local rounds = {}
    for round = 1, 2 do
      server:reset()
      for i = 1, 50 do
        paths[i] = ("/grant?style=%s&no=NB%d-%d-%s"):format(i % 2 == 0 and "sync" or "async", round, i, RUN)
      end
      local started = now()
      local results, pings = concurrent(app, paths, { ping = true })
      local elapsed = now() - started
      local seen = {}
      for i = 1, 50 do
        assert.are.equal(200, results[i].status, cjson.encode(results[i].body))
        local id = results[i].body.coupon_id
        assert.is_nil(seen[id])
        seen[id] = true
      end
      local stats = server:stats()
      assert.are.equal(50, stats.grants)
      assert.is_true(#pings >= 5, "pings measured: " .. #pings)
      -- 50 calls of 0.4 s one after another would take 20 s
      assert.is_true(elapsed < 3 * SLOW, ("50 grants took %.2f s"):format(elapsed))
      rounds[round] = ("round %d: in flight at the mock at most %d, ping p99 %.1f ms, %.2f s")
        :format(round, stats.in_flight_max, percentile(pings, 0.99) * 1000, elapsed)
      if stats.in_flight_max == 50 and percentile(pings, 0.99) < 0.05 then return end
    end
    error("not all 50 at once, or /ping slow: " .. table.concat(rounds, "; "))
  end)

  it("reuses pooled connections: ten grants in a row open at most one connection", function()
    for i = 1, 10 do
      local status = app:get("/grant?no=POOL-" .. i .. "-" .. RUN)
      assert.are.equal(200, status)
    end
    local stats = server:stats()
    assert.are.equal(10, stats.requests)
    assert.is_true(stats.connections <= 1, "connections: " .. stats.connections)
  end)

  it("refuses a call in set, header_filter, body_filter and log, naming the phase and ngx.timer.at", function()
    local status, body = app:get("/phase/set")
    assert.are.equal(200, status)
    assert.matches("nginx's set phase", body, 1, true)
    assert.matches("ngx.timer.at", body, 1, true)
    assert.are.equal(200, (app:get("/phase/filters")))
    for _, phase in ipairs{ "header_filter", "body_filter", "log" } do
      local message
      for _ = 1, 50 do
        local _, r = app:get("/result?key=phase:" .. phase)
        message = r.value
        if message then break end
        require("socket").sleep(0.02)
      end
      assert.is_string(message, phase)
      assert.matches("nginx's " .. phase .. " phase", message, 1, true)
      assert.matches("ngx.timer.at", message, 1, true)
    end
    assert.are.equal(0, server:stats().requests)
  end)

  it("refuses a blocking transport in a handler, and an IP-literal base_url, saying what to do", function()
    local _, body = app:get("/blocking")
    assert.is_false(body.ok)
    assert.matches("curl transport blocks", body.error, 1, true)
    assert.matches('transport = "auto"', body.error, 1, true)
    _, body = app:get("/ip_literal")
    assert.is_false(body.ok)
    assert.matches("X509_check_host", body.error, 1, true)
    assert.matches("resolve = {", body.error, 1, true)
    assert.are.equal(0, server:stats().requests)
  end)

  it("made a call in init_by_lua (curl, before the fork), and writes no globals", function()
    assert.are.equal("INIT-" .. RUN, init_record and init_record.out_request_no)
    local _, body = app:get("/result?key=globals_added")
    assert.are.equal("", body.value)
    assert.is_nil(app:error_log():find("writing a global", 1, true))
    -- the client was given cafile: nginx's log says cosockets do not use it
    assert.truthy(app:error_log():find("cafile is used by calls made in init_by_lua/init_worker (curl) only", 1, true))
  end)

  it("keeps nothing per call in a long-lived request or timer: 1,000 calls, a flat Lua heap", function()
    -- one after another, and async in batches sent mostly from the callbacks of calls that ended
    for _, mode in ipairs{ "sync", "queued" } do
      local status, body = app:get("/many?n=1000&mode=" .. mode, 120)
      assert.are.equal(200, status, tostring(body))
      -- an ended light thread not waited on costs about 0.5 KB: 1,000 of them, 500 KB
      assert.is_true(body.after - body.before < 100, ("%s: the heap grew %.0f KB"):format(mode, body.after - body.before))
    end
  end)

  describe("the cosocket transport", function()
    local function raw(query)
      local status, body = app:get("/raw?port=" .. app.origin_port .. "&" .. query)
      assert.are.equal(200, status, tostring(body))
      return body.response, body.failure
    end

    it("reads chunked, Content-Length, close-delimited and empty bodies", function()
      local res = raw("host=localhost&path=/chunked")
      assert.are.equal(200, res.status)
      assert.are.equal("chunked", res.headers["transfer-encoding"])
      assert.are.equal("abcd", res.body)
      res = raw("host=localhost&path=/length")
      assert.are.equal("hello", res.body)
      res = raw("host=localhost&path=/close")
      assert.are.equal("bye\n", res.body)
      res = raw("host=localhost&path=/empty")
      assert.are.equal(204, res.status)
      assert.are.equal("", res.body)
    end)

    it("caps the body, and fails a slow answer at the deadline", function()
      local _, fail = raw("host=localhost&path=/big&max_body=1000")
      assert.are.equal("network", fail.kind)
      assert.is_false(fail.retry)
      assert.matches("max_body", fail.message, 1, true)
      local started = now()
      _, fail = raw("host=localhost&path=/slow&timeout=0.3")
      assert.are.equal("timeout", fail.kind)
      assert.are.equal("idempotent", fail.retry)
      assert.is_true(now() - started < 1.5)
      -- a server that sends a byte now and then: nginx restarts a read's timer at each,
      -- the call's deadline still holds
      started = now()
      _, fail = raw("host=localhost&path=/drip&timeout=1")
      assert.are.equal("timeout", fail.kind)
      assert.is_true(now() - started < 2.5, ("answered after %.1f s"):format(now() - started))
    end)

    it("gives the TLS handshake only what a slow name lookup and the connect left of connect_timeout", function()
      -- a listener that never accepts: the kernel completes the connect, nobody answers the handshake
      local silent = assert(socket.bind("127.0.0.1", 0))
      local _, port = silent:getsockname()
      local started = now()
      -- the lookup of slow1.test takes 1.2 s of the 1.6 s
      local status, body = app:get(("/raw_resolved?host=slow1.test&port=%d&path=/&timeout=10&connect_timeout=1.6")
        :format(port))
      local elapsed = now() - started
      silent:close()
      assert.are.equal(200, status, tostring(body))
      assert.are.equal("timeout", body.failure and body.failure.kind, cjson.encode(body))
      assert.are.equal("safe", body.failure.retry)
      assert.is_true(elapsed > 1.1, ("the lookup was not slow: %.2f s"):format(elapsed))
      assert.is_true(elapsed < 2.3, ("connecting took %.2f s of a 1.6 s connect_timeout"):format(elapsed))
    end)

    it("holds the deadline while a slow reader takes a large body in small steps", function()
      -- nginx restarts a send's timer whenever the peer takes some bytes
      local started = now()
      local res, fail = raw("host=localhost&path=/slowread&timeout=2&body_kb=24576")
      local elapsed = now() - started
      assert.is_nil(res, "the upload ended only when the server stopped reading")
      assert.are.equal("timeout", fail.kind)
      assert.is_true(elapsed < 3.5, ("sending took %.1f s of a 2 s timeout"):format(elapsed))
    end)

    it("verifies the certificate's name, and says which directives to check", function()
      local _, fail = raw("host=wrong.test&path=/length")
      assert.are.equal("network", fail.kind)
      assert.is_false(fail.retry)
      assert.matches("lua_ssl_trusted_certificate", fail.message, 1, true)
      assert.matches("lua_ssl_verify_depth", fail.message, 1, true)
    end)

    it("says to add a resolver when nginx has none", function()
      local _, fail = raw("host=nowhere.test&path=/length")
      assert.are.equal("network", fail.kind)
      assert.matches("no resolver defined", fail.message, 1, true)
      assert.matches("`resolver` directive", fail.message, 1, true)
      assert.matches("resolve = {", fail.message, 1, true)
    end)
  end)

  it("keeps working after a reload (HUP)", function()
    app:reload()
    local no = "RELOAD-" .. RUN
    local status, body = app:get("/grant?style=async&no=" .. no)
    assert.are.equal(200, status, cjson.encode(body))
    assert.are.equal(no, server:coupon(body.coupon_id).out_request_no)
  end)
end)

describe("inside nginx, max_concurrency and set_timeout per request", function()
  local server, app

  setup(function()
    server = assert(mock.start{ latency = 0.2 * SLOW, rate_limit = false })
    app = nginx.start(server, { workers = 1, max_concurrency = 4 })
  end)
  teardown(function()
    if app then app:stop() end
    if server then server:stop() end
  end)

  it("bounds the calls of one request, not of the worker", function()
    server:reset()
    local status, body = app:get("/batch?n=8&prefix=MC1-" .. RUN)
    assert.are.equal(200, status, cjson.encode(body))
    assert.are.equal(4, server:stats().in_flight_max)
    server:reset()
    local results = concurrent(app, { "/batch?n=8&prefix=MC2-" .. RUN, "/batch?n=8&prefix=MC3-" .. RUN })
    assert.are.equal(200, results[1].status)
    assert.are.equal(200, results[2].status)
    assert.are.equal(8, server:stats().in_flight_max)
  end)

  it("set_timeout(ms) holds for the calls of the request that set it", function()
    local status, body = app:get("/grant?timeout_ms=50&no=ST1-" .. RUN)
    assert.are.equal(502, status)
    assert.are.equal("timeout", body.kind)
    status, body = app:get("/grant?no=ST2-" .. RUN)
    assert.are.equal(200, status, cjson.encode(body))
  end)
end)

describe("inside nginx, four workers", function()
  local server

  setup(function() server = assert(mock.start{ latency = 0.05, rate_limit = 600 }) end)
  teardown(function() if server then server:stop() end end)

  it("after calls in init_by_lua and init_worker, 100 concurrent grants each get their own coupon", function()
    local app = nginx.start(server, { workers = 4, init_call = "INIT4-" .. RUN, init_worker_call = "WORKER4-" .. RUN })
    finally(function() app:stop() end)
    local _, init = app:get("/result?key=init_call")
    assert.are.equal("INIT4-" .. RUN, server:coupon(init.value).out_request_no)
    -- every worker granted the same number: one coupon, answered to all four
    local first
    for id = 0, 3 do
      local value
      for _ = 1, 100 do
        local _, r = app:get("/result?key=init_worker:" .. id)
        value = r.value
        if value then break end
        require("socket").sleep(0.02)
      end
      assert.is_string(value, "worker " .. id)
      assert.are.equal("WORKER4-" .. RUN, (server:coupon(value) or {}).out_request_no, value)
      first = first or value
      assert.are.equal(first, value)
    end
    server:reset()
    local paths = {}
    for i = 1, 100 do paths[i] = ("/grant?style=async&no=W4-%d-%s"):format(i, RUN) end
    local results = concurrent(app, paths)
    local seen, pids = {}, {}
    for i = 1, 100 do
      assert.are.equal(200, results[i].status, cjson.encode(results[i].body))
      local body = results[i].body
      assert.are.equal(("W4-%d-%s"):format(i, RUN), body.no)
      assert.is_nil(seen[body.coupon_id], "a coupon answered twice")
      seen[body.coupon_id] = true
      pids[body.pid] = true
      assert.are.equal(body.no, server:coupon(body.coupon_id).out_request_no)
    end
    assert.are.equal(100, server:stats().grants)
    local workers = 0
    for _ in pairs(pids) do workers = workers + 1 end
    assert.is_true(workers >= 2, "workers that served: " .. workers)
  end)

  it("holds a shared-dict rate limit of 600/min across the four workers, seen at the mock", function()
    local app = nginx.start(server, { workers = 4, rate_limit = { calls = 600, per = 60, shared_dict = "wechatpay" } })
    finally(function() app:stop() end)
    server:reset()
    local n = 30
    local paths = {}
    for i = 1, n do paths[i] = ("/grant?style=sync&no=RL-%d-%s"):format(i, RUN) end
    local results = concurrent(app, paths)
    local times = {}
    for i = 1, n do
      assert.are.equal(200, results[i].status, cjson.encode(results[i].body))
      times[i] = server:coupon(results[i].body.coupon_id).granted_at
    end
    table.sort(times)
    -- 600/min is one call per 0.1 s: any 11 grants span at least 1 s, less
    -- the spread of the way to the mock (each worker's first grant opens a
    -- TLS connection: measured 0.966 s at worst); a limiter counted per
    -- worker would give 0.25 s
    for i = 1, n - 10 do
      assert.is_true(times[i + 10] - times[i] >= 0.9,
        ("grants %d..%d within %.3f s"):format(i, i + 10, times[i + 10] - times[i]))
    end
    assert.are.equal(n, server:stats().grants)
  end)
end)

describe("inside nginx: the periodic certificate refresh", function()
  local server, app

  setup(function()
    server = assert(mock.start{ latency = 0, rate_limit = false })
    app = nginx.start(server, { workers = 1, background_refresh = true })
  end)
  teardown(function()
    if app then app:stop() end
    if server then server:stop() end
  end)

  it("survives the request that found it due ending with ngx.exit, and brings the new certificate", function()
    local status, body = app:get("/bg?step=setup")
    assert.are.equal(200, status)
    assert.is_nil(body.error)
    local next_serial = server:rotate_certificates()
    -- the download takes a second: the request has ended long before it does
    server:fault("delay", { seconds = 1, then_process = true, path = "^/v3/certificates" })
    app:get("/bg?step=shift")
    local _, answer = app:get("/bg?step=call")
    assert.are.equal("200", tostring(answer):match("%d+"))
    local keys
    for _ = 1, 60 do
      socket.sleep(0.1)
      _, body = app:get("/bg?step=keys")
      keys = table.concat(body.keys, " ")
      if keys:find(next_serial, 1, true) then break end
    end
    assert.truthy(keys:find(next_serial, 1, true), "no refresh brought " .. next_serial .. ": " .. keys
      .. "\n" .. app:error_log())
    assert.are.equal(2, body.downloads)
  end)
end)

describe("inside nginx: calls that join another request's certificate download", function()
  local server, app

  setup(function()
    server = assert(mock.start{ latency = 0, rate_limit = false, sign_with = "certificate" })
    app = nginx.start(server, { workers = 1, background_refresh = true })
  end)
  teardown(function()
    if app then app:stop() end
    if server then server:stop() end
  end)

  it("each request's call settles when the download another request drives ends", function()
    -- a client that knows the public key only: the mock's certificate-signed
    -- answers make the first call download, and the others join it
    local status, body = app:get("/bg?step=setup&fresh=1")
    assert.are.equal(200, status)
    assert.is_nil(body.error)
    -- the download takes a second: the later requests' calls meet it running
    server:fault("delay", { seconds = 1, then_process = true, count = 1, path = "^/v3/certificates" })
    local session = app:session()
    local answers = {}
    local function take(wait)
      for _, r in ipairs(session:perform(wait)) do answers[#answers + 1] = r end
    end
    for i = 1, 3 do
      session:submit{ method = "GET", url = app:url("/bg?step=echo&n=" .. i), timeout = 10 }
      local until_next = socket.gettime() + 0.2
      while socket.gettime() < until_next do take(0.02) end
    end
    local deadline = socket.gettime() + 10
    while #answers < 3 and socket.gettime() < deadline do take(0.2) end
    session:close()
    assert.are.equal(3, #answers)
    for _, r in ipairs(answers) do
      assert.are.equal(200, r.status, tostring(r.error))
      local answer = cjson.decode(r.body)
      assert.are.equal(200, answer.status, tostring(answer.error))
    end
    _, body = app:get("/bg?step=keys")
    assert.are.equal(1, body.downloads)
  end)

  it("a callback's verification that joined a download its request's end left unfinished waits at most `timeout`", function()
    -- a message signed with the mock's certificate, which the fresh client does not know
    local res = assert(server:client{}.v3.mock.echo.signed:get())
    local function escaped(text)
      return (text:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
    end
    local query = ("ts=%s&nonce=%s&sig=%s&serial=%s&body=%s"):format(escaped(res.headers["wechatpay-timestamp"]),
      escaped(res.headers["wechatpay-nonce"]), escaped(res.headers["wechatpay-signature"]),
      escaped(res.headers["wechatpay-serial"]), escaped(res.body))
    local status = app:get("/bg?step=setup&fresh=1")
    assert.are.equal(200, status)
    -- request A's call starts the download (8 s), and A ends with ngx.exit meanwhile
    server:fault("delay", { seconds = 8, then_process = true, count = 1, path = "^/v3/certificates" })
    app:get("/bg?step=start&sleep=0.3")
    local started = socket.gettime()
    local _, body = app:get("/bg?step=verify&" .. query, 30)
    local took = socket.gettime() - started
    assert.is_nil(body.verified)
    assert.matches("unknown Wechatpay%-Serial", tostring(body.error))
    assert.is_true(took < 7.5, ("answered after %.1f s (the client's timeout is 5 s)"):format(took))
    -- an explicit refresh meets the same download: nil, err after the timeout, not a raise
    started = socket.gettime()
    _, body = app:get("/bg?step=refresh", 30)
    took = socket.gettime() - started
    assert.is_nil(body.added)
    assert.matches("the certificate download another request started did not end within 5 s", tostring(body.error),
      1, true)
    assert.is_true(took < 7.5, ("answered after %.1f s"):format(took))
  end)

  it("a call that joined a download its request's end left unfinished ends at its own deadline", function()
    local status = app:get("/bg?step=setup&fresh=1")
    assert.are.equal(200, status)
    -- request A's call starts the download (2 s), and A ends with ngx.exit meanwhile
    server:fault("delay", { seconds = 2, then_process = true, count = 1, path = "^/v3/certificates" })
    app:get("/bg?step=start&sleep=0.3")
    local started = socket.gettime()
    local _, body = app:get("/bg?step=echo", 30)
    local took = socket.gettime() - started
    assert.is_nil(body.status)
    assert.matches("did not end within the call's deadline", tostring(body.error), 1, true)
    assert.is_true(took < 6, ("answered after %.1f s"):format(took))
  end)
end)
