-- Callbacks and platform certificates inside a real nginx with four workers
-- (spec/support/nginx.lua with callbacks = true): the mock, signing with its
-- certificates, delivers notifications (server:notify) to a /notify location
-- whose whole content handler is wechatpay.ngx.notification, deduplicated in
-- a lua_shared_dict; the workers start with an empty shared-dict cert store
-- and fill it with wechatpay.ngx.refresh_certificates from init_worker.
local cjson = require("cjson")
local socket = require("socket")
local http = require("socket.http")
local ltn12 = require("ltn12")
local mock = require("wechatpay.mock")
local nginx = require("support.nginx")

describe("inside nginx, four workers: callbacks and shared certificates", function()
  local server, app, url

  setup(function()
    server = assert(mock.start{ latency = 0, rate_limit = false, sign_with = "certificate" })
    app = nginx.start(server, { workers = 4, callbacks = true })
    url = app:url("/notify")
  end)
  teardown(function()
    if app then app:stop() end
    if server then server:stop() end
  end)

  local function result(key)
    local status, body = app:get("/result?key=" .. key)
    assert.are.equal(200, status)
    return body.value
  end

  local function handled(id)
    return result("handled:" .. id) or 0
  end

  -- Delivers a notification and waits until the mock is done with it.
  local function deliver(spec, to)
    local n, id = server:notify(to or url, spec)
    local deadline = socket.gettime() + 10
    local record
    repeat
      socket.sleep(0.05)
      record = server:notification(n)
    until (record and record.done) or socket.gettime() > deadline
    assert(record and record.done, "the mock did not finish notification " .. n)
    local statuses = {}
    for _, a in ipairs(record.attempts) do statuses[#statuses + 1] = a.status end
    return record, statuses, id
  end

  -- first: the workers' timers ran at start, with the store empty
  it("four workers started with an empty store share one certificate set: the mock sees one download", function()
    local records = {}
    local deadline = socket.gettime() + 10
    for w = 0, 3 do
      repeat
        records[w] = result("certs:" .. w)
        if not records[w] then socket.sleep(0.05) end
      until records[w] or socket.gettime() > deadline
      assert(records[w], "worker " .. w .. " reported no refresh:\n" .. app:error_log())
    end
    local downloads = 0
    for w = 0, 3 do
      local r = cjson.decode(records[w])
      assert.is_nil(r.error, "worker " .. w)
      assert.truthy(r.keys:find("2 platform keys", 1, true), "worker " .. w .. ": " .. r.keys)
      downloads = downloads + r.downloads
    end
    assert.are.equal(1, downloads)
    assert.are.equal(1, server:stats().certificate_downloads)
  end)

  it("a callback is verified, decrypted, handled once and answered 204", function()
    local _, statuses, id = deliver{ resource = { out_trade_no = "NGX-1", amount = { total = 100 } } }
    assert.same({ 204 }, statuses)
    assert.are.equal(1, handled(id))
    local event = cjson.decode(result("event:" .. id))
    assert.are.equal("NGX-1", event.resource.out_trade_no)
  end)

  it("every fault gets its documented answer (401, FAIL JSON) and the handler is not called", function()
    for _, fault in ipairs{ "tamper_body", "stale_timestamp", "signtest", "unknown_serial" } do
      local record, statuses, id = deliver{ fault = fault, resource = { out_trade_no = fault }, schedule = {} }
      assert.same({ 401 }, statuses, fault)
      assert.are.equal("FAIL", cjson.decode(record.attempts[1].answer).code, fault)
      assert.are.equal(0, handled(id), fault)
    end
    assert.are.equal(1, server:stats().certificate_downloads)   -- no fault made anyone download
  end)

  it("the same id twice in a row is handled once across the workers, both acknowledged", function()
    local _, statuses, id = deliver{ fault = "duplicate", resource = { out_trade_no = "NGX-DUP" } }
    assert.same({ 204, 204 }, statuses)
    assert.are.equal(1, handled(id))
  end)

  it("the same id twice at once is handled once: the second gets 503 while the first runs, then 204", function()
    local _, statuses, id = deliver{ fault = "concurrent", resource = { out_trade_no = "NGX-CON", sleep = 0.4 } }
    assert.are.equal(1, handled(id))
    local s503, s204 = 0, 0
    for _, s in ipairs(statuses) do
      if s == 503 then s503 = s503 + 1 elseif s == 204 then s204 = s204 + 1 end
    end
    assert.are.equal(2, s204, cjson.encode(statuses))
    assert.is_true(s503 >= 1, cjson.encode(statuses))
    -- the log says why in words
    local log = app:error_log()
    assert.truthy(log:find("answered 503: event " .. id .. " is being handled by another delivery", 1, true), log)
  end)

  it("without a dedupe store under four workers, the log says each worker remembers only its own events", function()
    local _, statuses = deliver({ resource = { out_trade_no = "NGX-DEFAULT" } }, app:url("/notify?store=default"))
    assert.same({ 204 }, statuses)
    local log = app:error_log()
    assert.truthy(log:find("notification without a dedupe store under 4 workers", 1, true), log)
  end)

  it("a handler failure answers 500 FAIL, releases the claim, and the redelivery is handled", function()
    local record, statuses, id = deliver{ resource = { out_trade_no = "NGX-FAIL", fail_times = 2 },
      schedule = { 0.05, 0.05, 0.05 } }
    assert.same({ 500, 500, 204 }, statuses)
    assert.are.equal(3, handled(id))   -- each redelivery reached the handler: no claim was left behind
    assert.are.equal("FAIL", cjson.decode(record.attempts[1].answer).code)
  end)

  it("a rotation mid-traffic: callbacks at once in four workers, all handled first time, one download", function()
    local downloads = server:stats().certificate_downloads
    server:rotate_certificates()
    local pending = {}
    for i = 1, 12 do
      local n, id = server:notify(url, { resource = { out_trade_no = "NGX-ROT-" .. i }, schedule = {} })
      pending[#pending + 1] = { n = n, id = id }
    end
    local deadline = socket.gettime() + 15
    for _, p in ipairs(pending) do
      local record
      repeat
        record = server:notification(p.n)
        if not (record and record.done) then socket.sleep(0.05) end
      until (record and record.done) or socket.gettime() > deadline
      assert(record and record.done, "the mock did not finish notification " .. p.n)
      assert.are.equal(1, #record.attempts, p.id)
      assert.are.equal(204, record.attempts[1].status, p.id .. ": " .. tostring(record.attempts[1].answer)
        .. "\n" .. app:error_log())
      assert.are.equal(1, handled(p.id))
    end
    assert.are.equal(downloads + 1, server:stats().certificate_downloads)
  end)

  it("a callback that nginx spooled to a temp file (over client_body_buffer_size 1k) is read and verified", function()
    local padding = ("0123456789abcdef"):rep(256)   -- 4 KiB of resource, more once sealed
    local _, statuses, id = deliver{ resource = { out_trade_no = "NGX-BIG", padding = padding } }
    assert.same({ 204 }, statuses)
    assert.are.equal(1, handled(id))
    assert.are.equal(padding, cjson.decode(result("event:" .. id)).resource.padding)
    assert.truthy(app:error_log():find("buffered to a temporary file", 1, true))
  end)

  it("a body too large to be a callback is refused with 413, the handler not called", function()
    local body = ("x"):rep(1024 * 1024 + 1)
    local chunks = {}
    local ok, status = http.request{
      url = url, method = "POST", source = ltn12.source.string(body), sink = ltn12.sink.table(chunks),
      headers = { ["content-type"] = "application/json", ["content-length"] = #body },
    }
    assert.truthy(ok)
    assert.are.equal(413, status)
    assert.are.equal("FAIL", cjson.decode(table.concat(chunks)).code)
  end)
end)

-- A mock of its own: its one rotation is used above by the callbacks.
describe("inside nginx, four workers: calls during a certificate rotation", function()
  local server2, app2

  setup(function()
    server2 = assert(mock.start{ latency = 0, rate_limit = false, sign_with = "certificate" })
    app2 = nginx.start(server2, { workers = 4, callbacks = true })
    -- the workers' first download (init_worker) is done before the rotation
    local deadline = socket.gettime() + 10
    while server2:stats().certificate_downloads < 1 and socket.gettime() < deadline do socket.sleep(0.05) end
  end)
  teardown(function()
    if app2 then app2:stop() end
    if server2 then server2:stop() end
  end)

  it("a rotation mid-traffic: calls at once in four workers all verify, after one download", function()
    local downloads = server2:stats().certificate_downloads
    server2:rotate_certificates()
    local urls = {}
    for i = 1, 16 do urls[i] = "'" .. app2:url("/cb_echo?n=" .. i) .. "'" end
    local pipe = assert(io.popen("curl -s --parallel --parallel-max 16 -w '\\n' " .. table.concat(urls, " ") .. " 2>/dev/null"))
    local output = pipe:read("*a")
    pipe:close()
    local answers, pids = 0, {}
    for line in output:gmatch("[^\n]+") do
      local answer = cjson.decode(line)
      assert.are.equal(200, answer.status, tostring(answer.error))
      answers = answers + 1
      pids[answer.pid] = true
    end
    assert.are.equal(16, answers)
    local workers = 0
    for _ in pairs(pids) do workers = workers + 1 end
    assert.is_true(workers >= 2, "the calls reached one worker only")
    assert.are.equal(downloads + 1, server2:stats().certificate_downloads)
  end)

  it("a call from a request names the HTTP stack that sent it (ngx_lua, not curl) in its User-Agent", function()
    local status, answer = app2:get("/cb_echo")
    assert.are.equal(200, status)
    assert.are.equal(200, answer.status, tostring(answer.error))
    assert.truthy(answer.user_agent:find("^wechatpay%-lua/[%d.]+ %(.*; ngx_lua/%d+%.%d+%.%d+; "), answer.user_agent)
    assert.falsy(answer.user_agent:find("curl", 1, true), answer.user_agent)
  end)
end)
