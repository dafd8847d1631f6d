--- The application that spec/nginx_spec.lua runs inside a real nginx: a
-- client built in init_by_lua, and handlers that grant coupons through it in
-- every call style, from content handlers, timers and the phases where a
-- call is refused.  Runs under nginx's LuaJIT; the spec drives it over HTTP.
local cjson = require("cjson.safe")

local app = {}

local config, client, users
local results = function() return ngx.shared.app_results end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

local function global_names()
  local names = {}
  for k in pairs(_G) do names[k] = true end
  return names
end

local function grant_json(user, out_request_no)
  return {
    stock_id = "9856000",
    out_request_no = out_request_no,
    user_name = assert(client:encrypt(user.name)),
    id_card_number = assert(client:encrypt(user.id_card)),
    appid = "wx233544546545989",
    card_type = "ID_CARD",
  }
end

-- A grant in one of the call styles; -> coupon_id | nil, err
local function grant(style, user, no)
  local json = grant_json(user, no)
  local res, err
  if style == "sync" then
    res, err = client.v3.multiuse.users._openid_.coupons:post{ openid = user.openid, json = json }
  elseif style == "chain" then
    res, err = client:chain("v3/multiuse/users/{openid}/coupons"):post{ openid = user.openid, json = json }
  elseif style == "path" then
    res, err = client["v3/multiuse/users/{openid}/coupons"]:post{ openid = user.openid, json = json }
  elseif style == "index" then
    res, err = client.v3.multiuse.users[user.openid].coupons:post{ json = json }
  elseif style == "async" then
    res, err = client.v3.multiuse.users._openid_.coupons:postAsync{ openid = user.openid, json = json }:wait()
  else
    error("unknown style " .. tostring(style))
  end
  if not res then return nil, err end
  return res:json().coupon_id
end

local function user_for(openid)
  for _, u in ipairs(users) do
    if u.openid == openid then return u end
  end
  return users[1]
end

--- init_by_lua: build the client (keys read here, by root, once), and
-- optionally make a call: curl is allowed before requests are served.
function app.init(config_path)
  config = assert(cjson.decode(read_file(config_path)))
  users = config.users
  -- key text for clients made later in handlers: workers run as nobody
  config.merchant_pem = read_file(config.merchant_key_file)
  config.platform_pem = read_file(config.platform_public_key_file)
  local before = global_names()
  local wechatpay = require("wechatpay")
  for _, name in ipairs{ "wechatpay.client", "wechatpay.transport.ngx", "wechatpay.transport.curl",
      "wechatpay.nginx", "wechatpay.ratelimit", "wechatpay.dispatcher", "wechatpay.promise" } do
    require(name)
  end
  client = wechatpay.new{
    mchid = config.mchid,
    serial = config.merchant_serial,
    private_key = "file://" .. config.merchant_key_file,
    certs = { [config.platform_key_id] = "file://" .. config.platform_public_key_file },
    base_url = config.base_url,
    cafile = config.cafile,          -- read now: workers (nobody) cannot read the mock's folder
    resolve = config.resolve,
    timeout = config.timeout or 10,
    max_concurrency = config.max_concurrency,
    rate_limit = config.rate_limit,
  }
  app.client = client
  if config.callbacks then
    -- a merchant on certificates: none known at start, all from the download,
    -- kept in a shared dict that the four workers share
    app.cb_client = wechatpay.new{
      mchid = config.mchid,
      serial = config.merchant_serial,
      private_key = "file://" .. config.merchant_key_file,
      certs = {},
      apiv3_key = config.apiv3_key,
      cert_store = wechatpay.certificates.shared_dict_store(ngx.shared.wechatpay_certs),
      base_url = config.base_url,
      resolve = config.resolve,
      timeout = 5,
    }
  end
  if config.apiv2_key then
    -- the certificate and key are read here (root); workers parse them (ngx.ssl) at their first use
    app.v2_client = wechatpay.new{
      mchid = config.mchid, serial = config.merchant_serial,
      private_key = "file://" .. config.merchant_key_file,
      certs = { [config.platform_key_id] = "file://" .. config.platform_public_key_file },
      base_url = config.base_url, resolve = config.resolve, timeout = 5, retry = false,
      apiv2_key = config.apiv2_key, merchant_cert = "file://" .. config.merchant_cert_file,
    }
    app.v2_der_client = wechatpay.new{
      mchid = config.mchid, serial = config.merchant_serial,
      private_key = "private.pkcs8://" .. config.merchant_key_pkcs8,
      certs = { [config.platform_key_id] = "file://" .. config.platform_public_key_file },
      base_url = config.base_url, resolve = config.resolve, timeout = 5, retry = false,
      apiv2_key = config.apiv2_key, merchant_cert = "file://" .. config.merchant_cert_file,
    }
  end
  if config.init_call then
    local coupon, err = grant("sync", users[1], config.init_call)
    ngx.shared.app_results:set("init_call", coupon or ("error: " .. tostring(err)))
  end
  local added = {}
  for k in pairs(global_names()) do
    if not before[k] then added[#added + 1] = tostring(k) end
  end
  table.sort(added)
  ngx.shared.app_results:set("globals_added", table.concat(added, ","))
end

--- init_worker_by_lua: a call here also goes through curl (no request is
-- served yet), on a connection of its own that the call closes.
function app.init_worker()
  if config.callbacks then
    local cb = app.cb_client
    assert(require("wechatpay").ngx.refresh_certificates(cb, { every = 3600, on_result = function(added, err)
      results():set("certs:" .. ngx.worker.id(), cjson.encode{
        added = added, error = err and tostring(type(err) == "table" and err.message or err),
        keys = tostring(cb), downloads = cb:certificate_stats().downloads,
      })
    end }))
  end
  if config.init_worker_call then
    local coupon, err = grant("sync", users[1], config.init_worker_call)
    ngx.shared.app_results:set("init_worker:" .. ngx.worker.id(), coupon or ("error: " .. tostring(err)))
  end
end

local function say_json(value)
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(value))
end

local handlers = {}

function handlers.ping()
  ngx.say("pong")
end

-- /grant?style=&openid=&no=
-- /download?date=&gzip=1&fault_bytes=: a bill streamed through the cosocket
-- transport to a function sink; answers its size, hash and the Lua heap's
-- peak while it ran.
function handlers.download(args)
  local bill, err = client.v3.bill.tradebill:get{ query = { bill_date = args.date,
    tar_type = args.gzip and "GZIP" or nil } }
  if not bill then ngx.status = 502 return say_json{ error = tostring(err), kind = err.kind } end
  local received, heap_peak = 0, 0
  local info, derr = client:download(bill, { to = function(bytes)
    received = received + #bytes
    heap_peak = math.max(heap_peak, collectgarbage("count"))
  end })
  if not info then
    ngx.status = 502
    return say_json{ error = tostring(derr), kind = derr.kind, received = received }
  end
  say_json{ bytes = info.bytes, received = received, hash_value = info.hash_value, gzip = info.gzip,
            heap_peak_kb = heap_peak }
end

function handlers.grant(args)
  if args.timeout_ms then client:set_timeout(tonumber(args.timeout_ms)) end
  local coupon, err = grant(args.style or "sync", user_for(args.openid), args.no)
  if not coupon then
    ngx.status = 502
    return say_json{ error = tostring(err), kind = err and err.kind }
  end
  say_json{ coupon_id = coupon, no = args.no, pid = ngx.worker.pid() }
end

-- /timer?no=: the grant runs in a timer; the handler waits for its result.
function handlers.timer(args)
  local key = "timer:" .. args.no
  local ok, err = ngx.timer.at(0, function(premature)
    if premature then return end
    local coupon, gerr = grant(args.style or "sync", users[1], args.no)
    results():set(key, coupon or ("error: " .. tostring(gerr)))
  end)
  if not ok then ngx.status = 500 return say_json{ error = err } end
  for _ = 1, 500 do
    local v = results():get(key)
    if v then
      if v:find("^error") then ngx.status = 502 return say_json{ error = v } end
      return say_json{ coupon_id = v, no = args.no }
    end
    ngx.sleep(0.01)
  end
  ngx.status = 504
  say_json{ error = "timer did not finish" }
end

-- /batch?n=&prefix=: n grants at once in one request, wechatpay.all.
function handlers.batch(args)
  local wechatpay = require("wechatpay")
  local list = {}
  for i = 1, tonumber(args.n) or 5 do
    local user = users[(i - 1) % #users + 1]
    list[i] = client.v3.multiuse.users._openid_.coupons:postAsync{
      openid = user.openid, json = grant_json(user, args.prefix .. "-" .. i),
    }
  end
  local responses, err = wechatpay.all(list):wait()
  if not responses then ngx.status = 502 return say_json{ error = tostring(err) } end
  local ids = {}
  for i, res in ipairs(responses) do ids[i] = res:json().coupon_id end
  say_json{ coupon_ids = ids }
end

-- /settle?n=&prefix=: the same with wechatpay.settle and the promise chain.
function handlers.settle(args)
  local wechatpay = require("wechatpay")
  local list = {}
  for i = 1, tonumber(args.n) or 3 do
    local user = users[(i - 1) % #users + 1]
    list[i] = client.v3.multiuse.users._openid_.coupons:postAsync{
      openid = user.openid, json = grant_json(user, args.prefix .. "-" .. i),
    }:next(function(res) return res:json().coupon_id end)
  end
  local outcomes = wechatpay.settle(list):wait()
  local ids = {}
  for i, o in ipairs(outcomes) do ids[i] = o.res or tostring(o.err) end
  say_json{ coupon_ids = ids }
end

-- /nested?prefix=: a grant whose promise handler makes a second grant with a
-- synchronous call, and a failing call whose catch handler falls back to a
-- synchronous grant: the request's wait() returns once the handlers have.
function handlers.nested(args)
  local handler_done = false
  local p = client.v3.multiuse.users._openid_.coupons:postAsync{
    openid = users[1].openid, json = grant_json(users[1], args.prefix .. "-A"),
  }:next(function(res)
    local second = assert(client.v3.multiuse.users._openid_.coupons:post{
      openid = users[1].openid, json = grant_json(users[1], args.prefix .. "-B") })
    handler_done = true
    return { res:json().coupon_id, second:json().coupon_id }
  end)
  local ok, ids, err = pcall(p.wait, p)
  if not ok or not ids then ngx.status = 502 return say_json{ error = tostring(ok and err or ids) } end
  local fallback = client.v3.mock.missing:getAsync():catch(function()
    local res = assert(client.v3.multiuse.users._openid_.coupons:post{
      openid = users[1].openid, json = grant_json(users[1], args.prefix .. "-C") })
    return res:json().coupon_id
  end)
  local fok, third, ferr = pcall(fallback.wait, fallback)
  if not fok or not third then ngx.status = 502 return say_json{ error = tostring(fok and ferr or third) } end
  ids[3] = third
  say_json{ coupon_ids = ids, handler_done = handler_done }
end

-- /deadlocked: two calls whose handlers each wait on what only their own
-- return can settle: each wait fails ("nothing is in flight"), nothing hangs.
function handlers.deadlocked()
  local wechatpay = require("wechatpay")
  local list = {}
  for i = 1, 2 do
    local p
    p = client.v3.mock.echo:getAsync():next(function()
      local child = p:next(function() end)   -- settles only after this handler returns
      return (assert(child:wait()))
    end)
    list[i] = p
  end
  local outcomes = wechatpay.settle(list):wait()
  local errs = {}
  for i, o in ipairs(outcomes) do errs[i] = tostring(o.err) end
  say_json{ errors = errs }
end

-- /blocking: a client forced onto curl, called from a handler: refused.
function handlers.blocking()
  local wechatpay = require("wechatpay")
  local ok, err = pcall(function()
    local c = wechatpay.new{
      mchid = config.mchid, serial = config.merchant_serial,
      private_key = config.merchant_pem,
      certs = { [config.platform_key_id] = config.platform_pem },
      base_url = config.base_url, transport = "curl",
    }
    return c.v3.mock.echo:get()
  end)
  say_json{ ok = ok, error = tostring(err) }
end

-- /ip_literal: a base_url naming 127.0.0.1 is refused at the first call.
function handlers.ip_literal()
  local wechatpay = require("wechatpay")
  local c = wechatpay.new{
    mchid = config.mchid, serial = config.merchant_serial,
    private_key = config.merchant_pem,
    certs = { [config.platform_key_id] = config.platform_pem },
    base_url = config.ip_base_url,
  }
  local ok, err = pcall(function() return c.v3.mock.echo:get() end)
  say_json{ ok = ok, error = tostring(err) }
end

-- /raw?host=&port=&path=&max_body=&timeout=&connect_timeout=&body_kb=: one
-- request through the cosocket transport itself (a POST of body_kb KiB when
-- given), -> { response = } or { failure = }; /raw_resolved: the same in a
-- location with a resolver (support.dns).
function handlers.raw(args)
  local transport = require("wechatpay.transport.ngx").new{
    resolve = { ["localhost:" .. args.port] = "127.0.0.1", ["wrong.test:" .. args.port] = "127.0.0.1" },
    max_body = tonumber(args.max_body),
  }
  local res, fail, done
  local body = args.body_kb and string.rep("x", tonumber(args.body_kb) * 1024) or nil
  transport:submit({
    method = body and "POST" or args.method or "GET", url = "https://" .. args.host .. ":" .. args.port .. args.path,
    headers = { "Accept: */*" }, body = body,
    timeout = tonumber(args.timeout) or 5, connect_timeout = tonumber(args.connect_timeout) or 2,
  }, function(r, f) res, fail, done = r, f, true end)
  for _ = 1, 100 do
    if done then break end
    transport:step(1)
  end
  say_json{ response = res, failure = fail }
end

handlers.raw_resolved = handlers.raw

-- /v2?op=redpack|micropay&no=&security=0|1[&der=1]: an APIv2 call over
-- cosockets (der=1: by the client whose key is a DER form),
-- -> { xml = the answer } or { error = { kind, code, message } }
function handlers.v2(args)
  local c = args.der == "1" and app.v2_der_client or app.v2_client
  local res, err
  if args.op == "redpack" then
    res, err = c.v2.mmpaymkttransfers.sendredpack:post{ security = args.security ~= "0", xml = {
      mch_billno = args.no, wxappid = "wx2421b1c4370ec43b", send_name = "nginx", re_openid = "oNGINX_openid",
      total_amount = 100, total_num = 1, wishing = "w", client_ip = "127.0.0.1", act_name = "a", remark = "r" } }
  else
    res, err = c.v2.pay.micropay:post{ xml = { appid = "wx2421b1c4370ec43b", body = "b", out_trade_no = args.no,
      total_fee = 1, spbill_create_ip = "127.0.0.1", auth_code = "1" } }
  end
  if not res then return say_json{ error = { kind = err.kind, code = err.code, message = err.message } } end
  say_json{ xml = res:xml() }
end

-- /crypto: the crypto of one grant (2 OAEP, a sign, a verify) and no call:
-- what a grant handler costs without the transport (bench/client/grants.lua).
function handlers.crypto()
  local core = require("wechatpay.core")
  local key = require("wechatpay.key")
  app.crypto_keys = app.crypto_keys or {
    private = assert(key.private(config.merchant_pem)),
    public = assert(key.public(config.platform_pem)),
  }
  local json = grant_json(users[1], "CRYPTO")
  local body = cjson.encode(json)
  core.authorization(app.crypto_keys.private, config.mchid, config.merchant_serial, "POST",
    "/v3/multiuse/users/" .. users[1].openid .. "/coupons", body)
  core.rsa_verify(app.crypto_keys.public, "1700000000\nNONCE\n{\"coupon_id\":\"1\"}\n", ("A"):rep(344))
  say_json{ coupon_id = "none", no = "CRYPTO" }
end

-- /cb_echo: a signed call with the callbacks client (certificates from the
-- shared dict), as a handler that also calls WeChat Pay makes one
function handlers.cb_echo()
  local res, err = app.cb_client.v3.mock.echo:get()
  local echoed = res and res:json()
  say_json{ status = res and res.status, error = err and tostring(err), pid = ngx.worker.pid(),
    user_agent = echoed and echoed.headers["user-agent"] }
end

-- /upload?size=&tag=&filename=: a PNG-typed file of size bytes (made as
-- spec/support/media_samples.lua makes it) uploaded with file = { content = }.
function handlers.upload(args)
  local samples = require("support.media_samples")
  local res, err = client.v3.merchant.media.upload:post{
    file = { content = samples.bytes("png", tonumber(args.size), args.tag), filename = args.filename },
  }
  if not res then
    ngx.status = 502
    return say_json{ error = tostring(err), kind = err and err.kind }
  end
  say_json{ media_id = res:json().media_id }
end

-- /bg?step=setup|shift|call|start|echo|keys: the periodic certificate refresh, found
-- due by a call of a request that then ends at once with ngx.exit.  The
-- minute refresh_interval takes at least is skipped by moving
-- core.monotonic (in this worker) forward at step=shift, between calls.
local bg = {}
function handlers.bg(args)
  local core = require("wechatpay.core")
  if args.step == "setup" then
    if not bg.real then
      bg.real, bg.offset = core.monotonic, 0
      core.monotonic = function() return bg.real() + bg.offset end
    end
    bg.client = require("wechatpay").new{
      mchid = config.mchid, serial = config.merchant_serial, private_key = config.merchant_pem,
      certs = { [config.platform_key_id] = config.platform_pem }, apiv3_key = config.apiv3_key,
      base_url = config.base_url, resolve = config.resolve, timeout = 5, refresh_interval = 60,
      retry = args.fresh and { deadline = 3 } or nil,
    }
    if args.fresh then return say_json{} end   -- no certificate yet: the first call downloads them
    local added, err = bg.client:refresh_certificates()
    return say_json{ added = added, error = err and tostring(err) }
  elseif args.step == "shift" then
    bg.offset = bg.offset + 61
    return say_json{ offset = bg.offset }
  elseif args.step == "call" then
    local res, err = bg.client.v3.mock.echo:get()
    ngx.say(res and res.status or tostring(err))
    return ngx.exit(200)
  elseif args.step == "start" then
    -- a call left running, then the request ends (ngx.exit kills its light threads)
    bg.client.v3.mock.echo:getAsync{}
    ngx.sleep(tonumber(args.sleep) or 0.3)
    return ngx.exit(200)
  elseif args.step == "verify" then   -- a callback's verification, its message given in the query
    local headers = { ["Wechatpay-Timestamp"] = args.ts, ["Wechatpay-Nonce"] = args.nonce,
      ["Wechatpay-Signature"] = args.sig, ["Wechatpay-Serial"] = args.serial }
    local ok, verified, err = pcall(bg.client.verify, bg.client, headers, args.body)
    return say_json{ verified = ok and verified or nil, error = not ok and tostring(verified) or err and tostring(err) }
  elseif args.step == "refresh" then   -- an explicit refresh, as a handler or timer makes it
    local ok, added, err = pcall(bg.client.refresh_certificates, bg.client)
    return say_json{ added = ok and added or nil, error = not ok and tostring(added) or err and tostring(err) }
  elseif args.step == "echo" then   -- a call that answers as any handler would
    local ok, res, err = pcall(function() return bg.client.v3.mock.echo:get() end)
    return say_json{ status = ok and res and res.status or nil, error = not ok and tostring(res) or err and tostring(err) }
  end
  say_json{ keys = bg.client:platform_key_ids(), downloads = bg.client:certificate_stats().downloads }
end

-- /many?n=: n calls one after another in this request, as a long-lived
-- timer makes them -> the Lua heap (KB, after full collections) after 100
-- calls and after n more
-- (mode=queued: in batches of 50 async calls through a client of
-- max_concurrency 2, so most are sent from the callback of one that ended)
function handlers.many(args)
  local c = client
  local function calls(k)
    if args.mode ~= "queued" then
      for _ = 1, k do assert(c.v3.mock.echo.many:get()) end
      return
    end
    for _ = 1, k / 50 do
      local batch = {}
      for i = 1, 50 do batch[i] = c.v3.mock.echo.many:getAsync{} end
      assert(require("wechatpay").all(batch):wait())
    end
  end
  if args.mode == "queued" then
    c = require("wechatpay").new{
      mchid = config.mchid, serial = config.merchant_serial, private_key = config.merchant_pem,
      certs = { [config.platform_key_id] = config.platform_pem }, base_url = config.base_url,
      resolve = config.resolve, timeout = 5, max_concurrency = 2,
    }
  end
  local function heap() collectgarbage() collectgarbage() return collectgarbage("count") end
  calls(100)
  local before = heap()
  calls(tonumber(args.n) or 1000)
  say_json{ before = before, after = heap() }
end

-- /result?key=
function handlers.result(args)
  say_json{ value = results():get(args.key) }
end

-- ---- on_call and backup hosts (spec/observe_spec.lua) ----------------------

-- The hook of the observed clients: a line in the error log, a counter per
-- method, path template and status in a shared dict (what /metrics shows),
-- and the records of the current request (ngx.ctx: its light threads share it).
local function count_call(record)
  ngx.log(ngx.WARN, "wechatpay call ", cjson.encode(record))
  local key = ('wechatpay_calls_total{method="%s",path="%s",status="%s"}')
    :format(record.method, record.path, record.status or record.error)
  results():incr(key, 1, 0)
  local list = ngx.ctx.observed
  if list then list[#list + 1] = record end
end

-- One client per worker, kind and primary, made at its first use: a
-- primary on a closed port (dead=; or a port where no TLS is spoken), then the mock; its memory of the dead host lasts as
-- long as the worker.
local observed = {}
local function observed_client(dead, raising)
  local kind = (raising and "raising" or "counting") .. ":" .. dead
  if observed[kind] then return observed[kind] end
  local port = config.base_url:match(":(%d+)/$")
  observed[kind] = require("wechatpay").new{
    mchid = config.mchid, serial = config.merchant_serial,
    private_key = config.merchant_pem,
    certs = { [config.platform_key_id] = config.platform_pem },
    base_url = { "https://localhost:" .. dead .. "/", config.base_url },
    resolve = { ["localhost:" .. dead] = "127.0.0.1", ["localhost:" .. port] = "127.0.0.1" },
    timeout = 5,
    on_call = raising and function() error("the hook broke") end or count_call,
  }
  return observed[kind]
end

-- /observed?dead=&n=&raise=: n echo GETs and a grant addressed with the
-- openid in the path; -> { records = the records of this request, errors = }
function handlers.observed(args)
  local c = observed_client(args.dead, args.raise == "1")
  ngx.ctx.observed = {}
  local failures = {}
  for _ = 1, tonumber(args.n) or 1 do
    local res, err = c.v3.mock.echo:get{ query = { card = "SecretQuery" } }
    if not res then failures[#failures + 1] = tostring(err) end
  end
  local user = users[1]
  local json = grant_json(user, args.no)
  local res, err = c.v3.multiuse.users[user.openid].coupons:post{ json = json }
  if not res then failures[#failures + 1] = tostring(err) end
  say_json{ records = ngx.ctx.observed, errors = failures }
end

-- /backup_ip_literal: a backup naming 127.0.0.1 is refused like a primary would be.
function handlers.backup_ip_literal()
  local c = require("wechatpay").new{
    mchid = config.mchid, serial = config.merchant_serial,
    private_key = config.merchant_pem,
    certs = { [config.platform_key_id] = config.platform_pem },
    base_url = { config.base_url, config.ip_base_url }, resolve = config.resolve,
  }
  local ok, err = pcall(function() return c.v3.mock.echo:get() end)
  say_json{ ok = ok, error = tostring(err) }
end

-- /metrics: the counters in Prometheus' text format.
function handlers.metrics()
  ngx.header["Content-Type"] = "text/plain; version=0.0.4"
  ngx.say("# TYPE wechatpay_calls_total counter")
  for _, key in ipairs(results():get_keys(0)) do
    if key:find("^wechatpay_calls_total{") then ngx.say(key, " ", results():get(key)) end
  end
end

--- /notify: the notify_url, one line of wechatpay.ngx.  The handler counts
-- its calls per event id in app_results (all workers), sleeps for
-- resource.sleep seconds, and fails when resource.fail is set, or for its
-- first resource.fail_times calls.  ?store=default: no dedupe option.
function app.notify()
  local wechatpay = require("wechatpay")
  wechatpay.ngx.notification(app.cb_client, function(event)
    if event.resource.sleep then ngx.sleep(event.resource.sleep) end
    local calls = results():incr("handled:" .. event.id, 1, 0)
    results():set("event:" .. event.id, cjson.encode{ resource = event.resource, pid = ngx.worker.pid() })
    if event.resource.fail_times and calls <= event.resource.fail_times then return false end
    return not event.resource.fail
  end, { dedupe = ngx.var.arg_store ~= "default" and wechatpay.dedupe.shared_dict(ngx.shared.wechatpay_events) or nil })
end

--- The call a forbidden phase makes: -> the error message.
function app.forbidden_call(phase)
  local ok, err = pcall(function() return client.v3.mock.echo:get() end)
  local message = ok and "no error" or tostring(err)
  results():set("phase:" .. phase, message)
  return message
end

function app.handle()
  local name = ngx.var.uri:match("^/([%w_]+)")
  local handler = handlers[name]
  if not handler then ngx.status = 404 return ngx.say("no handler") end
  return handler(ngx.req.get_uri_args())
end

return app
