--- The v3 client: construction and the public methods.  The request path,
-- one module a hop (docs/ARCHITECTURE.md):
--   chain (path) -> request.prepare -> dispatcher (queue) -> request.sign
--   -> transport -> verify.response -> retry.delay -> promise
--
--   local client = wechatpay.new{ mchid =, serial =, private_key =, certs = {...} }
--   local res, err = client.v3.multiuse.users._openid_.coupons:post{ openid =, json = {...} }
local core = require("wechatpay.core")
local aes = require("wechatpay.aes")
local certificates = require("wechatpay.certificates")
local chain = require("wechatpay.chain")
local config = require("wechatpay.config")
local curl_transport = require("wechatpay.transport.curl")
local dedupe = require("wechatpay.dedupe")
local dispatcher = require("wechatpay.dispatcher")
local download = require("wechatpay.download")
local errors = require("wechatpay.errors")
local hosts = require("wechatpay.hosts")
local nginx = require("wechatpay.nginx")
local notification = require("wechatpay.notification")
local ngx_transport = require("wechatpay.transport.ngx")
local observe = require("wechatpay.observe")
local promise = require("wechatpay.promise")
local ratelimit = require("wechatpay.ratelimit")
local request = require("wechatpay.request")
local response = require("wechatpay.response")
local retry = require("wechatpay.retry")
local verify = require("wechatpay.verify")
local v2answer = require("wechatpay.v2.answer")
local v2notification = require("wechatpay.v2.notification")
local v2request = require("wechatpay.v2.request")

local VERSION = "0.1.0"

local client = {}
local methods = {}

-- The key of a client's own state: no segment name can reach it, so the
-- transport, dispatcher and keys are not fields a caller can read or replace.
local STATE = {}

local send_async   -- the one path of every call, below

-- Settings a caller may read (never write) as fields.  base_url is the
-- primary; base_urls a copy of the whole list, backups included.
local READABLE = { mchid = true, serial = true, base_url = true, base_urls = true, platform_key_id = true }

local client_mt = {}

function client_mt.__index(self, name)
  local method = methods[name]
  if method ~= nil then return method end
  local settings = rawget(self, STATE).settings
  if READABLE[name] then
    if name == "base_urls" then
      local copy = {}
      for i, url in ipairs(settings.base_urls) do copy[i] = url end
      return copy
    end
    return name == "platform_key_id" and settings.encryption_key_id or settings[name]
  end
  if type(name) == "string" and name:find("/", 1, true) then
    return chain.from_path(self, name)
  end
  return chain.child(self, name)
end

function client_mt.__newindex(_, name)
  errors.raise(("wechatpay client: '%s' cannot be set: a client is configured once, by wechatpay.new")
    :format(tostring(name)))
end

function client_mt.__tostring(self)
  local settings = self[STATE].settings
  local n = 0
  for _ in pairs(settings.platform_keys) do n = n + 1 end
  return ("wechatpay.client (mchid %s, serial %s, %d platform key%s, %s)")
    :format(settings.mchid, settings.serial, n, n == 1 and "" or "s", table.concat(settings.base_urls, " then "))
end

-- Names the HTTP stack that sends: cosockets inside nginx (calls made in
-- init phases still go through curl, but they are few), libcurl elsewhere.
local function user_agent()
  local runtime = jit and jit.version or _VERSION
  local stack = "curl/" .. core.curl_version
  if nginx.ACTIVE and type(ngx.config) == "table" and ngx.config.ngx_lua_version then
    local v = ngx.config.ngx_lua_version
    stack = ("ngx_lua/%d.%d.%d"):format(math.floor(v / 1000000), math.floor(v / 1000) % 1000, v % 1000)
  end
  return ("wechatpay-lua/%s (%s; %s; %s)"):format(VERSION, runtime, stack, core.crypto_backend)
end

local function new_curl(settings)
  return curl_transport.new{
    cafile = settings.cafile, ca_pem = settings.ca_pem, capath = settings.capath, proxy = settings.proxy,
    resolve = settings.resolve, max_connections = settings.max_concurrency,
    client_tls = settings.v2 and settings.v2.tls and settings.v2.tls(),   -- APIv2 security = true
  }
end

--- wechatpay.new(options) -> client; raises on a configuration mistake.
-- transport: "auto" (cosockets inside nginx, else curl), "curl", "ngx", or
-- an object (docs/ARCHITECTURE.md).
function client.new(opts)
  local settings = config.check(opts, user_agent())
  local choice = settings.transport or "auto"
  settings.transport = nil
  local ok, limiter = pcall(ratelimit.new, settings.rate_limit, settings.mchid)
  if not ok then errors.raise(limiter) end
  local state = {
    settings = settings, limiter = limiter, timeout_key = {},
    on_call = settings.on_call,
    host_name = settings.base_url:match("^https://(.*)$"),
    -- only with backups: a client with one base_url sends as it always did
    hosts = #settings.base_urls > 1 and hosts.new(settings.base_urls, settings.failover_cooldown) or nil,
  }
  if settings.v2 and settings.v2.tls then
    -- APIv2 mutual TLS over cosockets: parsed once per worker, kept here
    state.ngx_client_tls = { source = settings.v2.tls, serial = settings.v2.merchant_cert_serial }
  end
  if choice == "ngx" and not nginx.ACTIVE then
    errors.raise("wechatpay.new: transport = \"ngx\" needs nginx's Lua module (OpenResty); outside nginx use \"curl\"")
  end
  if nginx.ACTIVE and (choice == "auto" or choice == "ngx") then
    -- One dispatcher per request (or timer) context, made at its first call:
    -- a request never waits for, nor runs, work queued by another.
    state.per_context = {}
    -- Options only curl honours: used by calls in init phases, not by cosockets.
    for _, name in ipairs{ "cafile", "capath", "proxy" } do
      if settings[name] then
        nginx.warn(("wechatpay.new: %s is used by calls made in init_by_lua/init_worker (curl) only: calls "
          .. "in requests and timers use cosockets, which %s"):format(name, name == "proxy"
          and "connect directly (no proxy)" or "verify against lua_ssl_trusted_certificate"))
      end
    end
  else
    local transport = type(choice) == "table" and choice or new_curl(settings)
    state.blocking = transport.nonblocking ~= true and (type(choice) == "table" and "given" or "curl")
    state.dispatcher = dispatcher.new(transport, {
      max_concurrency = settings.max_concurrency, limiter = limiter,
    })
  end
  local self = setmetatable({ [STATE] = state }, client_mt)
  if settings.apiv3_key or settings.cert_store then
    state.certs = certificates.manager{
      keys = settings.platform_keys, apiv3_key = settings.apiv3_key, merchant_serial = settings.serial,
      store = settings.cert_store, interval = settings.refresh_interval,
      fetch = function(check) return send_async(self, "GET", certificates.PATH, nil, check) end,
      -- a download ends within its call's deadline: one older cannot settle
      stale_after = 2 * math.max(settings.timeout, settings.retry.deadline) + 60,
      -- inside nginx, a request or timer may wait for another worker's download
      sleeper = function() return nginx.mode() == "cosocket" and ngx.sleep or nil end,
      -- picked again at every change: a certificate that expires later
      -- takes over encryption (and the default Wechatpay-Serial) before
      -- the one in use expires
      on_change = function()
        settings.encryption_key_id = config.pick_encryption_key(settings.platform_keys)
      end,
    }
  end
  return self
end

-- The dispatcher a call made now goes to.  Inside nginx: the current
-- request's own (cosockets), or, before requests are served (init_by_lua,
-- init_worker), a curl one for this call alone, closed once it settles, so
-- nothing it holds outlives the call or crosses a fork.  Elsewhere: the
-- client's one dispatcher.  Raises where no call may be made.
local function dispatcher_for_call(state)
  local mode, phase = nginx.mode()
  if mode == nil and phase ~= nil then errors.raise(nginx.phase_error(phase)) end
  if state.dispatcher then
    if mode == "cosocket" and state.blocking then
      errors.raise(nginx.blocking_error(phase, state.blocking == "curl" and "curl" or "given"))
    end
    return state.dispatcher
  end
  local settings = state.settings
  if state.closed then
    local closed = dispatcher.new({ submit = function() end, step = function() end })
    closed:close()
    return closed
  end
  if mode == "blocking" then
    return dispatcher.new(new_curl(settings), { max_concurrency = settings.max_concurrency, limiter = state.limiter }), true
  end
  local ctx = nginx.context()
  local own = ctx[state.per_context]
  if own then return own end
  for _, base_url in ipairs(settings.base_urls) do
    local host = ngx_transport.parse_url(base_url .. "/")
    if ngx_transport.is_ip_literal(host) then errors.raise(nginx.ip_literal_error(base_url)) end
  end
  own = dispatcher.new(ngx_transport.new{ resolve = settings.resolve, pool_size = settings.max_concurrency,
    client_tls = state.ngx_client_tls }, {
    max_concurrency = settings.max_concurrency, limiter = state.limiter,
  })
  ctx[state.per_context] = own
  return own
end

-- The dispatcher of the current context, if it has one (step, pending, close).
local function current_dispatcher(state)
  if state.dispatcher then return state.dispatcher end
  local mode = nginx.mode()
  if mode ~= "cosocket" then return nil end
  return nginx.context()[state.per_context]
end

-- Jitter from the CSPRNG: math.random starts from the same seed in every
-- nginx worker, and their retries would align.
local function jitter()
  local a, b, c = core.random_bytes(3):byte(1, 3)
  return (a * 65536 + b * 256 + c) / 16777216
end

-- A certificate refresh on the dispatcher a call made now would use.
local function refresh_certificates(state, quiet, max_age)
  local queue, own = dispatcher_for_call(state)
  local p = state.certs:refresh_async(queue, quiet, max_age)
  if own then p:next(function() queue:close() end, function() queue:close() end) end
  return p, queue
end

-- refresh:wait() for a refresh from refresh_certificates -> what it
-- settled with.  Inside nginx a download another request (or timer)
-- drives can only be waited for by sleeping: only its own context may step
-- its dispatcher, and it ends with that context, perhaps never settling,
-- so that wait ends after `seconds`.
local function await_refresh(refreshing, queue, seconds)
  if nginx.mode() == "cosocket" and refreshing.state == "pending" and refreshing.driver ~= queue then
    local deadline = core.monotonic() + seconds
    while refreshing.state == "pending" and core.monotonic() < deadline do nginx.pause() end
    if refreshing.state == "pending" then
      return nil, errors.new("timeout", ("the certificate download another request started did not end within %g s")
        :format(seconds))
    end
  end
  return refreshing:wait()
end

-- The periodic refresh, which no call waits for.  Inside nginx it runs in
-- a timer of its own, not on the light threads of the request that found
-- it due: ngx.exit (wechatpay.ngx.notification ends with it) would abort
-- the download midway, and that request would wait on another worker's
-- lock before sending its own call.
local function refresh_in_background(state)
  local certs = state.certs
  if nginx.mode() ~= "cosocket" then
    refresh_certificates(state, true):catch(function() end)
    return
  end
  certs:scheduled(true)
  local ok, err = ngx.timer.at(0, function(premature)
    certs:scheduled(false)
    if premature then return end
    local settled, raised = pcall(function()
      local refreshing, queue = refresh_certificates(state, true)
      return await_refresh(refreshing, queue, state.settings.timeout)
    end)
    if not settled then nginx.warn("wechatpay: the periodic certificate refresh failed: " .. tostring(raised)) end
  end)
  if not ok then
    certs:scheduled(false)
    nginx.warn("wechatpay: cannot schedule the periodic certificate refresh: " .. tostring(err))
  end
end

--- client:chain("v3/multiuse/users/{openid}/coupons") -> node
function methods.chain(self, path)
  return chain.from_path(self, path)
end

-- A transport failure as an error of the call.
local function transport_error(failure, target)
  if errors.is_error(failure) then return failure end
  if type(failure) ~= "table" then failure = { message = tostring(failure) } end
  -- a streamed body's consumer interrupted (Ctrl-C): the transport raises it again
  if failure.kind == "interrupted" then
    return errors.from_raise(failure.raised, "while receiving " .. target:match("^[^?]*"))
  end
  local kind = (failure.kind == "timeout" or failure.kind == "closed") and failure.kind or "network"
  return errors.new(kind, tostring(failure.message or "no response") .. " (" .. target:match("^[^?]*") .. ")",
    { sent = failure.sent, retry = failure.retry })
end

-- Whether an error may move a call to the next base_url: "unreached" when
-- nothing of it reached the host (connect, DNS, TLS), "sent" when the host
-- may have acted on it (a timeout or reset after sending, a 5xx), else nil.
local function failover_reason(err)
  if err.kind == "network" or err.kind == "timeout" then
    -- "safe" with bytes sent: a replayable request on a reused connection
    -- that closed unanswered, which reached the host (not down)
    if err.retry == "safe" then return (err.sent or 0) == 0 and "unreached" or "sent" end
    if err.retry == "idempotent" then return "sent" end
  elseif err.kind == "http" and type(err.status) == "number" and err.status >= 500 then
    return "sent"
  end
  return nil
end

-- send_async(method, path, options, check [, protocol [, on_chunk]]) ->
-- promise: the one path of every call; check(raw, target, prepared) ->
-- response | nil, err judges an answer (verify.response for API calls, the
-- download's own check for certificates and bills, v2.answer for APIv2).
-- protocol: the prepare/sign pair, wechatpay.request (v3, the default) or
-- wechatpay.v2.request.  on_chunk: a 2xx body streamed to it (bills).
--
-- With backups (base_url a list), a round of attempts visits each host at
-- most once: one that was not reached hands the call to the next at once;
-- one that timed out or answered 5xx does too when a replay is harmless (a
-- GET, or what the retry policy judges idempotent).  Every attempt is
-- signed anew, within the call's deadline (the longer of its timeout and
-- the retry deadline).  Retries (retry.lua) count rounds, not failovers.
send_async = function(self, method, path, opts, check, protocol, on_chunk)
  local state = self[STATE]
  local settings, certs = state.settings, state.certs
  protocol = protocol or request
  local prepared, refused = protocol.prepare(settings, method, path, opts)
  -- a file to upload that cannot be sent: the call fails, nothing is queued
  if not prepared then return promise.rejected(refused) end
  prepared.on_chunk = on_chunk
  local queue, own = dispatcher_for_call(state)
  if opts == nil or opts.timeout == nil then
    local override = nginx.mode() == "cosocket" and nginx.context()[state.timeout_key] or state.timeout
    if override then prepared.timeout = override end
  end
  local p = promise.new(queue)
  if own then p:next(function() queue:close() end, function() queue:close() end) end
  local attempts, started = 0, core.monotonic()
  -- the deadline runs from when the first attempt leaves the queue: its wait
  -- for a slot or the rate limit is not counted
  local since
  -- the on_call record, also the dispatcher's `times` (nil: no clock is read)
  local record = state.on_call and observe.start(method, path, started)
  local backups = state.hosts
  local host, tried, failovers = nil, 0, 0
  local attempt, finish, settled, share
  -- the call's deadline for retries and failovers alike
  local budget = math.max(prepared.timeout, prepared.retry.deadline)
  local function deadline_left() return (since or core.monotonic()) + budget - core.monotonic() end
  -- may go to another host, or again, after it may have reached one
  local movable = method == "GET" or (prepared.retry.idempotent and prepared.idempotent)
  -- may it be sent again after reaching the server, when a reused
  -- connection closed without an answer (curl would resend the same signed
  -- bytes; the transport leaves it to a retry, signed anew): only what a
  -- retry could send again
  local replay = movable and prepared.retry.attempts > 1

  local function settle(res, err)
    if settled then return end
    settled = true
    local interrupt
    if record then
      record.attempts, record.failovers = attempts, failovers
      local name = backups and backups.names[host] or state.host_name
      state.hook_warned, interrupt = observe.deliver(state.on_call,
        observe.finish(record, res, err, name, core.monotonic()), state.hook_warned)
    end
    if res then p:resolve(res) else p:reject(err) end
    if interrupt ~= nil then error(interrupt, 0) end
  end

  -- an answer signed by an unknown certificate: one refresh, then once more
  local function after_refresh(raw)
    local function again() finish(raw, nil, true) end
    local function guarded()
      local ok, raised = pcall(again)
      if not ok then
        settle(nil, errors.from_raise(raised, "after refreshing certificates"))
        if errors.is_interrupt(raised) then error(raised, 0) end
      end
    end
    local refreshing = certs:refresh_async(queue, true)
    if refreshing.state ~= "pending" or refreshing.driver == queue then
      return refreshing:next(guarded, guarded)
    end
    -- A download another call started, driven by its own dispatcher: this
    -- call's wait() must drive that one, not its own, which has nothing in
    -- flight.  Inside nginx that dispatcher belongs to another request (or
    -- timer) and only its context may step it: this one sleeps until the
    -- download ends, then finishes the call from its own dispatcher.
    if nginx.mode() ~= "cosocket" then
      p.following = refreshing
      local function followed() p.following = nil guarded() end
      return refreshing:next(followed, followed)
    end
    -- That download may never end (its request was killed with ngx.exit):
    -- the wait ends with this call's deadline.
    local waiter
    waiter = promise.new({ step = function()
      if deadline_left() <= 0 then waiter:resolve(false) else nginx.pause() end
      return true
    end })
    p.following = waiter
    local function ended() waiter:resolve(true) end
    refreshing:next(ended, ended)
    waiter:next(function(download_ended)
      p.following = nil
      local function resume()
        if download_ended then return guarded() end
        settle(nil, errors.new("timeout", "the certificate download this call joined (another request's) did "
          .. "not end within the call's deadline", { attempts = attempts }))
      end
      -- from this call's own dispatcher, in its own context; at once if it was closed meanwhile
      if queue.closed then resume() else queue:after(0, resume) end
    end)
  end

  -- Sends the call to the next host of this round, if err allows it and
  -- one is left; -> true when it did.
  local function fail_over(err)
    local reason = failover_reason(err)
    -- only an HTTP answer says a host is up: a probe that timed out or was
    -- reset after sending leaves it remembered as down, for another cooldown
    if err.status ~= nil then backups:answered(host) end
    if reason == nil then return false end
    local now = core.monotonic()
    if reason == "unreached" then backups:unreachable(host, now) end
    if tried == 2 ^ backups.count - 1 then return false end
    if reason == "sent" and not movable then
      err.message = ("%s; not sent to the next base_url: %s may have acted on it, and a %s is sent again only "
        .. "with retry = { idempotent = true } and a merchant number in its body (out_request_no; APIv2: "
        .. "out_trade_no, out_refund_no, mch_billno)")
        :format(tostring(err.message), backups.names[host], method)
      return false
    end
    local left = deadline_left()
    if left < 0.001 then return false end
    local timeout = share(left, backups:untried(tried))
    host = backups:pick(tried, now)
    tried = hosts.with(tried, host)
    failovers = failovers + 1
    attempt(timeout, true)
    return true
  end

  -- An attempt's timeout: what is left of the deadline, at most the call's
  -- timeout; with `hosts` still to try, a call that may move after a
  -- timeout leaves the others their share, so one host that hangs cannot
  -- take it all (with the defaults, 30 s each, it would).  Not a streamed
  -- download: its bytes, once handed on, cannot move.  Never under 1 ms,
  -- which curl would read as no timeout.
  share = function(left, hosts_left)
    local t = math.min(prepared.timeout, left)
    if movable and not on_chunk and hosts_left > 1 and left / hosts_left >= 0.001 then
      t = math.min(t, left / hosts_left)
    end
    return t
  end

  -- The timeout of a round's first attempt, a retry's too.
  local function round_timeout()
    return share(deadline_left(), backups and backups.count or 1)
  end

  finish = function(raw, failure, refreshed)
    local res, err
    if raw then
      local checking = record and core.monotonic()
      res, err = check(raw, prepared.target, prepared)
      if record then record.verify_time = record.verify_time + (core.monotonic() - checking) end
      if not res and not refreshed and certs then
        local wanted = certs:wants(err)
        if wanted == "reloaded" then return finish(raw, nil, true) end
        if wanted then return after_refresh(raw) end
      end
    else
      err = transport_error(failure, prepared.target)
    end
    if res then
      if backups then backups:answered(host) end
      return settle(res)
    end
    err.attempts = attempts
    if backups then
      if fail_over(err) then return end
      err.failovers = failovers
    end
    local delay, why = retry.delay(prepared.retry, prepared.idempotent, err, attempts - failovers,
      budget - deadline_left(), jitter)
    if not delay then
      if why then err.message = ("%s; %s"):format(tostring(err.message), why) end
      return settle(nil, err)
    end
    -- a retry ends inside the deadline too, not only starts inside it
    queue:after(delay, function()
      local timeout = round_timeout()
      if timeout < 0.001 then return settle(nil, err) end
      attempt(timeout)
    end)
  end

  -- timeout: this attempt's; same_round: a failover, to the host picked
  attempt = function(timeout, same_round)
    attempts = attempts + 1
    local again = attempts > 1
    if backups and not same_round then   -- a new round: from the first host not remembered as down
      host = backups:pick(0, core.monotonic())
      tried = hosts.with(0, host)
    end
    local url = backups and backups.urls[host]
    queue:submit{
      times = record,
      first = again,   -- a retry or failover goes before the calls that have not yet been sent
      make = function()
        since = since or core.monotonic()
        if again then
          -- a retry or failover may have waited in the queue (for a slot,
          -- the rate limit): it gets what is left of the deadline now
          local left = deadline_left()
          if left < 0.001 then
            return nil, { kind = "timeout", sent = 0, retry = false,
              message = "the call's deadline passed while its next attempt waited in the queue" }
          end
          if left < timeout then timeout = left end
        end
        local req = protocol.sign(settings, prepared)
        -- the host is not signed: the Authorization covers method, target, time, nonce and body
        if url then req.url = url .. prepared.target end
        if timeout then req.timeout = timeout end
        req.replay = replay
        return req
      end,
      -- whatever raises here settles this call's promise, never another's
      done = function(raw, failure)
        local ok, raised = pcall(finish, raw, failure)
        if not ok then
          settle(nil, errors.from_raise(raised, "while finishing " .. method .. " " .. prepared.target:match("^[^?]*")))
          if errors.is_interrupt(raised) then error(raised, 0) end
        end
      end,
    }
  end
  attempt(round_timeout())
  return p
end

--- client:request_async(method, path, options) -> promise of the response
-- Raises on a programmer error (an unknown option, a missing path
-- variable) before anything is queued; every other failure rejects.
local METHODS = { GET = true, POST = true, PUT = true, PATCH = true, DELETE = true }

function methods.request_async(self, method, path, opts)
  if type(method) ~= "string" or not METHODS[method:upper()] then
    errors.raise(("client:request: method must be GET, POST, PUT, PATCH or DELETE, got %s")
      :format(type(method) == "string" and ("%q"):format(method:sub(1, 16)) or type(method)))
  end
  method = method:upper()   -- what is signed is what is sent: never a lower-case "post"
  local state = self[STATE]
  local settings, certs = state.settings, state.certs
  if v2request.is_v2(path) then
    return send_async(self, method, path, opts, function(raw, target, prepared)
      return v2answer.check(settings.v2.apiv2_key(), prepared.sign_type, raw, target)
    end, v2request)
  end
  -- the periodic refresh runs beside this call, which does not wait for it
  if certs and certs:due() then refresh_in_background(state) end
  return send_async(self, method, path, opts, function(raw, target)
    return verify.response(settings.platform_keys, raw, target)
  end)
end

--- client:request(method, path, options) -> response | nil, err
-- The same path as the async calls: the same pool, queue and retries.
function methods.request(self, method, path, opts)
  return self:request_async(method, path, opts):wait()
end

--- client:step([wait_seconds]) -> false when no call is queued or in flight.
-- Drives every call of the client for up to wait_seconds (what wait() does).
function methods.step(self, wait)
  local queue = current_dispatcher(self[STATE])
  if not queue then return false end
  return queue:step(wait)
end

--- client:set_timeout(ms): the timeout of the calls made afterwards, in
-- milliseconds as cosockets count it; nil restores the client's.  Inside
-- nginx it holds for the current request (or timer) only; elsewhere for
-- the client.  A call's own `timeout` option still wins.
function methods.set_timeout(self, ms)
  local seconds
  if ms ~= nil then
    seconds = config.number(ms, "timeout", { min = 1, max = 86400000, what = "number of milliseconds" },
      "set_timeout") / 1000
  end
  local state = self[STATE]
  if nginx.mode() == "cosocket" then
    nginx.context()[state.timeout_key] = seconds
  else
    state.timeout = seconds
  end
end

--- client:pending() -> calls in flight, calls queued
function methods.pending(self)
  local queue = current_dispatcher(self[STATE])
  if not queue then return 0, 0 end
  return queue.in_flight, queue:queued()
end

--- client:platform_key_ids() -> sorted list of the WeChat Pay key ids known
function methods.platform_key_ids(self)
  local list = {}
  for id in pairs(self[STATE].settings.platform_keys) do list[#list + 1] = id end
  table.sort(list)
  return list
end

--- client:encrypt(plaintext) -> base64 ciphertext, key id | nil, err
-- RSA-OAEP with the platform key that the request's Wechatpay-Serial names.
function methods.encrypt(self, plaintext)
  if type(plaintext) ~= "string" then errors.raise("encrypt: plaintext must be a string") end
  local state = self[STATE]
  local settings = state.settings
  local id = settings.encryption_key_id
  if not id and state.certs then
    -- certs = {} with apiv3_key: nothing downloaded yet, and encrypting
    -- is often a call's first step (a grant's user_name)
    local _, err = self:refresh_certificates()
    id = settings.encryption_key_id
    if not id and err then return nil, err end
  end
  if not id then
    return nil, "no WeChat Pay key to encrypt with: give the WeChat Pay public key in certs "
      .. "(PUB_KEY_ID_... = \"file:///path/pub_key.pem\"), or a platform certificate"
  end
  local ciphertext, err = core.rsa_encrypt(settings.platform_keys[id], plaintext)
  if not ciphertext then return nil, err end
  return ciphertext, id
end

--- client:decrypt(ciphertext) -> plaintext | nil, err (with the merchant private key)
function methods.decrypt(self, ciphertext)
  if type(ciphertext) ~= "string" then errors.raise("decrypt: ciphertext must be a string") end
  return core.rsa_decrypt(self[STATE].settings.private_key, ciphertext)
end

--- client:decrypt_resource(resource) -> plaintext | nil, err, why
-- The AEAD_AES_256_GCM resource of a callback or certificate download,
-- decrypted with the client's apiv3_key (why: "malformed" | "decrypt",
-- as aes.decrypt_resource).
function methods.decrypt_resource(self, resource)
  local apiv3_key = self[STATE].settings.apiv3_key
  if not apiv3_key then errors.raise("decrypt_resource: the client was made without apiv3_key") end
  return aes.decrypt_resource(apiv3_key(), resource)
end

--- client:verify(headers, body) -> true | nil, err (kind "verify"), for
-- callbacks: headers in any case; a repeated signature header is refused.
-- A callback signed by an unknown certificate serial refreshes the
-- certificates once (waiting for the download) and is verified again.
function methods.verify(self, headers, body)
  local state = self[STATE]
  local ok, err = verify.callback(state.settings.platform_keys, headers, body)
  local wanted = not ok and state.certs and state.certs:wants(err)
  if wanted then
    -- bounded: inside nginx, a download another request started ends with
    -- that request, and may never settle; then verify with what is known
    if wanted ~= "reloaded" then
      local refreshing, queue = refresh_certificates(state, true)
      await_refresh(refreshing, queue, state.settings.timeout)
    end
    ok, err = verify.callback(state.settings.platform_keys, headers, body)
  end
  return ok, err
end

--- client:open_notification(raw_body) -> event | nil, err: the part of
-- parse_notification after client:verify, for a body already verified:
-- decode, decrypt the resource with the apiv3_key, decode it (kinds
-- "malformed", "decrypt"; wechatpay.notification.open).
function methods.open_notification(self, body)
  if type(body) ~= "string" then
    errors.raise(("open_notification: the body must be the raw bytes received, got %s"):format(type(body)))
  end
  local apiv3_key = self[STATE].settings.apiv3_key
  if not apiv3_key then errors.raise("open_notification: the client was made without apiv3_key") end
  return notification.open(apiv3_key(), body)
end

--- client:parse_notification(headers, raw_body) -> event | nil, err
-- (wechatpay.notification.parse: kinds "verify", "malformed", "decrypt").
function methods.parse_notification(self, headers, body)
  return notification.parse(self, headers, body)
end

--- client:parse_v2_notification(raw_body) -> notice | nil, err: an APIv2
-- callback, a payment result verified by its sign (type "payment", paid
-- true only for return_code and result_code SUCCESS), or a refund with its
-- req_info decrypted (type "refund") (wechatpay.v2.notification; kinds
-- "verify", "malformed", "decrypt").  Answer it with wechatpay.v2.notification.answer().
function methods.parse_v2_notification(self, body)
  local settings = self[STATE].settings
  if not (settings.v2 and settings.v2.apiv2_key) then
    errors.raise("parse_v2_notification: the client was made without apiv2_key")
  end
  return v2notification.parse(settings.v2.apiv2_key(), settings.mchid, body)
end

--- client:event_store() -> the in-process LRU that notification.handle
-- uses when given no dedupe store (one per client).
function methods.event_store(self)
  local state = self[STATE]
  state.events = state.events or dedupe.lru()
  return state.events
end

--- client:certificates() -> list | nil, err: downloads GET /v3/certificates,
-- decrypts each with the apiv3_key and verifies the response with the
-- delivered certificate that signed it; adds nothing to the client.
-- Each entry: { serial, pem, effective_time, expire_time, not_before, not_after, key }.
function methods.certificates(self)
  local state = self[STATE]
  local apiv3_key = state.settings.apiv3_key
  if not apiv3_key then errors.raise("certificates: the client was made without apiv3_key") end
  local res, err = send_async(self, "GET", certificates.PATH, nil, function(raw, target)
    return certificates.check_download(apiv3_key(), state.settings.platform_keys, raw, target, state.settings.serial)
  end):wait()
  if not res then
    if certificates.is_public_key_only(err) then
      if state.certs then state.certs.public_key_only = true end
      return {}, "no platform certificates: this merchant verifies with its WeChat Pay public key (PUB_KEY_ID_...)"
    end
    return nil, err
  end
  return res.certificates
end

--- client:refresh_certificates([{ max_age = seconds }]) -> number added | nil, err.
-- Adds the downloaded certificates to the client's keys (and its cert
-- store); a failed refresh drops none.  0 for a public-key-only merchant.
-- max_age: with a cert store that records its downloads (the shared dict
-- one), no download when one ended less than max_age seconds ago: the
-- stored certificates are loaded instead (how nginx workers share one).
function methods.refresh_certificates(self, opts)
  local state = self[STATE]
  if not state.certs then errors.raise("refresh_certificates: the client was made without apiv3_key") end
  local max_age
  if opts ~= nil then
    if type(opts) ~= "table" then errors.raise("refresh_certificates: options must be a table") end
    for name in pairs(opts) do
      if name ~= "max_age" then errors.raise(("refresh_certificates: unknown option '%s'"):format(tostring(name))) end
    end
    max_age = opts.max_age
    if max_age ~= nil and (type(max_age) ~= "number" or max_age < 0) then
      errors.raise("refresh_certificates: max_age must be a number of seconds")
    end
  end
  local refreshing, queue = refresh_certificates(state, false, max_age)
  return await_refresh(refreshing, queue, state.settings.timeout)
end

--- client:certificate_stats() -> { downloads, public_key_only, last_error }
function methods.certificate_stats(self)
  local certs = self[STATE].certs
  if not certs then return { downloads = 0 } end
  return { downloads = certs.downloads, public_key_only = certs.public_key_only or false, last_error = certs.last_error }
end

-- A bill's whole transfer, not one API call: 10 minutes unless given.
local DOWNLOAD_TIMEOUT = 600
local DOWNLOAD_OPTIONS = { to = true, timeout = true }

-- The download URL's answer is the one response WeChat Pay does not sign:
-- its bytes are checked against the hash of the (signed) first call.  A 2xx
-- is settled only once the consumer finished (inflater ended, hash equal,
-- file renamed), so the call's result and its on_call record carry an
-- "integrity" or "file" error, not the 200.  -> check, function() -> info
local function check_bill(keys, consumer)
  local info
  return function(raw, target)
    if raw.status >= 200 and raw.status < 300 then
      local err
      info, err = consumer.finish()
      if not info then
        err.status = err.status or raw.status
        err.request_id = err.request_id or (raw.headers and raw.headers["request-id"])
        return nil, err
      end
      return response.new(raw)
    end
    return verify.response(keys, raw, target)   -- the "http" error, with WeChat Pay's code
  end, function() return info end
end

--- client:download(bill, { to = path | function(bytes), timeout = s }) -> info | nil, err
-- bill: the response of a bill call (tradebill, fundflowbill, a stock's
-- use-flow...), its decoded table, or { download_url | url, hash_type,
-- hash_value }.  The file streams through: gzip inflated, hashed, written
-- (to a temporary name renamed over `to` once the hash matches).
-- info = { bytes, hash_type, hash_value, path, gzip, received }.  Errors:
-- "integrity" (hash mismatch, truncated or corrupt gzip), "http", "network",
-- "timeout", "file" (the file cannot be written); a transfer that handed
-- bytes on is never retried.
function methods.download(self, bill, opts)
  if type(opts) ~= "table" then errors.raise("download: options must be a table such as { to = \"bill.csv\" }") end
  for name in pairs(opts) do
    if not DOWNLOAD_OPTIONS[name] then
      errors.raise(("download: unknown option '%s' (the options are to and timeout)"):format(tostring(name)))
    end
  end
  local settings = self[STATE].settings
  local source, err = download.source(bill)
  if not source then return nil, err end
  local target, terr = download.target(source.url, settings.base_urls)
  if not target then return nil, terr end
  local path, query = download.split(target)
  local consumer, cerr = download.consumer(source, opts.to)
  if not consumer then return nil, cerr end
  local check, finished = check_bill(settings.platform_keys, consumer)
  local sent, p = pcall(send_async, self, "GET", path, { query = query, timeout = opts.timeout or DOWNLOAD_TIMEOUT },
    check, nil, consumer.on_chunk)
  if not sent then
    consumer.abort()
    error(p, 0)
  end
  local waited, res, failure = pcall(p.wait, p)
  if not waited then   -- an interrupt: the temporary file goes, the error goes on up
    consumer.abort()
    error(res, 0)
  end
  if not res then return consumer.abort(failure) end
  return finished()
end

--- client:close(): calls queued or in flight reject with kind "closed";
-- the pooled connections are closed.  Safe to call twice, or from a handler.
-- Inside nginx: the current request's calls, and every later call.
function methods.close(self)
  local state = self[STATE]
  local queue = current_dispatcher(state)
  state.closed = true
  if queue then queue:close() end
end

client.VERSION = VERSION

return client
