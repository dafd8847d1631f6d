-- Worker-side state of the mock (runs inside nginx, LuaJIT): the config the
-- launcher wrote, the loaded keys, and the shared dicts.
--
-- All mutable state lives in lua_shared_dict so the admin server block and the
-- API server block see the same thing. There is one worker and no code path
-- yields between reading and writing a dict entry, so read-modify-write
-- sequences are atomic without locks.
local cjson = require("cjson.safe")
local util = require("wechatpay.mock.util")
local read_file = util.read_file

local state = {}

state.config = nil   -- decoded config.json
state.keys = nil     -- luaossl pkey objects, loaded per worker

-- init_by_lua (master): read the config; errors here abort nginx startup, and
-- the launcher reports them with the error log tail.
function state.init(config_path)
  local text = assert(read_file(config_path))
  local config = assert(cjson.decode(text))
  state.config = config
end

local function load_key(path)
  local pkey = require("openssl.pkey")
  return pkey.new(assert(read_file(path)))
end

local function load_cert_key(path)
  local x509 = require("openssl.x509")
  local pem = assert(read_file(path))
  return x509.new(pem, "PEM"):getPublicKey()
end

-- A launcher that died without stop() must not leave a daemon behind: poll
-- its /proc entry (pid + start time, so a reused pid does not fool us) and
-- shut nginx down, removing the temp dir, once it is gone.
local function launcher_alive(pid, start_time)
  local f = io.open("/proc/" .. pid .. "/stat", "r")
  if not f then
    return false
  end
  local stat = f:read("*a") or ""
  f:close()
  -- Fields after the ")" that closes the command name: state is field 3,
  -- starttime field 22.
  local rest = stat:match("%)%s+(.*)$")
  if not rest then
    return false
  end
  local fields = {}
  for field in rest:gmatch("%S+") do
    fields[#fields + 1] = field
  end
  if fields[1] == "Z" or fields[1] == "X" then
    return false
  end
  return start_time == nil or fields[20] == start_time
end

local function master_pid()
  local f = io.open("/proc/self/stat", "r")
  if not f then
    return nil
  end
  local stat = f:read("*a") or ""
  f:close()
  local ppid = stat:match("%)%s+%S+%s+(%d+)")
  return ppid
end

local function watch_launcher(premature)
  if premature then
    return
  end
  local config = state.config
  if launcher_alive(config.launcher_pid, config.launcher_start_time) then
    return
  end
  ngx.log(ngx.WARN, "wechatpay.mock: launcher process ", config.launcher_pid,
    " is gone, shutting down")
  -- Only ever remove the directory the launcher created for us, and only if it
  -- still carries our marker file.
  local dir = config.dir
  local marker = io.open(dir .. "/.wechatpay-mock", "r")
  if marker then
    marker:close()
    os.execute("rm -rf '" .. dir:gsub("'", "") .. "'")
  end
  local pid = master_pid()
  if pid then
    os.execute("kill -TERM " .. pid)
  end
end

-- init_worker_by_lua: load keys (luaossl objects are per process) and arm the
-- launcher watchdog.
function state.init_worker()
  local config = state.config
  local files = config.files
  local ok = pcall(function()
    state.keys = {
      merchant_public = load_cert_key(files.merchant_cert),
      platform = load_key(files.platform_private_key),
      platform_cert = load_key(files.platform_cert_key),
    }
    -- the platform certificates by serial: key (to sign, decrypt) and PEM (to deliver)
    state.certs = {}
    for _, c in ipairs({
      { config.platform_cert_old_serial, files.platform_cert_old_key, files.platform_cert_old },
      { config.platform_cert_serial, files.platform_cert_key, files.platform_cert },
      { config.platform_cert_next_serial, files.platform_cert_next_key, files.platform_cert_next },
    }) do
      state.certs[#state.certs + 1] = { serial = c[1], key = load_key(c[2]), pem = assert(read_file(c[3])) }
    end
  end)
  if not ok then
    -- Never log the error object verbatim: a parse error could quote key bytes.
    ngx.log(ngx.ERR, "wechatpay.mock: cannot load the mock keys")
    state.keys = nil
    state.load_error = "cannot load the mock keys"
    return
  end
  local dicts = state.dicts()
  dicts.settings:safe_add("latency", config.latency or 0)
  dicts.settings:safe_add("rate_limit", config.rate_limit or 0)
  dicts.settings:safe_add("cert_generation", 2)
  if config.watch_launcher and config.launcher_pid then
    ngx.timer.every(1, watch_launcher)
  end
  state.ready = true
end

function state.dicts()
  local shared = ngx.shared
  return {
    data = shared.wechatpay_mock_data,       -- grants, coupons, rate counters
    stats = shared.wechatpay_mock_stats,     -- counters shown by server:stats()
    faults = shared.wechatpay_mock_faults,   -- the armed fault queue
    settings = shared.wechatpay_mock_settings, -- latency, rate_limit, coupon sequence
    nonces = shared.wechatpay_mock_nonces,   -- Authorization nonces seen, for 300 s
  }
end

-- Runtime-adjustable settings (server:configure) live in a dict, not in config.
function state.setting(name)
  return state.dicts().settings:get(name)
end

-- The platform certificates in service: the one signing now (index
-- cert_generation in state.certs) and the one before it, which overlaps.
function state.current_certificates()
  local generation = state.setting("cert_generation") or 2
  return state.certs[generation], state.certs[generation - 1]
end

-- The key the mock signs responses with, and the serial it announces.
function state.signing_key()
  local config = state.config
  if config.sign_with == "certificate" then
    local current = state.current_certificates()
    return current.key, current.serial
  end
  return state.keys.platform, config.platform_key_id
end

-- The private key named by a request's Wechatpay-Serial header, for OAEP:
-- the public key, or a platform certificate in service (the two that
-- /v3/certificates delivers now), never one not yet issued or retired, and
-- none for a merchant that has only the public key.
function state.decryption_key(serial)
  local config = state.config
  if serial == config.platform_key_id then
    return state.keys.platform
  end
  -- the serial exactly as WeChat Pay issues it (upper-case hex): a client
  -- that sends another spelling has not normalised what it was given
  if type(serial) == "string" and not config.public_key_only then
    local current, previous = state.current_certificates()
    for _, c in ipairs{ current, previous } do
      if c.serial == serial then return c.key end
    end
  end
  return nil
end

return state
