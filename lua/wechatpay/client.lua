--- The v3 client: configuration, signing, sending and verifying.
--
--   local client = wechatpay.new{ mchid =, serial =, private_key =, certs = {...} }
--   local res, err = client.v3.multiuse.users._openid_.coupons:post{ openid =, json = {...} }
local cjson = require("cjson")
local core = require("wechatpay.core")
local key = require("wechatpay.key")
local chain = require("wechatpay.chain")
local verify = require("wechatpay.verify")
local errors = require("wechatpay.errors")
local response = require("wechatpay.response")
local curl_transport = require("wechatpay.transport.curl")
local dispatcher = require("wechatpay.dispatcher")
local promise = require("wechatpay.promise")
local aes = require("wechatpay.aes")

local VERSION = "0.1.0"
local DEFAULT_BASE_URL = "https://api.mch.weixin.qq.com/"

local client = {}
local methods = {}

-- Secrets live outside the client table, so that dumping a client (a
-- debugger, an inspect() in a log line) shows none of them.
local secrets = setmetatable({}, { __mode = "k" })
local roots = setmetatable({}, { __mode = "k" })

local client_mt = {
  __index = function(self, name)
    local method = methods[name]
    if method ~= nil then return method end
    if type(name) == "string" and name:find("/", 1, true) then
      return chain.from_path(self, name)
    end
    return roots[self][name]
  end,
  __tostring = function(self)
    local n = 0
    for _ in pairs(self.platform_keys) do n = n + 1 end
    return ("wechatpay.client (mchid %s, serial %s, %d platform key%s, %s)")
      :format(self.mchid, self.serial, n, n == 1 and "" or "s", self.base_url)
  end,
}

local OPTIONS = {
  mchid = true, serial = true, private_key = true, passphrase = true, certs = true,
  base_url = true, cafile = true, timeout = true, connect_timeout = true, proxy = true,
  user_agent = true, apiv3_key = true, transport = true, max_concurrency = true,
  retry = true, rate_limit = true,
}

local function config_error(message)
  error("wechatpay.new: " .. message, 3)
end

local function user_agent()
  local runtime = jit and jit.version or _VERSION
  return ("wechatpay-lua/%s (%s; curl/%s; %s)"):format(VERSION, runtime, core.curl_version, core.crypto_backend)
end

local function positive_number(opts, name, default)
  local value = opts[name]
  if value == nil then return default end
  if type(value) ~= "number" or value <= 0 then
    config_error(("%s must be a positive number of seconds, got %s"):format(name, tostring(value)))
  end
  return value
end

local function is_public_key_id(id)
  return id:find("^PUB_KEY_ID_") ~= nil
end

-- Platform keys by id, with the merchant's own key refused: the most
-- reported configuration mistake across WeChat Pay SDKs.
local function load_platform_keys(certs, merchant_serial, private_key)
  if type(certs) ~= "table" then
    config_error("certs is required: a table of WeChat Pay public key id or platform certificate serial -> key")
  end
  local keys, count = {}, 0
  local probe = core.rsa_sign(private_key, "wechatpay-lua key probe")
  for id, source in pairs(certs) do
    if type(id) ~= "string" then config_error("certs keys must be strings (key ids or serials)") end
    local normalized = is_public_key_id(id:gsub("%s", "")) and id:gsub("%s", "") or key.normalize_serial(id)
    if normalized == merchant_serial then
      config_error(("certs[%q] is the merchant's own API certificate serial: certs holds WeChat Pay's "
        .. "public key (PUB_KEY_ID_...) or platform certificates; the merchant serial belongs in `serial`"):format(id))
    end
    local loaded, err = key.public(source)
    if not loaded then config_error(("certs[%q]: %s"):format(id, err)) end
    local cert = loaded:certificate()
    if cert and cert.serial == merchant_serial then
      config_error(("certs[%q] is the merchant's own API certificate (serial %s), not a WeChat Pay platform key")
        :format(id, cert.serial))
    end
    if core.rsa_verify(loaded, "wechatpay-lua key probe", probe) then
      config_error(("certs[%q] is the public half of the merchant's own private key, not a WeChat Pay key"):format(id))
    end
    keys[normalized] = loaded
    count = count + 1
  end
  if count == 0 then config_error("certs is empty: give at least the WeChat Pay public key or a platform certificate") end
  return keys
end

-- Encryption uses the WeChat Pay public key when there is one, else the
-- platform certificate that expires last.
local function pick_encryption_key(keys)
  local best_id, best_expiry
  for id in pairs(keys) do
    if is_public_key_id(id) then
      if not best_id or not is_public_key_id(best_id) or id < best_id then best_id, best_expiry = id, math.huge end
    elseif not (best_id and is_public_key_id(best_id)) then
      local cert = keys[id]:certificate()
      local expiry = cert and cert.not_after or 0
      if not best_id or expiry > best_expiry or (expiry == best_expiry and id < best_id) then
        best_id, best_expiry = id, expiry
      end
    end
  end
  return best_id
end

-- ---- retries -------------------------------------------------------------

-- By default only failures before any byte was sent are retried: nothing
-- can have happened on the server.  `idempotent = true` also retries
-- timeouts, 429 and 5xx, but only for requests a replay cannot duplicate.
local DEFAULT_RETRY = { attempts = 3, backoff = 0.2, max_backoff = 5, deadline = 30, idempotent = false }
client.DEFAULT_RETRY = DEFAULT_RETRY

--- retry_policy(option, base, name) -> policy: false disables retries.
function client.retry_policy(option, base, name, level)
  if option == nil then return base end
  if option == false then
    return { attempts = 1, backoff = 0, max_backoff = 0, deadline = 0, idempotent = false }
  end
  if type(option) ~= "table" then error(name .. " must be a table or false", level or 3) end
  local policy = {}
  for k, v in pairs(base) do policy[k] = v end
  for k, v in pairs(option) do
    if base[k] == nil then error(("%s: unknown field '%s'"):format(name, tostring(k)), level or 3) end
    if type(v) ~= type(base[k]) then
      error(("%s.%s must be a %s"):format(name, k, type(base[k])), level or 3)
    end
    policy[k] = v
  end
  if policy.attempts < 1 then error(name .. ".attempts must be at least 1", level or 3) end
  return policy
end

--- wechatpay.new(options) -> client; raises on a configuration mistake.
function client.new(opts)
  if type(opts) ~= "table" then error("wechatpay.new: options table expected, got " .. type(opts), 2) end
  for name in pairs(opts) do
    if not OPTIONS[name] then config_error(("unknown option '%s'"):format(tostring(name))) end
  end
  local mchid = opts.mchid
  if type(mchid) == "number" then mchid = ("%d"):format(mchid) end
  if type(mchid) ~= "string" or not mchid:match("^%d+$") then
    config_error("mchid is required: the merchant id, a string of digits such as \"1900000001\"")
  end
  if type(opts.serial) ~= "string" or opts.serial:gsub("%s", "") == "" then
    config_error("serial is required: the merchant API certificate serial (upper-case hex)")
  end
  local serial = key.normalize_serial(opts.serial)
  if not serial:match("^%x+$") then
    config_error("serial must be the hex serial of the merchant API certificate")
  end
  if opts.private_key == nil then
    config_error("private_key is required: \"file:///path/to/apiclient_key.pem\", PEM text or a loaded key")
  end
  if opts.passphrase ~= nil and type(opts.passphrase) ~= "string" then
    config_error("passphrase must be a string")
  end
  local private_key, err = key.private(opts.private_key, opts.passphrase)
  if not private_key then config_error("private_key: " .. err) end
  local platform_keys = load_platform_keys(opts.certs, serial, private_key)

  local base_url = opts.base_url or DEFAULT_BASE_URL
  if type(base_url) ~= "string" or not base_url:match("^https?://[^/]+") then
    config_error("base_url must be an http(s) URL such as \"https://api.mch.weixin.qq.com/\"")
  end
  base_url = base_url:gsub("/+$", "")
  if opts.cafile ~= nil then
    if type(opts.cafile) ~= "string" then config_error("cafile must be a path") end
    local f = io.open(opts.cafile, "rb")
    if not f then config_error("cafile " .. opts.cafile .. " cannot be opened") end
    f:close()
  end
  if opts.apiv3_key ~= nil and (type(opts.apiv3_key) ~= "string" or #opts.apiv3_key ~= 32) then
    config_error("apiv3_key must be the 32-character APIv3 key")
  end
  if opts.user_agent ~= nil and type(opts.user_agent) ~= "string" then
    config_error("user_agent must be a string")
  end
  if opts.proxy ~= nil and type(opts.proxy) ~= "string" then config_error("proxy must be a URL string") end
  local max_concurrency = opts.max_concurrency
  if max_concurrency ~= nil and (type(max_concurrency) ~= "number" or max_concurrency < 1
      or max_concurrency % 1 ~= 0) then
    config_error("max_concurrency must be a positive integer (calls in flight at once)")
  end
  local transport = opts.transport
  if transport ~= nil and (type(transport) ~= "table" or (type(transport.request) ~= "function"
      and (type(transport.submit) ~= "function" or type(transport.step) ~= "function"))) then
    config_error("transport must be an object with request(), or submit() and step()")
  end

  local self = setmetatable({
    mchid = mchid,
    serial = serial,
    base_url = base_url,
    platform_keys = platform_keys,
    platform_key_id = pick_encryption_key(platform_keys),
    timeout = positive_number(opts, "timeout", 30),
    connect_timeout = positive_number(opts, "connect_timeout", 5),
    user_agent = opts.user_agent or user_agent(),
  }, client_mt)
  secrets[self] = { private_key = private_key, apiv3_key = opts.apiv3_key }
  roots[self] = chain.root(self)
  self.transport = transport or curl_transport.new{
    cafile = opts.cafile, proxy = opts.proxy, max_connections = opts.max_concurrency,
  }
  self.dispatcher = dispatcher.new(self.transport, {
    max_concurrency = opts.max_concurrency, rate_limit = opts.rate_limit,
  })
  self.retry = client.retry_policy(opts.retry, DEFAULT_RETRY, "retry")
  return self
end

--- client:chain("v3/multiuse/users/{openid}/coupons") -> node
function methods.chain(self, path)
  return chain.from_path(self, path)
end

-- ---- building a request ---------------------------------------------------

local function header_list(self, opts, has_body)
  local defaults = {
    { "Accept", "application/json" },
    { "User-Agent", self.user_agent },
  }
  if has_body then defaults[#defaults + 1] = { "Content-Type", "application/json" } end
  if self.platform_key_id then defaults[#defaults + 1] = { "Wechatpay-Serial", self.platform_key_id } end
  local given, list = {}, {}
  if opts.headers ~= nil then
    if type(opts.headers) ~= "table" then error("headers must be a table of name -> value", 4) end
    for name, value in pairs(opts.headers) do
      if type(name) ~= "string" or (type(value) ~= "string" and type(value) ~= "number") then
        error("headers must map string names to string values", 4)
      end
      if name:find("[%c: ]") or tostring(value):find("[\r\n]") then
        error(("headers[%q]: a header name holds a space, colon or control character, or a value a line break"):format(name), 4)
      end
      local lower = name:lower()
      if lower == "authorization" then
        error("headers.Authorization is made by the client from the request it signs", 4)
      end
      given[lower] = true
      list[#list + 1] = name .. ": " .. tostring(value)
    end
  end
  for _, pair in ipairs(defaults) do
    if not given[pair[1]:lower()] then list[#list + 1] = pair[1] .. ": " .. pair[2] end
  end
  return list
end

-- Merchant numbers that make a replay return the first result.
local IDEMPOTENCY_FIELDS = { "out_request_no", "out_trade_no", "out_refund_no", "out_batch_no" }

local function is_idempotent(method, json, body)
  if method == "GET" then return true end
  for _, field in ipairs(IDEMPOTENCY_FIELDS) do
    if json then
      if json[field] ~= nil and json[field] ~= "" then return true end
    elseif body:find('"' .. field .. '"%s*:%s*"[^"]') then
      return true
    end
  end
  return false
end

--- Everything that does not depend on the moment of sending: the target,
-- the body (encoded once: these bytes are signed and sent) and headers.
-- Raises on a programmer error, before anything is queued or sent.
local function prepare_request(self, method, path, opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then error("request options must be a table", 3) end
  local target = chain.expand(path, opts)
  local query = chain.encode_query(opts.query)
  if query then target = target .. "?" .. query end
  local body
  if opts.json ~= nil and opts.body ~= nil then error("give json or body, not both", 3) end
  if opts.json ~= nil then
    if type(opts.json) ~= "table" then error("json must be a table", 3) end
    body = cjson.encode(opts.json)
  elseif opts.body ~= nil then
    if type(opts.body) ~= "string" then error("body must be a string", 3) end
    body = opts.body
  else
    body = ""
  end
  local timeout = opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or timeout <= 0) then
    error("timeout must be a positive number of seconds", 3)
  end
  return {
    method = method,
    target = target,
    body = body,
    headers = header_list(self, opts, body ~= ""),
    timeout = timeout or self.timeout,
    idempotent = is_idempotent(method, type(opts.json) == "table" and opts.json or nil, body),
    retry = opts.retry == nil and self.retry or client.retry_policy(opts.retry, self.retry, "retry", 4),
  }
end

--- The transport request, signed now with a fresh timestamp and nonce:
-- every attempt of a retried call is signed anew.
local function sign_request(self, prepared)
  local headers = {}
  for i = 1, #prepared.headers do headers[i] = prepared.headers[i] end
  headers[#headers + 1] = "Authorization: " .. core.authorization(secrets[self].private_key,
    self.mchid, self.serial, prepared.method, prepared.target, prepared.body)
  return {
    method = prepared.method,
    url = self.base_url .. prepared.target,
    headers = headers,
    body = prepared.body ~= "" and prepared.body or nil,
    timeout = prepared.timeout,
    connect_timeout = self.connect_timeout,
  }
end

-- ---- reading a response ---------------------------------------------------

local function api_error(res, target)
  local body = res:json()
  local code, message, detail
  if type(body) == "table" then
    code = type(body.code) == "string" and body.code or nil
    message = type(body.message) == "string" and body.message or nil
    detail = body.detail
  end
  return errors.new("http", message or ("HTTP " .. res.status .. " from " .. target:match("^[^?]*")), {
    status = res.status, code = code, detail = detail,
    request_id = res.headers["request-id"], response = res,
  })
end

--- Turns a transport outcome into (response) or (nil, err).
local function finish(self, raw, failure, target)
  if not raw then
    local kind = failure and failure.kind or "network"
    return nil, errors.new(kind, (failure and failure.message or "no response") .. " (" .. target:match("^[^?]*") .. ")",
      { sent = failure and failure.sent, curl_code = failure and failure.curl_code })
  end
  local res = response.new(raw)
  if res.status < 200 or res.status >= 300 then
    return nil, api_error(res, target)
  end
  if not verify.is_unsigned(target) then
    local ok, reason = verify.signed(self.platform_keys, res.headers, res.body)
    if not ok then
      return nil, errors.new("verify", reason, {
        status = res.status, request_id = res.headers["request-id"], response = res,
      })
    end
  end
  return res
end

-- Failures before sending that a retry cannot mend: a bad URL, an
-- unsupported protocol, a certificate that does not verify.
local PERMANENT_CURL_FAILURES = {
  [1] = true, [3] = true, [51] = true, [53] = true, [54] = true, [58] = true,
  [60] = true, [77] = true, [83] = true, [90] = true, [91] = true,
}

local function retry_delay(prepared, err, attempts, started)
  local policy = prepared.retry
  if attempts >= policy.attempts then return nil end
  local before_sending = (err.kind == "network" or err.kind == "timeout") and (err.sent or 0) == 0
    and not PERMANENT_CURL_FAILURES[err.curl_code]
  local transient = err.kind == "timeout" or err.kind == "network"
    or (err.kind == "http" and (err.status == 429 or err.status >= 500))
  if not (before_sending or (policy.idempotent and prepared.idempotent and transient)) then
    return nil
  end
  local delay = math.min(policy.max_backoff, policy.backoff * 2 ^ (attempts - 1))
  delay = delay * (0.5 + math.random() * 0.5)   -- jitter: retries of a batch do not align
  if core.monotonic() + delay - started > policy.deadline then return nil end
  return delay
end

--- client:request_async(method, path, options) -> promise of the response
function methods.request_async(self, method, path, opts)
  local prepared = prepare_request(self, method, path, opts)
  local p = promise.new(self.dispatcher)
  local attempts, started = 0, core.monotonic()
  local function attempt()
    attempts = attempts + 1
    self.dispatcher:submit{
      make = function() return sign_request(self, prepared) end,
      done = function(raw, failure)
        local res, err = finish(self, raw, failure, prepared.target)
        if res then return p:resolve(res) end
        err.attempts = attempts
        local delay = retry_delay(prepared, err, attempts, started)
        if delay then
          self.dispatcher:after(delay, attempt)
        else
          p:reject(err)
        end
      end,
    }
  end
  attempt()
  return p
end

--- client:request(method, path, options) -> response | nil, err
-- The same path as the async calls: the same pool, queue and retries.
function methods.request(self, method, path, opts)
  return self:request_async(method, path, opts):wait()
end

--- client:encrypt(plaintext) -> base64 ciphertext, key id | nil, err
-- RSA-OAEP with the platform key that the request's Wechatpay-Serial names.
function methods.encrypt(self, plaintext)
  if type(plaintext) ~= "string" then error("encrypt: plaintext must be a string", 2) end
  local id = self.platform_key_id
  local ciphertext, err = core.rsa_encrypt(self.platform_keys[id], plaintext)
  if not ciphertext then return nil, err end
  return ciphertext, id
end

--- client:decrypt(ciphertext) -> plaintext | nil, err (with the merchant private key)
function methods.decrypt(self, ciphertext)
  if type(ciphertext) ~= "string" then error("decrypt: ciphertext must be a string", 2) end
  return core.rsa_decrypt(secrets[self].private_key, ciphertext)
end

--- client:decrypt_resource(resource) -> plaintext | nil, err
-- The AEAD_AES_256_GCM resource of a callback or certificate download,
-- decrypted with the client's apiv3_key.
function methods.decrypt_resource(self, resource)
  local apiv3_key = secrets[self].apiv3_key
  if not apiv3_key then error("decrypt_resource: the client was made without apiv3_key", 2) end
  return aes.decrypt_resource(apiv3_key, resource)
end

--- client:verify(headers, body) -> true | nil, reason (for callbacks)
function methods.verify(self, headers, body)
  local lookup = setmetatable({}, { __index = function(t, k) return rawget(t, k:lower()) end })
  for name, value in pairs(headers or {}) do lookup[name:lower()] = value end
  return verify.signed(self.platform_keys, lookup, body or "")
end

--- client:close(): closes the transport's connections.
function methods.close(self)
  if self.transport and self.transport.close then self.transport:close() end
end

client.methods = methods
client.VERSION = VERSION

return client
