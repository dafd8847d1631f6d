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
local errors = require("wechatpay.errors")
local notification = require("wechatpay.notification")
local promise = require("wechatpay.promise")
local request = require("wechatpay.request")
local retry = require("wechatpay.retry")
local verify = require("wechatpay.verify")

local VERSION = "0.1.0"

local client = {}
local methods = {}

-- The key of a client's own state: no segment name can reach it, so the
-- transport, dispatcher and keys are not fields a caller can read or replace.
local STATE = {}

local send_async   -- the one path of every call, below

-- Settings a caller may read (never write) as fields.
local READABLE = { mchid = true, serial = true, base_url = true, platform_key_id = true }

local client_mt = {}

function client_mt.__index(self, name)
  local method = methods[name]
  if method ~= nil then return method end
  local settings = rawget(self, STATE).settings
  if READABLE[name] then
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
    :format(settings.mchid, settings.serial, n, n == 1 and "" or "s", settings.base_url)
end

local function user_agent()
  local runtime = jit and jit.version or _VERSION
  return ("wechatpay-lua/%s (%s; curl/%s; %s)"):format(VERSION, runtime, core.curl_version, core.crypto_backend)
end

--- wechatpay.new(options) -> client; raises on a configuration mistake.
function client.new(opts)
  local settings = config.check(opts, user_agent())
  local transport = settings.transport or curl_transport.new{
    cafile = settings.cafile, capath = settings.capath, proxy = settings.proxy,
    max_connections = settings.max_concurrency,
  }
  settings.transport = nil
  local self = setmetatable({
    [STATE] = {
      settings = settings,
      dispatcher = dispatcher.new(transport, {
        max_concurrency = settings.max_concurrency, rate_limit = settings.rate_limit,
      }),
    },
  }, client_mt)
  local state = self[STATE]
  if settings.apiv3_key or settings.cert_store then
    state.certs = certificates.manager{
      keys = settings.platform_keys, apiv3_key = settings.apiv3_key, merchant_serial = settings.serial,
      store = settings.cert_store, interval = settings.refresh_interval,
      fetch = function(check) return send_async(self, "GET", certificates.PATH, nil, check) end,
      on_change = function()
        settings.encryption_key_id = settings.encryption_key_id or config.pick_encryption_key(settings.platform_keys)
      end,
    }
  end
  return self
end

--- client:chain("v3/multiuse/users/{openid}/coupons") -> node
function methods.chain(self, path)
  return chain.from_path(self, path)
end

-- A transport failure as an error of the call.
local function transport_error(failure, target)
  if errors.is_error(failure) then return failure end
  if type(failure) ~= "table" then failure = { message = tostring(failure) } end
  local kind = (failure.kind == "timeout" or failure.kind == "closed") and failure.kind or "network"
  return errors.new(kind, tostring(failure.message or "no response") .. " (" .. target:match("^[^?]*") .. ")",
    { sent = failure.sent, retry = failure.retry })
end

-- send_async(method, path, options, check) -> promise: the one path of
-- every call; check(raw, target) -> response | nil, err judges an answer
-- (verify.response for API calls, the download's own check for certificates).
send_async = function(self, method, path, opts, check)
  local state = self[STATE]
  local settings, queue, certs = state.settings, state.dispatcher, state.certs
  local prepared = request.prepare(settings, method, path, opts)
  local p = promise.new(queue)
  local attempts, started = 0, core.monotonic()
  local attempt, finish

  -- an answer signed by an unknown certificate: one refresh, then once more
  local function after_refresh(raw)
    local function again() finish(raw, nil, true) end
    local function guarded()
      local ok, raised = pcall(again)
      if not ok then p:reject(errors.from_raise(raised, "after refreshing certificates")) end
    end
    certs:refresh_async(queue, true):next(guarded, guarded)
  end

  finish = function(raw, failure, refreshed)
    local res, err
    if raw then
      res, err = check(raw, prepared.target)
      if not res and not refreshed and certs then
        local wanted = certs:wants(err)
        if wanted == "reloaded" then return finish(raw, nil, true) end
        if wanted then return after_refresh(raw) end
      end
    else
      err = transport_error(failure, prepared.target)
    end
    if res then return p:resolve(res) end
    err.attempts = attempts
    local delay = retry.delay(prepared.retry, prepared.idempotent, err, attempts, core.monotonic() - started)
    if delay then queue:after(delay, attempt) else p:reject(err) end
  end

  attempt = function()
    attempts = attempts + 1
    queue:submit{
      make = function() return request.sign(settings, prepared) end,
      -- whatever raises here settles this call's promise, never another's
      done = function(raw, failure)
        local ok, raised = pcall(finish, raw, failure)
        if not ok then
          p:reject(errors.from_raise(raised, "while finishing " .. method .. " " .. prepared.target:match("^[^?]*")))
          if errors.is_interrupt(raised) then error(raised, 0) end
        end
      end,
    }
  end
  attempt()
  return p
end

--- client:request_async(method, path, options) -> promise of the response
-- Raises on a programmer error (an unknown option, a missing path
-- variable) before anything is queued; every other failure rejects.
function methods.request_async(self, method, path, opts)
  local state = self[STATE]
  local settings, certs = state.settings, state.certs
  -- the periodic refresh runs beside this call, which does not wait for it
  if certs and certs:due() then
    certs:refresh_async(state.dispatcher, true):catch(function() end)
  end
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
  return self[STATE].dispatcher:step(wait)
end

--- client:pending() -> calls in flight, calls queued
function methods.pending(self)
  local queue = self[STATE].dispatcher
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
  local settings = self[STATE].settings
  local id = settings.encryption_key_id
  local ciphertext, err = core.rsa_encrypt(settings.platform_keys[id], plaintext)
  if not ciphertext then return nil, err end
  return ciphertext, id
end

--- client:decrypt(ciphertext) -> plaintext | nil, err (with the merchant private key)
function methods.decrypt(self, ciphertext)
  if type(ciphertext) ~= "string" then errors.raise("decrypt: ciphertext must be a string") end
  return core.rsa_decrypt(self[STATE].settings.private_key, ciphertext)
end

--- client:decrypt_resource(resource) -> plaintext | nil, err
-- The AEAD_AES_256_GCM resource of a callback or certificate download,
-- decrypted with the client's apiv3_key.
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
    if wanted ~= "reloaded" then state.certs:refresh_async(state.dispatcher, true):wait() end
    ok, err = verify.callback(state.settings.platform_keys, headers, body)
  end
  return ok, err
end

--- client:parse_notification(headers, raw_body) -> event | nil, err
-- (wechatpay.notification.parse: kinds "verify", "malformed", "decrypt").
function methods.parse_notification(self, headers, body)
  return notification.parse(self, headers, body)
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

--- client:refresh_certificates() -> number added | nil, err.  Adds the
-- downloaded certificates to the client's keys (and its cert store); a
-- failed refresh drops none.  0 for a public-key-only merchant.
function methods.refresh_certificates(self)
  local state = self[STATE]
  if not state.certs then errors.raise("refresh_certificates: the client was made without apiv3_key") end
  return state.certs:refresh_async(state.dispatcher):wait()
end

--- client:certificate_stats() -> { downloads, public_key_only, last_error }
function methods.certificate_stats(self)
  local certs = self[STATE].certs
  if not certs then return { downloads = 0 } end
  return { downloads = certs.downloads, public_key_only = certs.public_key_only or false, last_error = certs.last_error }
end

--- client:close(): calls queued or in flight reject with kind "closed";
-- the pooled connections are closed.  Safe to call twice, or from a handler.
function methods.close(self)
  self[STATE].dispatcher:close()
end

client.VERSION = VERSION

return client
