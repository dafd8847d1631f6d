--- The checks of wechatpay.new's options: each mistake raises with a message
-- that names the option and never shows a secret; what passes comes back as
-- the client's settings, with keys loaded and defaults filled.
--
-- Also the one numeric check (finite, in range) that per-call options and
-- retry policies use, so a NaN or math.huge can never switch a timeout off.
local core = require("wechatpay.core")
local errors = require("wechatpay.errors")
local key = require("wechatpay.key")
local retry = require("wechatpay.retry")
local v2config = require("wechatpay.v2.config")

local config = {}

local DEFAULT_BASE_URL = "https://api.mch.weixin.qq.com/"

local OPTIONS = {
  mchid = true, serial = true, private_key = true, passphrase = true, certs = true,
  base_url = true, cafile = true, capath = true, timeout = true, connect_timeout = true, proxy = true,
  user_agent = true, apiv3_key = true, transport = true, max_concurrency = true,
  retry = true, rate_limit = true, resolve = true, cert_dir = true, cert_store = true, refresh_interval = true,
  failover_cooldown = true, on_call = true,
  apiv2_key = true, merchant_cert = true,   -- APIv2: wechatpay.v2.config
}

--- The most base URLs a client takes: the primary and its backups.
config.MAX_BASE_URLS = 4

--- Ranges of the numeric options.  A timeout under 1 ms would reach curl as
-- 0, which means "no timeout".
config.RANGES = {
  timeout = { min = 0.001, max = 86400, what = "number of seconds" },
  connect_timeout = { min = 0.001, max = 86400, what = "number of seconds" },
  max_concurrency = { min = 1, max = 1000, integer = true, what = "integer (calls in flight at once)" },
  refresh_interval = { min = 60, max = 30 * 86400, what = "number of seconds (or false)" },
  failover_cooldown = { min = 0, max = 3600, what = "number of seconds" },
}

local function fail(message)
  errors.raise("wechatpay.new: " .. message)
end

local function is_finite(value)
  return value == value and value ~= math.huge and value ~= -math.huge
end

local function show(value)
  if type(value) ~= "number" then return type(value) end
  if value ~= value then return "nan" end
  return tostring(value)
end

--- number(value, name, range, context) -> value; raises unless value is a
-- finite number in [range.min, range.max] (an integer if range.integer).
function config.number(value, name, range, context)
  local ok = type(value) == "number" and is_finite(value) and value >= range.min and value <= range.max
    and (not range.integer or value % 1 == 0)
  if not ok then
    errors.raise(("%s: %s must be a finite %s from %s to %s, got %s")
      :format(context, name, range.what or "number", tostring(range.min), tostring(range.max), show(value)))
  end
  return value
end

local function optional_number(opts, name, default)
  if opts[name] == nil then return default end
  return config.number(opts[name], name, config.RANGES[name], "wechatpay.new")
end

-- ---- identities and keys -----------------------------------------------------

local function check_mchid(mchid)
  if type(mchid) == "number" then
    if not (is_finite(mchid) and mchid % 1 == 0 and mchid > 0 and mchid < 2 ^ 53) then
      fail("mchid must be the merchant id as a string of digits or an integer, got the number " .. show(mchid))
    end
    mchid = ("%.0f"):format(mchid)
  end
  if type(mchid) ~= "string" or not mchid:match("^%d+$") then
    fail("mchid is required: the merchant id, a string of digits such as \"1900000001\"")
  end
  return mchid
end

local function check_serial(serial)
  if type(serial) ~= "string" or serial:gsub("%s", "") == "" then
    fail("serial is required: the merchant API certificate serial (upper-case hex)")
  end
  serial = key.normalize_serial(serial)
  if not serial:match("^%x+$") or #serial > 64 then
    fail("serial must be the hex serial of the merchant API certificate")
  end
  return serial
end

local function is_public_key_id(id)
  return id:find("^PUB_KEY_ID_[%w_]+$") ~= nil
end

-- A certs id as the map will hold it, or nil.  Never echoed unless it is
-- short and plain: a key pasted where the id belongs must not be printed.
local function normalize_id(id)
  local trimmed = id:gsub("%s", "")
  if is_public_key_id(trimmed) then return trimmed end
  local serial = key.normalize_serial(id)
  if serial:match("^%x+$") and #serial <= 64 then return serial end
  return nil
end

local function describe_id(id)
  if #id <= 64 and not id:find("[%c\"\\]") and not id:find("BEGIN", 1, true) then return ("%q"):format(id) end
  return ("of %d bytes"):format(#id)
end

-- Platform keys by id, with the merchant's own key refused: the most
-- reported configuration mistake across WeChat Pay SDKs.
local function load_platform_keys(certs, merchant_serial, private_key, may_be_empty)
  if type(certs) ~= "table" then
    fail("certs is required: a table of WeChat Pay public key id or platform certificate serial -> key")
  end
  local keys, count = {}, 0
  local probe = core.rsa_sign(private_key, "wechatpay-lua key probe")
  for id, source in pairs(certs) do
    if type(id) ~= "string" then fail("certs keys must be strings (key ids or serials)") end
    local normalized = normalize_id(id)
    if not normalized then
      fail(("certs has an id %s that is neither a PUB_KEY_ID_... nor a hex certificate serial "
        .. "(is a key or certificate given as the id?)"):format(describe_id(id)))
    end
    local where = ("certs[%q]"):format(normalized)
    if normalized == merchant_serial then
      fail(where .. " is the merchant's own API certificate serial: certs holds WeChat Pay's "
        .. "public key (PUB_KEY_ID_...) or platform certificates; the merchant serial belongs in `serial`")
    end
    if not key.is_key(source) and type(source) ~= "string" then
      fail(("%s must be a key source (file://path, PEM text) or a loaded key, got %s"):format(where, type(source)))
    end
    local loaded, err = key.public(source)
    if not loaded then fail(where .. ": " .. err) end
    local cert = loaded:certificate()
    if cert and cert.serial == merchant_serial then
      fail(("%s is the merchant's own API certificate (serial %s), not a WeChat Pay platform key")
        :format(where, cert.serial))
    end
    -- a certificate is looked up by the serial WeChat Pay sends: under any
    -- other id every answer it signs would fail as from an unknown serial
    if cert and is_public_key_id(normalized) then
      fail(("%s is a platform certificate (serial %s): a PUB_KEY_ID_... names WeChat Pay's public key "
        .. "(pub_key.pem); give the certificate under its serial"):format(where, cert.serial))
    end
    if cert and normalized ~= cert.serial then
      local stripped = normalized   -- leading zero bytes, which the certificate's serial drops
      while stripped:sub(1, 2) == "00" and #stripped > #cert.serial do stripped = stripped:sub(3) end
      if stripped ~= cert.serial then
        fail(("%s holds the platform certificate with serial %s: give it under that serial")
          :format(where, cert.serial))
      end
      normalized, where = cert.serial, ("certs[%q]"):format(cert.serial)
    end
    if core.rsa_verify(loaded, "wechatpay-lua key probe", probe) then
      fail(where .. " is the public half of the merchant's own private key, not a WeChat Pay key")
    end
    if keys[normalized] then fail(where .. " is given twice (ids are compared trimmed and upper-case)") end
    keys[normalized] = loaded
    count = count + 1
  end
  if count == 0 and not may_be_empty then
    fail("certs is empty: give at least the WeChat Pay public key or a platform certificate "
      .. "(or an apiv3_key, to download the platform certificates)")
  end
  return keys
end

-- Encryption uses the WeChat Pay public key when there is one, else the
-- platform certificate that expires last.
function config.pick_encryption_key(keys)
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

-- ---- where to connect ----------------------------------------------------------

-- https://host[:port][/] and nothing else: a path would be sent but not
-- signed, http:// would carry the Authorization header in clear.  name is
-- how messages call it ("base_url", or "base_url[2]" in a list).
local function check_base_url(base_url, name)
  if type(base_url) ~= "string" then fail(name .. " must be a string such as \"https://api.mch.weixin.qq.com/\"") end
  if base_url:find("[%s%c]") then fail(name .. " holds a space, line break or control character") end
  local scheme, authority, rest = base_url:match("^(%a[%w+.-]*)://([^/?#]*)(.*)$")
  if not scheme then fail(name .. " must be an https URL such as \"https://api.mch.weixin.qq.com/\"") end
  if scheme:lower() ~= "https" then
    fail(("%s must use https, not %s: the Authorization header would go out in clear and the answer "
      .. "could not be trusted"):format(name, scheme))
  end
  local host_ok = authority:match("^[%w.-]+$") or authority:match("^[%w.-]+:%d+$")
    or authority:match("^%[[%x:.]+%]$") or authority:match("^%[[%x:.]+%]:%d+$")
  if not host_ok then fail(name .. " must name a host (and port), without user info: https://host[:port]/") end
  if rest:find("[^/]") then
    fail(name .. " must be https://host[:port]/ without a path, query or fragment: "
      .. "the path of each call is what gets signed")
  end
  return "https://" .. authority
end

-- base_url: one URL, or a list tried in order (the primary, then backups
-- such as https://api2.mch.weixin.qq.com/) -> the list, each normalized.
local function check_base_urls(base_url)
  if type(base_url) ~= "table" then return { check_base_url(base_url, "base_url") } end
  local n, count = #base_url, 0
  for i in pairs(base_url) do
    if type(i) ~= "number" or i % 1 ~= 0 or i < 1 or i > n then
      fail("base_url must be a URL or a list of URLs { \"https://primary/\", \"https://backup/\" }")
    end
    count = count + 1
  end
  if count ~= n or n == 0 or n > config.MAX_BASE_URLS then
    fail(("base_url as a list holds 1 to %d URLs without holes, got %d"):format(config.MAX_BASE_URLS, count))
  end
  local list, seen = {}, {}
  for i = 1, n do
    local url = check_base_url(base_url[i], ("base_url[%d]"):format(i))
    local same = url:lower():gsub(":443$", "")
    if seen[same] then fail(("base_url[%d] repeats base_url[%d]: each host is tried once"):format(i, seen[same])) end
    seen[same] = i
    list[i] = url
  end
  return list
end

-- "file" or "directory" for a readable path, or nil and why not.
local function path_kind(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local _, read_err, code = f:read(0)
  f:close()
  if code == 21 or (read_err and read_err:find("directory")) then return "directory" end
  return "file"
end

local function check_ca(opts)
  for _, name in ipairs{ "cafile", "capath" } do
    local path = opts[name]
    if path ~= nil then
      if type(path) ~= "string" or path == "" or path:find("%z") then fail(name .. " must be a path") end
      local kind, err = path_kind(path)
      if not kind then fail(("%s %s cannot be opened: %s"):format(name, path, tostring(err):gsub("^[^:]*: ", ""))) end
      if name == "cafile" and kind == "directory" then
        fail(("cafile %s is a directory: give a directory of hashed CA certificates as capath"):format(path))
      elseif name == "capath" and kind ~= "directory" then
        fail(("capath %s is not a directory: give a single CA bundle file as cafile"):format(path))
      end
    end
  end
end

local function check_text(opts, name, what)
  local value = opts[name]
  if value == nil then return nil end
  if type(value) ~= "string" or value == "" then fail(("%s must be %s"):format(name, what)) end
  if value:find("%c") then fail(name .. " holds a line break or control character") end
  return value
end

-- ---- calls ---------------------------------------------------------------------

local RATE_LIMIT_FIELDS = { calls = true, per = true, burst = true, shared_dict = true }
local RATE_LIMIT_USAGE = "rate_limit must be calls per minute or { calls = n, per = seconds [, burst = n >= 1]"
  .. " [, shared_dict = \"lua_shared_dict name\"] }"

-- nil, or { calls =, per =, burst = } with every number finite.
local function check_rate_limit(rate_limit)
  if rate_limit == nil or rate_limit == false then return nil end
  local calls, per, burst, shared_dict
  if type(rate_limit) == "number" then
    calls, per = rate_limit, 60
  elseif type(rate_limit) == "table" then
    for field in pairs(rate_limit) do
      if not RATE_LIMIT_FIELDS[field] then fail(("%s: unknown field '%s'"):format(RATE_LIMIT_USAGE, tostring(field))) end
    end
    calls, per, burst = rate_limit.calls, rate_limit.per or 60, rate_limit.burst
    shared_dict = rate_limit.shared_dict
    if shared_dict ~= nil and (type(shared_dict) ~= "string" or not shared_dict:match("^[%w_]+$")) then
      fail("rate_limit.shared_dict must be the name of a lua_shared_dict (letters, digits, _)")
    end
  end
  local function bad(v, min) return type(v) ~= "number" or not is_finite(v) or v < min or v > 1e9 end
  if bad(calls, 1e-9) or calls <= 0 or bad(per, 1e-9) or per <= 0 or (burst ~= nil and bad(burst, 1)) then
    fail(RATE_LIMIT_USAGE .. ", every number finite")
  end
  return { calls = calls, per = per, burst = burst, shared_dict = shared_dict }
end

local RETRY_RANGES = {
  attempts = { min = 1, max = 100, integer = true, what = "integer" },
  backoff = { min = 0, max = 3600, what = "number of seconds" },
  max_backoff = { min = 0, max = 3600, what = "number of seconds" },
  deadline = { min = 0, max = 86400, what = "number of seconds" },
}

--- retry_policy(option, base, where) -> policy: `false` disables retries, a
-- table overrides fields of base, nil keeps base.  where prefixes messages
-- ("wechatpay.new" or the call's verb).
function config.retry_policy(option, base, where)
  if option == nil then return base end
  if option == false then return retry.NONE end
  if type(option) ~= "table" then errors.raise(where .. ": retry must be a table or false") end
  local policy = {}
  for k, v in pairs(base) do policy[k] = v end
  for k, v in pairs(option) do
    if base[k] == nil then errors.raise(("%s: retry: unknown field '%s'"):format(where, tostring(k))) end
    if RETRY_RANGES[k] then
      config.number(v, "retry." .. k, RETRY_RANGES[k], where)
    elseif type(v) ~= type(base[k]) then
      errors.raise(("%s: retry.%s must be a %s"):format(where, k, type(base[k])))
    end
    policy[k] = v
  end
  return policy
end

local TRANSPORT_NAMES = { auto = true, curl = true, ngx = true }

local function check_transport(transport)
  if type(transport) == "string" then
    if not TRANSPORT_NAMES[transport] then
      fail(("transport must be \"auto\", \"curl\", \"ngx\" or an object, got %q"):format(transport))
    end
    return transport
  end
  if transport ~= nil and (type(transport) ~= "table" or (type(transport.request) ~= "function"
      and (type(transport.submit) ~= "function" or type(transport.step) ~= "function"))) then
    fail("transport must be an object with request(), or submit() and step()")
  end
  return transport
end

-- A certificate store: cert_store (an object with load and save), or
-- cert_dir (a directory, wrapped in certificates.dir_store).  Without an
-- apiv3_key the client only reads it.
local function check_cert_store(opts)
  if opts.cert_dir ~= nil and opts.cert_store ~= nil then fail("give cert_dir or cert_store, not both") end
  if opts.cert_dir ~= nil then
    local dir = opts.cert_dir
    if type(dir) ~= "string" or dir == "" or dir:find("%z") then fail("cert_dir must be a directory path") end
    local kind = path_kind(dir)
    if kind ~= "directory" then fail(("cert_dir %s is not a directory"):format(dir)) end
    return require("wechatpay.certificates").dir_store(dir)
  end
  local store = opts.cert_store
  if store == nil then return nil end
  local ok = (type(store) == "table" or type(store) == "userdata") and pcall(function()
    assert(type(store.load) == "function" and type(store.save) == "function")
  end)
  if not ok then fail("cert_store must be an object with load() and save(serial, pem)") end
  return store   -- without an apiv3_key, only read: another process downloads
end

-- resolve = { ["host:port"] = "address" }: a name pinned to an address
-- (curl's CURLOPT_RESOLVE), for both transports.  Returns the map, or nil.
local function check_resolve(resolve)
  if resolve == nil then return nil end
  if type(resolve) ~= "table" then fail("resolve must be a table { [\"host:port\"] = \"address\" }") end
  local map = {}
  for name, address in pairs(resolve) do
    local host, port
    if type(name) == "string" then host, port = name:match("^([%w.-]+):(%d+)$") end
    if not host or tonumber(port) < 1 or tonumber(port) > 65535 then
      fail(("resolve: key %s must be \"host:port\""):format(type(name) == "string" and ("%q"):format(name:sub(1, 80)) or type(name)))
    end
    if type(address) ~= "string" or not (address:match("^%d+%.%d+%.%d+%.%d+$") or address:match("^[%x:]+$")) then
      fail(("resolve[%q] must be an IPv4 or IPv6 address"):format(name))
    end
    map[host:lower() .. ":" .. tonumber(port)] = address
  end
  return map
end

-- The CA bundle's bytes, read now: nginx workers (running as nobody) and
-- chroots need not read the file again.
local function read_ca(path)
  if path == nil then return nil end
  local f = io.open(path, "rb")
  local pem = f and f:read("*a")
  if f then f:close() end
  if not pem or pem == "" then fail(("cafile %s cannot be read or is empty"):format(path)) end
  return pem
end

--- check(opts, default_user_agent) -> settings; raises on a mistake.
function config.check(opts, default_user_agent)
  if type(opts) ~= "table" then fail("options table expected, got " .. type(opts)) end
  for name in pairs(opts) do
    if not OPTIONS[name] then fail(("unknown option '%s'"):format(tostring(name))) end
  end
  local mchid = check_mchid(opts.mchid)
  local serial = check_serial(opts.serial)
  if opts.private_key == nil then
    fail("private_key is required: \"file:///path/to/apiclient_key.pem\", PEM text or a loaded key")
  end
  if opts.passphrase ~= nil and type(opts.passphrase) ~= "string" then fail("passphrase must be a string") end
  if type(opts.private_key) ~= "string" and not key.is_key(opts.private_key) then
    fail("private_key must be \"file:///path\", PEM text or a loaded key, got " .. type(opts.private_key))
  end
  local private_key, err = key.private(opts.private_key, opts.passphrase)
  if not private_key then fail("private_key: " .. err) end
  local v2 = v2config.check(opts, private_key, fail)
  local apiv3_key = opts.apiv3_key
  if apiv3_key ~= nil and (type(apiv3_key) ~= "string" or #apiv3_key ~= 32) then
    fail("apiv3_key must be the 32-character APIv3 key")
  end
  -- with an APIv3 key the certificates can be downloaded: certs may be empty
  local may_be_empty = apiv3_key ~= nil or opts.cert_dir ~= nil or opts.cert_store ~= nil
  local platform_keys = load_platform_keys(opts.certs == nil and may_be_empty and {} or opts.certs, serial,
    private_key, may_be_empty)
  check_ca(opts)
  local cert_store = check_cert_store(opts)
  if opts.on_call ~= nil and type(opts.on_call) ~= "function" then
    fail("on_call must be a function(record), called once per call when it settles")
  end
  local base_urls = check_base_urls(opts.base_url or DEFAULT_BASE_URL)
  local refresh_interval = false
  if opts.refresh_interval ~= false then refresh_interval = optional_number(opts, "refresh_interval", 12 * 3600) end
  return {
    mchid = mchid,
    serial = serial,
    private_key = private_key,
    -- a function, so that no dump of the client's tables shows the key
    apiv3_key = apiv3_key and function() return apiv3_key end,
    platform_keys = platform_keys,
    encryption_key_id = config.pick_encryption_key(platform_keys),
    base_url = base_urls[1],
    -- the primary and its backups, in order (client.lua's failover)
    base_urls = base_urls,
    failover_cooldown = optional_number(opts, "failover_cooldown", 30),
    on_call = opts.on_call,
    cafile = opts.cafile,
    ca_pem = read_ca(opts.cafile),
    resolve = check_resolve(opts.resolve),
    capath = opts.capath,
    proxy = check_text(opts, "proxy", "a proxy URL"),
    user_agent = check_text(opts, "user_agent", "a non-empty string") or default_user_agent,
    timeout = optional_number(opts, "timeout", 30),
    connect_timeout = optional_number(opts, "connect_timeout", 5),
    max_concurrency = optional_number(opts, "max_concurrency", nil),
    rate_limit = check_rate_limit(opts.rate_limit),
    retry = config.retry_policy(opts.retry, retry.DEFAULT, "wechatpay.new"),
    transport = check_transport(opts.transport),
    cert_store = cert_store,
    -- seconds between periodic certificate refreshes; false: none
    refresh_interval = refresh_interval,
    v2 = v2,   -- APIv2 settings (apiv2_key, merchant_cert), or nil
  }
end

return config
