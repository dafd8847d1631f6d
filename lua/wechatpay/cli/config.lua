--- Where the command-line tools find a merchant's configuration: a Lua
-- file returning the wechatpay.new options (--config FILE, or the
-- environment variable WECHATPAY_CONFIG), or else WECHATPAY_* environment
-- variables.  Shared by `wechatpay call`, `doctor`, `certs` and `grant`.
--
-- A config file may add what only the tools read:
--   merchant_cert  = "file:///path/apiclient_cert.pem"  (doctor checks the key pair and serial;
--                                                        without serial, the serial is read from it)
--   apiv3_key_file = "/path/apiv3_key"                  (instead of apiv3_key)
-- Nothing here prints a value of the file: it holds keys.
local key = require("wechatpay.key")

local config = {}

--- the options only the tools read, never passed to wechatpay.new
config.TOOL_OPTIONS = { merchant_cert = true, apiv3_key_file = true }

--- The environment variables, in the order --help lists them.
config.ENV = {
  { "WECHATPAY_CONFIG", "a Lua config file (as --config); when set, the variables below are not read" },
  { "WECHATPAY_MCHID", "the merchant id" },
  { "WECHATPAY_SERIAL", "the merchant API certificate serial (default: read from WECHATPAY_MERCHANT_CERT)" },
  { "WECHATPAY_PRIVATE_KEY", "path of the merchant API private key (apiclient_key.pem)" },
  { "WECHATPAY_PASSPHRASE", "its passphrase, if it is encrypted" },
  { "WECHATPAY_MERCHANT_CERT", "path of the merchant API certificate (apiclient_cert.pem)" },
  { "WECHATPAY_PUBLIC_KEY_ID", "the WeChat Pay public key id (PUB_KEY_ID_...)" },
  { "WECHATPAY_PUBLIC_KEY", "path of that public key (pub_key.pem)" },
  { "WECHATPAY_CERTS", "platform certificates: ID=path[,ID=path...]" },
  { "WECHATPAY_CERT_DIR", "a directory of downloaded platform certificates (wechatpay certs --output)" },
  { "WECHATPAY_APIV3_KEY_FILE", "path of a file holding the APIv3 key" },
  { "WECHATPAY_APIV3_KEY", "the APIv3 key itself (WECHATPAY_APIV3_KEY_FILE is safer)" },
  { "WECHATPAY_BASE_URL", "default https://api.mch.weixin.qq.com/; several hosts separated by commas" },
  { "WECHATPAY_CAFILE", "a CA bundle for the TLS connection" },
}

-- ---- the Lua config file ------------------------------------------------------

-- Lua's words for what is wrong, without the text it was found in: the
-- file holds the private key and the APIv3 key, and Lua's messages quote
-- it ("near '...'", "(constant '...')"). Only Lua's own tokens stay quoted.
local LUA_WORDS = {}
for w in ("and break do else elseif end false for function goto if in local nil not or repeat return "
          .. "then true until while string number boolean table userdata thread"):gmatch("%a+") do
  LUA_WORDS[w] = true
end

local function is_lua_token(token)
  return LUA_WORDS[token] or (#token <= 3 and token:find("^%p+$")) or token:find("^<%a+>$")
end

local function without_text(message)
  message = message:gsub(" near .*$", "")
  -- a constant's text is the file's, whatever it looks like
  message = message:gsub("%(constant '.*'%)", "(constant '...')")
  -- quotes are paired naively, and quoted text may hold quotes itself
  -- ("(constant 'x'SECRET'y')"): unless every quoted piece is one of Lua's
  -- own tokens, all from the first quote to the last goes
  local all_lua = true
  for token in message:gmatch("'([^']*)'") do
    if not is_lua_token(token) then all_lua = false end
  end
  if not all_lua or select(2, message:gsub("'", "")) % 2 == 1 then
    message = message:gsub("'.*'", "'...'")
  end
  if #message > 200 then message = message:sub(1, 200) .. "..." end
  return message
end

-- "path:LINE: message" -> LINE, message (nil when it is not in the file)
local function config_position(err, path)
  err = tostring(err)
  local at = err:find(path .. ":", 1, true)
  if at then
    local line, message = err:sub(at + #path + 1):match("^(%d+):%s*(.*)$")
    if line then return tonumber(line), message end
  end
  return nil, (err:gsub("^[^:]*:%d+:%s*", ""))
end

--- load_file(path) -> options (a fresh table) | nil, message
function config.load_file(path)
  local probe, perr = io.open(path, "rb")
  if not probe then return nil, ("cannot load --config: %s"):format(perr) end
  local start = probe:read(10) or ""
  probe:close()
  if start == "-----BEGIN" then
    return nil, ("--config %s is a PEM file, not Lua: give its path in the config file as "
      .. "private_key = \"file:///...\" (or certs)"):format(path)
  end
  local chunk, err = loadfile(path)
  if not chunk then
    local line, message = config_position(err, path)
    return nil, ("cannot load --config %s: it is not valid Lua%s: %s (its text is not shown: it holds keys)")
      :format(path, line and (" at line " .. line) or "", without_text(message))
  end
  local ok, options = pcall(chunk)
  if not ok then
    local line, message = config_position(options, path)
    return nil, ("--config %s raised an error%s: %s (its text is not shown: it holds keys)")
      :format(path, line and (" at line " .. line) or "", without_text(message))
  end
  if type(options) ~= "table" then
    return nil, ("--config %s must return a table of wechatpay.new options, it returned %s"):format(path, type(options))
  end
  local copy = {}
  for k, v in pairs(options) do copy[k] = v end
  return copy
end

-- ---- the environment -----------------------------------------------------------

--- key_source(value) -> a key source: PEM text, or a form with a scheme
-- (file://, private.pkcs8://...), as it is; anything else is a path.
function config.key_source(value)
  if value:find("-----BEGIN ", 1, true) or value:find("^%a[%w.+-]*://") then return value end
  return "file://" .. value
end
local key_source = config.key_source

--- read_apiv3_key_file(path) -> the key | nil, message.  The message names
-- the path only when it cannot be the key itself: a key pasted where its
-- file belongs must not be printed.
function config.read_apiv3_key_file(path)
  local f, err = io.open(path, "rb")
  if not f then
    local reason = tostring(err):match(": ([^:]*)$") or "cannot be opened"
    if path:find("/", 1, true) and not path:find("%s") then
      return nil, ("cannot read the APIv3 key file %s: %s"):format(path, reason)
    end
    return nil, ("cannot read the APIv3 key file (a name of %d characters, no path: is it the key itself? "
      .. "write the key to a file and give its path): %s"):format(#path, reason)
  end
  local text = f:read("*a") or ""
  f:close()
  return (text:gsub("%s+$", ""))
end

local function split_commas(value)
  local list = {}
  for item in value:gmatch("[^,]+") do
    item = item:match("^%s*(.-)%s*$")
    if item ~= "" then list[#list + 1] = item end
  end
  return list
end

--- from_env(getenv) -> options | nil, message: the WECHATPAY_* variables
-- as wechatpay.new options (plus the tools' own).
function config.from_env(getenv)
  local function get(name)
    local v = getenv(name)
    if v == nil or v == "" then return nil end
    return v
  end
  local options = {
    mchid = get("WECHATPAY_MCHID"),
    serial = get("WECHATPAY_SERIAL"),
    passphrase = get("WECHATPAY_PASSPHRASE"),
    cafile = get("WECHATPAY_CAFILE"),
    cert_dir = get("WECHATPAY_CERT_DIR"),
  }
  local private_key = get("WECHATPAY_PRIVATE_KEY")
  if private_key then options.private_key = key_source(private_key) end
  local merchant_cert = get("WECHATPAY_MERCHANT_CERT")
  if merchant_cert then options.merchant_cert = key_source(merchant_cert) end
  local certs
  local id, public_key = get("WECHATPAY_PUBLIC_KEY_ID"), get("WECHATPAY_PUBLIC_KEY")
  if (id == nil) ~= (public_key == nil) then
    return nil, "WECHATPAY_PUBLIC_KEY_ID and WECHATPAY_PUBLIC_KEY go together: the id (PUB_KEY_ID_...) "
      .. "and the path of the public key file"
  end
  if id then certs = { [id] = key_source(public_key) } end
  local listed = get("WECHATPAY_CERTS")
  if listed then
    certs = certs or {}
    for i, entry in ipairs(split_commas(listed)) do
      local cert_id, path = entry:match("^([%w_]+)=(.+)$")
      if not cert_id then
        return nil, ("WECHATPAY_CERTS entry %d is not ID=path (ID the certificate serial or PUB_KEY_ID_...)"):format(i)
      end
      certs[cert_id] = key_source(path)
    end
  end
  options.certs = certs
  local base_url = get("WECHATPAY_BASE_URL")
  if base_url then
    local hosts = split_commas(base_url)
    options.base_url = #hosts == 1 and hosts[1] or hosts
  end
  -- the APIv3 key is read by resolve_apiv3_key, which says where it came from
  return options
end

-- ---- the profile: what the tools work from -------------------------------------

-- The APIv3 key: the file's apiv3_key, its apiv3_key_file, else (no
-- config file) the environment's.  Trailing white space (a newline an editor adds) is dropped.
local function resolve_apiv3_key(options, getenv)
  local from_file = options.apiv3_key_file
  if options.apiv3_key ~= nil then
    return options.apiv3_key, "apiv3_key"
  end
  if from_file == nil and getenv("WECHATPAY_APIV3_KEY_FILE") and getenv("WECHATPAY_APIV3_KEY_FILE") ~= "" then
    from_file = getenv("WECHATPAY_APIV3_KEY_FILE")
  end
  if from_file ~= nil then
    if type(from_file) ~= "string" then return nil, "apiv3_key_file", "apiv3_key_file must be a path" end
    local text, err = config.read_apiv3_key_file(from_file)
    if not text then return nil, "apiv3_key_file", err end
    return text, from_file
  end
  local env = getenv("WECHATPAY_APIV3_KEY")
  if env and env ~= "" then return (env:gsub("%s+$", "")), "WECHATPAY_APIV3_KEY" end
  return nil
end

--- load(path, getenv) -> profile | nil, message.  path: --config (nil: the
-- WECHATPAY_CONFIG variable, else the environment).  A profile:
--   options       the wechatpay.new options as configured (not yet checked)
--   source        "config file PATH" | "environment (WECHATPAY_*)"
--   merchant_cert the certificate source, or nil
--   apiv3_key, apiv3_key_from, apiv3_key_error
--   base_urls     the list of hosts (base_url may be a string or a list)
function config.load(path, getenv)
  getenv = getenv or os.getenv
  if path == nil and getenv("WECHATPAY_CONFIG") and getenv("WECHATPAY_CONFIG") ~= "" then
    path = getenv("WECHATPAY_CONFIG")
  end
  local options, err, source
  if path then
    -- the file is the whole configuration, as --help says: no WECHATPAY_*
    -- variable fills what it leaves out (a passphrase or APIv3 key meant
    -- for another merchant would otherwise slip in)
    options, err = config.load_file(path)
    source = "config file " .. path
    getenv = function() return nil end
  else
    options, err = config.from_env(getenv)
    source = "environment (WECHATPAY_*)"
  end
  if not options then return nil, err end
  return config.profile(options, source, getenv)
end

--- profile(options, source [, getenv]) -> the profile of options made
-- elsewhere (doctor --mock makes them for the mock it starts).
function config.profile(options, source, getenv)
  getenv = getenv or os.getenv
  local profile = { options = options, source = source, merchant_cert = options.merchant_cert }
  if type(profile.merchant_cert) == "string" and not profile.merchant_cert:find("^file://")
      and not profile.merchant_cert:find("-----BEGIN ", 1, true) then
    profile.merchant_cert = "file://" .. profile.merchant_cert
  end
  profile.apiv3_key, profile.apiv3_key_from, profile.apiv3_key_error = resolve_apiv3_key(options, getenv)
  local base_url = options.base_url
  if type(base_url) == "table" then
    profile.base_urls = {}
    for i, host in ipairs(base_url) do profile.base_urls[i] = host end
  else
    profile.base_urls = { base_url or "https://api.mch.weixin.qq.com/" }
  end
  -- without a serial, the merchant certificate's (when it loads)
  if options.serial == nil and profile.merchant_cert then
    local cert = key.load(profile.merchant_cert, nil, "public")
    local info = cert and cert.certificate and cert:certificate()
    if info then
      options.serial = info.serial
      profile.serial_from_cert = true
    end
  end
  return profile
end

--- client_options(profile [, overrides]) -> options for wechatpay.new:
-- without the tools' own options, with the APIv3 key resolved and every
-- configured host (the client fails over from the first to the next;
-- overrides.base_url picks one, as doctor does to check each).
function config.client_options(profile, overrides)
  local options = {}
  for k, v in pairs(profile.options) do
    if not config.TOOL_OPTIONS[k] then options[k] = v end
  end
  options.apiv3_key = profile.apiv3_key
  if #profile.base_urls == 1 then
    options.base_url = profile.base_urls[1]
  else
    options.base_url = {}
    for i, url in ipairs(profile.base_urls) do options.base_url[i] = url end
  end
  for k, v in pairs(overrides or {}) do options[k] = v end
  return options
end

--- configured([overrides]) -> options for wechatpay.new, profile | nil, err:
-- a client configured as the tools are (WECHATPAY_CONFIG or the
-- WECHATPAY_* variables), for scripts such as examples/ that want the
-- same rules; err when it is not configured at all.
function config.configured(overrides)
  local profile, err = config.load()
  err = err or (profile and profile.apiv3_key_error)
  if not err and profile.options.mchid == nil then
    err = (profile.source:find("^config file ") and ("mchid is missing from the " .. profile.source)
      or "WECHATPAY_MCHID is not set") .. ": configure as for bin/wechatpay (bin/wechatpay --help)"
  end
  if err then return nil, err end
  return config.client_options(profile, overrides), profile
end

--- A wechatpay.new error without the "file:line:" of where it was raised.
function config.message(err)
  return (tostring(err):gsub("^[^:\n]*:%d+: ", ""))
end

return config
