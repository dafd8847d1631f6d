--- wechatpay.mock: a WeChat Pay API v3 look-alike for tests, a real HTTPS
-- server on 127.0.0.1 (nginx + lua module, one worker, files in a temp dir).
-- Its crypto is luaossl, never wechatpay.core, so a mistake made the same way
-- on both sides cannot hide.
--
--   local mock = require("wechatpay.mock")
--   local server = assert(mock.start{       -- every option optional
--     mchid = "1900000001",
--     latency = 0,               -- seconds added to every API request
--     rate_limit = 1000,         -- grant calls per minute before 429 (every authenticated call to
--                                -- the grant endpoint counts: replays and refused ones too); false = off
--     users = { [openid] = { name = "张三", id_card = "110101199003071234", appid = "wx..." } },
--                                -- merged over mock.default_users(); false removes one; appid (or
--                                -- appids = { ... }): the apps the openid belongs to, default
--                                -- mock.DEFAULT_APPIDS (wx233544546545989, wxd678efh567hg6787)
--     stocks = { ["123"] = true, ["9856001"] = false },
--                                -- the grantable stock ids, merged over mock.DEFAULT_STOCKS
--                                -- (9856000, 9856001); false removes one
--     sign_with = "public_key",  -- or "certificate": the key that signs responses
--     apiv3_key = "<32 characters>",   -- seals callbacks and certificates (default: random)
--     public_key_only = false,   -- true: /v3/certificates answers 404 "无可用的平台证书"
--     apiv2_key = "<32 letters/digits>",  -- APIv2 signing key (default: random)
--   })
--   server.base_url  server.port  server.cafile  server.mchid  server.merchant_serial
--   server.merchant_key_file  server.merchant_cert_file
--   server.platform_key_id  server.platform_public_key_file
--   server.platform_cert_serial  server.platform_cert_file  server.users  server.stocks  server.apiv3_key
--   server.apiv2_key
--   server.platform_cert_old_serial  server.platform_cert_next_serial
--   server:rotate_certificates()  --> the serial that signs from now on (sign_with = "certificate")
--   server:notify(url, { event_type =, resource = {...}, id =, fault =, schedule = { 0.1, ... } })
--       --> n, event id: POSTs a signed notification, redelivered on non-2xx
--   server:notification(n)  --> { id, done, deliveries, attempts = { { delivery, attempt, status, answer }, ... } }
--   server:fault("status", { status = 500, count = 2, path = "/coupons$" })
--   server:clear_faults()
--   server:stats()    --> { connections, requests, grants, in_flight_max, in_flight }
--   server:reset()    -- zero counters, forget grants, faults and rate counters
--   server:coupon(coupon_id)   --> { coupon_id, stock_id, openid, appid, out_request_no, amount, ... } or nil
--   server:uploads()   --> the media upload requests seen, oldest first: { path, status, code, media_id,
--                          content_type, content_length, body_length, signed, meta,
--                          file = { filename, content_type, size, sha256 } }
--   server:media(media_id)     --> { media_id, sha256, size, path, filename, content_type, uploads } or nil
--   server:configure{ latency = 0.05, rate_limit = 3 }
--   server:client{ timeout = 2 }   --> wechatpay.new{...} configured for this server (with apiv2_key and
--                                      merchant_cert; apiv2_key = false / merchant_cert = false leave them out)
--   server:v2_record("order" | "redpack" | "refund", id)  --> what an APIv2 call stored, or nil
--   server:v2_stats()  --> { v2_requests, v2_payments, redpacks, refunds }
--   server:stop()     -- idempotent; also on __gc / __close
--
-- Endpoints (all verify the Authorization header, and refuse a nonce used within 300 s). Before
-- that, as WeChat Pay: a path with an empty segment (a trailing "/" too) is 404 NOT_FOUND; a
-- missing Accept, or one that admits no JSON (application/json, application/*, */*; the bill
-- file takes any), and a body not typed application/json (multipart/form-data on the upload
-- paths) are 400 INVALID_REQUEST.
--   POST /v3/multiuse/users/{openid}/coupons           grant (idempotent on out_request_no; a seeded
--        stock, else 404 RESOURCE_NOT_EXISTS; an appid of the openid, else 400 PARAM_ERROR;
--        Wechatpay-Serial exactly as issued, a certificate serial in upper-case hex)
--   GET  /v3/marketing/favor/users/{openid}/coupons/{coupon_id}?appid=
--   ANY  /v3/mock/echo/...   signed JSON echo of method, uri, query, body, headers; DELETE -> 204
--   ANY  /v3/mock/no_content signed 204
--   GET  /v3/bill/tradebill?bill_date=YYYY-MM-DD[&tar_type=GZIP]  ->  hash_type, hash_value, download_url
--   GET  /v3/bill/fundflowbill?bill_date=YYYY-MM-DD[&tar_type=GZIP]  (the same)
--   GET  /v3/marketing/favor/stocks/{stock_id}/use-flow|refund-flow, /v3/multiuse/stocks/{stock_id}/
--        use-flow|send-flow|refund-flow  ->  hash_type, hash_value, url
--   GET  /v3/billdownload/file?token=              unsigned bytes (the CSV, or its gzip)
--   GET  /v3/certificates    two overlapping platform certificates, sealed with the APIv3 key
--   POST /v3/merchant/media/upload, /v3/marketing/favor/media/image-upload,
--        /v3/merchant-service/images/upload (JPEG/PNG/BMP, 2 MB),
--        /v3/merchant/media/video_upload (MP4, MOV, AVI, ..., 5 MB)
--        multipart meta + file, signed over meta; 400 PARAM_ERROR on a sha256 mismatch,
--        a type other than the bytes say or the endpoint takes, a file over the limit
--   POST /pay/micropay, /pay/unifiedorder, /pay/orderquery, /mmpaymkttransfers/sendredpack,
--        /secapi/pay/refund    APIv2 (wechatpay.mock.v2: XML, its faults, mutual TLS)
--
-- Faults, each for the next opts.count (default 1) /v3/ requests whose URI
-- matches opts.path (a Lua pattern, optional), in the order armed:
--   tamper_body      signed, then one character of the body changed
--   signtest         Wechatpay-Signature = "WECHATPAY/SIGNTEST/" .. base64 junk
--   timestamp        Wechatpay-Timestamp = now + opts.offset, correctly signed
--   date             a server clock opts.offset s off: the HTTP Date header, and the
--                    window the request's timestamp must fall in (401 past 300 s);
--                    Wechatpay-Timestamp and the signature are unchanged
--   unknown_serial   Wechatpay-Serial = opts.serial or PUB_KEY_ID_999..., real signature
--   missing_headers  2xx without opts.headers (default: all four Wechatpay-* headers)
--   status           unsigned WeChat-shaped error opts.status (default 500), not processed;
--                    with a Retry-After header of opts.retry_after seconds if given
--   delay            sleep opts.seconds; then process if opts.then_process, else
--                    reply opts.status (default 504) unprocessed
--   reset            headers + half the body, then the connection is closed
--   truncate         Content-Length = body + opts.missing (default 16), whole body, close
--   status_after_grant  process the request, then reply opts.status (default 500)
--   wrong_hash       a bill call answers a hash the file does not have
--   cut              a bill download answers only opts.keep (default 0.5) of the file
--   chunked          a bill download answers the whole file in chunked encoding
--   (reset and truncate apply to bill downloads too)
--
--   server:bill(name, { rows =, hash_type = "SHA1" | "SHA256" }) --> meta
--       makes (or remakes) a bill before its first call: name "trade-YYYYMMDD",
--       "fundflow-YYYYMMDD" or "stock-<stock_id>-<use|refund|send>"; meta = { size,
--       gzip_size, sha1, sha256, rows } (the hashes by sha1sum/sha256sum)
local socket = require("socket")
local http = require("socket.http")
local ltn12 = require("ltn12")
local cjson = require("cjson")
local rand = require("openssl.rand")
local bills = require("wechatpay.mock.bills")
local faults = require("wechatpay.mock.faults")
local nginx_conf = require("wechatpay.mock.nginx_conf")
local pki = require("wechatpay.mock.pki")
local users_module = require("wechatpay.mock.users")
local util = require("wechatpay.mock.util")
local hex = util.hex
local read_file = util.read_file
local write_file = util.write_file

local mock = {}

mock.default_users = users_module.defaults
mock.DEFAULT_APPIDS = users_module.DEFAULT_APPIDS
mock.DEFAULT_STOCKS = users_module.DEFAULT_STOCKS

local NGINX_CANDIDATES = {
  "/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx",
  "/usr/local/openresty/nginx/sbin/nginx", "/usr/local/nginx/sbin/nginx",
}
local MODULE_DIRS = {
  "/usr/lib/nginx/modules", "/usr/lib64/nginx/modules", "/usr/share/nginx/modules",
  "/usr/local/lib/nginx/modules",
}
-- The worker runs LuaJIT (Lua 5.1 ABI) whatever runs the launcher.
local WORKER_LUA_PATH = {
  "/usr/local/share/lua/5.1/?.lua", "/usr/local/share/lua/5.1/?/init.lua",
  "/usr/share/lua/5.1/?.lua", "/usr/share/lua/5.1/?/init.lua",
}
local WORKER_LUA_CPATH = {
  "/usr/local/lib/lua/5.1/?.so", "/usr/lib/x86_64-linux-gnu/lua/5.1/?.so",
  "/usr/lib/aarch64-linux-gnu/lua/5.1/?.so", "/usr/lib64/lua/5.1/?.so",
  "/usr/lib/lua/5.1/?.so",
}

local OPTION_TYPES = {
  mchid = "string", latency = "number", rate_limit = "number|false", users = "table", stocks = "table",
  sign_with = "string", nginx = "string", modules_dir = "string",
  worker_lua_path = "string", worker_lua_cpath = "string", watch_launcher = "boolean",
  start_timeout = "number", apiv3_key = "string", public_key_only = "boolean", apiv2_key = "string",
}

---------------------------------------------------------------------------
-- small helpers

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then
    f:close()
    return true
  end
  return false
end

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Runs a shell command; returns success, combined output. Works the same on
-- 5.1 (os.execute returns a number) and 5.4, as it reads the status itself.
local function run(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"__rc=$?\"", "r")
  if not p then
    return false, "cannot run " .. cmd
  end
  local out = p:read("*a") or ""
  p:close()
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  out = out:gsub("__rc=%d+%s*$", "")
  return rc == 0, out, rc
end

local function tail(path, max_lines)
  local text = read_file(path)
  if not text or text == "" then
    return ""
  end
  local lines = {}
  for l in text:gmatch("[^\n]+") do
    lines[#lines + 1] = l
  end
  local first = math.max(1, #lines - (max_lines or 15) + 1)
  return table.concat(lines, "\n", first)
end

-- pid and start time of this process, read from /proc so Lua 5.4 needs no
-- posix module; the worker polls them to notice a launcher that died.
local function self_identity()
  local stat = read_file("/proc/self/stat")
  if not stat then
    return nil
  end
  local pid = stat:match("^(%d+)")
  local rest = stat:match("%)%s+(.*)$") or ""
  local fields = {}
  for field in rest:gmatch("%S+") do
    fields[#fields + 1] = field
  end
  return pid, fields[20]
end

-- True while pid is a live (non-zombie) process. nginx daemonises, so its
-- master is reparented; a PID 1 that does not reap leaves a zombie behind.
local function process_alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  if not stat then
    return false
  end
  local process_state = stat:match("%)%s+(%S)")
  return process_state ~= "Z" and process_state ~= "X"
end

local function free_port()
  local server = assert(socket.bind("127.0.0.1", 0))
  local _, port = server:getsockname()
  server:close()
  return tonumber(port)
end

---------------------------------------------------------------------------
-- locating nginx and its lua module

local function find_nginx(opts)
  local explicit = opts.nginx or os.getenv("WECHATPAY_MOCK_NGINX")
  if explicit then
    if file_exists(explicit) then
      return explicit
    end
    return nil, "nginx binary " .. explicit .. " not found"
  end
  local candidates = {}
  for dir in (os.getenv("PATH") or ""):gmatch("[^:]+") do
    candidates[#candidates + 1] = dir .. "/nginx"
    candidates[#candidates + 1] = dir .. "/openresty"
  end
  for _, path in ipairs(NGINX_CANDIDATES) do
    candidates[#candidates + 1] = path
  end
  for _, path in ipairs(candidates) do
    if file_exists(path) then
      return path
    end
  end
  return nil, "nginx not found (install nginx with the lua module, or set opts.nginx / "
    .. "WECHATPAY_MOCK_NGINX)"
end

-- The load_module lines nginx needs: none when the lua module is compiled in
-- (OpenResty), else the NDK and lua dynamic modules.
local function find_modules(nginx_bin, opts)
  local _, version = run(shell_quote(nginx_bin) .. " -V")
  local dirs = {}
  if opts.modules_dir then
    dirs[1] = opts.modules_dir
  end
  dirs[#dirs + 1] = version:match("%-%-modules%-path=(%S+)")
  for _, dir in ipairs(MODULE_DIRS) do
    dirs[#dirs + 1] = dir
  end
  for _, dir in ipairs(dirs) do
    local lua_module = dir .. "/ngx_http_lua_module.so"
    if file_exists(lua_module) then
      local modules = {}
      if file_exists(dir .. "/ndk_http_module.so") then
        modules[1] = dir .. "/ndk_http_module.so"
      end
      modules[#modules + 1] = lua_module
      return modules
    end
  end
  if version:find("openresty", 1, true) or version:find("lua-nginx-module", 1, true) then
    return {}
  end
  return nil, "the nginx lua module (ngx_http_lua_module.so) was not found (install "
    .. "libnginx-mod-http-lua or OpenResty, or set opts.modules_dir)"
end

--- locate_nginx([opts]) -> nginx binary, { load_module paths (ndk first) } | nil, err.
-- For tests that start an nginx of their own beside the mock.
function mock.locate_nginx(opts)
  opts = opts or {}
  local nginx_bin, err = find_nginx(opts)
  if not nginx_bin then return nil, err end
  local modules
  modules, err = find_modules(nginx_bin, opts)
  if not modules then return nil, err end
  return nginx_bin, modules
end

-- The directory holding wechatpay/mock/*.lua, so the worker loads this very copy.
-- This file is wechatpay/mock/init.lua in the checkout, and wechatpay/mock.lua
-- once the rock installs it (rockspec/wechatpay-mock-scm-1.rockspec).
local function lua_root()
  local source = debug.getinfo(1, "S").source
  local path = source:sub(1, 1) == "@" and source:sub(2) or nil
  if not path then
    return nil
  end
  local root
  for _, tail in ipairs{ "wechatpay/mock/init.lua", "wechatpay/mock.lua" } do
    if path == tail then
      root = "."
    elseif path:sub(-#tail - 1) == "/" .. tail then
      root = path:sub(1, -#tail - 2)
      if root == "" then root = "/" end
    end
    if root then break end
  end
  if root and root:sub(1, 1) ~= "/" then
    local pwd = os.getenv("PWD")
    if not pwd then
      local _, out = run("pwd")
      pwd = out:gsub("%s+$", "")
    end
    root = pwd .. "/" .. root
  end
  return root
end

local function make_temp_dir()
  local name = os.tmpname()
  os.remove(name)
  local ok, out = run("mkdir -m 700 " .. shell_quote(name))
  if not ok then
    return nil, "cannot create a temp dir: " .. out
  end
  -- Marker: the worker's orphan watchdog only removes a dir that carries it.
  write_file(name .. "/.wechatpay-mock", "")
  return name
end

local function remove_dir(dir)
  if dir and file_exists(dir .. "/.wechatpay-mock") then
    run("rm -rf " .. shell_quote(dir))
  end
end

local function is_root()
  local ok, out = run("id -u")
  return ok and out:match("^%s*0%s*$") ~= nil
end

---------------------------------------------------------------------------
-- talking to the admin server block

local function admin_call(server, method, path, body)
  local chunks = {}
  local source = body and ltn12.source.string(body) or nil
  local headers = { ["X-Mock-Token"] = server._admin_token }
  if body then
    headers["Content-Type"] = "application/json"
    headers["Content-Length"] = tostring(#body)
  end
  local ok, status = http.request({
    url = server._admin_url .. path,
    method = method,
    headers = headers,
    source = source,
    sink = ltn12.sink.table(chunks),
    create = function()
      local sock = socket.tcp()
      sock:settimeout(5)
      return sock
    end,
  })
  if not ok then
    return nil, "admin request " .. method .. " " .. path .. " failed: " .. tostring(status)
  end
  local text = table.concat(chunks)
  local decoded = (text ~= "" and cjson.decode(text)) or {}
  return decoded, status
end

-- For the server methods: a failing admin call means the mock died, which a
-- test should see loudly.
local function admin_or_raise(server, method, path, body)
  if server._stopped then
    error("wechatpay.mock: server already stopped", 3)
  end
  local decoded, status = admin_call(server, method, path, body)
  if not decoded then
    error("wechatpay.mock: " .. status .. "\n" .. tail(server.error_log), 3)
  end
  return decoded, status
end

---------------------------------------------------------------------------
-- the server object

local Server = {}
Server.__index = Server

function Server:__tostring()
  return "wechatpay.mock server " .. (self.base_url or "?")
    .. (self._stopped and " (stopped)" or "")
end

--- Arms a fault for the next opts.count (default 1) API requests, after the
-- faults armed before it. opts.path: a Lua pattern on the request URI (path +
-- query) restricting which requests it hits.
function Server:fault(name, opts)
  local checked, err = faults.check(name, opts)
  if not checked then
    error("wechatpay.mock: " .. err, 2)
  end
  local result, status = admin_or_raise(self, "POST", "/faults",
    cjson.encode({ name = name, opts = checked }))
  if status ~= 200 then
    error("wechatpay.mock: fault refused: " .. tostring(result.error), 2)
  end
  return self
end

--- Makes the next certificate the one that signs (with sign_with =
-- "certificate"); the download then delivers it and the one before.
function Server:rotate_certificates()
  local result, status = admin_or_raise(self, "POST", "/rotate", "{}")
  if status ~= 200 then
    error("wechatpay.mock: " .. tostring(result.error), 2)
  end
  return result.serial
end

--- Delivers a notification to url (see the header); returns its number and event id.
function Server:notify(url, spec)
  spec = spec or {}
  if type(url) ~= "string" then error("wechatpay.mock: notify(url, spec): url must be a string", 2) end
  local body = { url = url }
  for k, v in pairs(spec) do body[k] = v end
  local result, status = admin_or_raise(self, "POST", "/notify", cjson.encode(body))
  if status ~= 200 then
    error("wechatpay.mock: notify refused: " .. tostring(result.error), 2)
  end
  return math.floor(result.n), result.id
end

--- The record of notification n: deliveries, attempts, done.
function Server:notification(n)
  local record, status = admin_or_raise(self, "GET", ("/notify/%d"):format(n))
  if status ~= 200 then return nil end
  return record
end

--- Makes the bill `name` on disk (see the header), served from its first call on.
function Server:bill(name, opts)
  if not bills.valid_name(name) then error("wechatpay.mock: bill name must be letters, digits, - and _", 2) end
  opts = opts or {}
  if opts.hash_type ~= nil and opts.hash_type ~= "SHA1" and opts.hash_type ~= "SHA256" then
    error("wechatpay.mock: bill hash_type must be \"SHA1\" or \"SHA256\"", 2)
  end
  return bills.generate(self.dir, name, { rows = opts.rows, hash_type = opts.hash_type, mchid = self.mchid })
end

function Server:clear_faults()
  admin_or_raise(self, "DELETE", "/faults")
  return self
end

function Server:stats()
  return (admin_or_raise(self, "GET", "/stats"))
end

function Server:reset()
  admin_or_raise(self, "POST", "/reset", "{}")
  return self
end

-- The admin record at prefix .. id (the id percent-encoded), or nil when there is none.
local function admin_record(server, prefix, id)
  local record, status = admin_or_raise(server, "GET", prefix .. tostring(id):gsub(
    "[^%w_%-]", function(c) return string.format("%%%02X", c:byte()) end))
  if status ~= 200 then
    return nil
  end
  return record
end

function Server:coupon(coupon_id)
  return admin_record(self, "/coupons/", coupon_id)
end

--- The media upload requests the server saw (accepted or refused), oldest first.
function Server:uploads()
  return admin_or_raise(self, "GET", "/uploads").uploads
end

--- The record of an uploaded file by its media_id, or nil.
function Server:media(media_id)
  return admin_record(self, "/media/", media_id)
end

--- Changes latency and/or rate_limit (false = off) of a running server.
function Server:configure(settings)
  local body = {}
  if settings.latency ~= nil then
    assert(type(settings.latency) == "number", "latency must be a number")
    body.latency = settings.latency
  end
  if settings.rate_limit ~= nil then
    assert(settings.rate_limit == false or type(settings.rate_limit) == "number",
      "rate_limit must be a number or false")
    body.rate_limit = settings.rate_limit or 0
  end
  admin_or_raise(self, "POST", "/configure", cjson.encode(body))
  return self
end

--- The last lines of nginx's error log (for debugging a failing test).
--- server:client([options]) -> a wechatpay client configured for this mock.
-- Options override the defaults (e.g. timeout, retry, max_concurrency).
-- Only configuration crosses over: the client's crypto stays its own.
function Server:client(options)
  local opts = {
    mchid = self.mchid,
    serial = self.merchant_serial,
    private_key = "file://" .. self.merchant_key_file,
    certs = { [self.platform_key_id] = "file://" .. self.platform_public_key_file },
    base_url = self.base_url,
    cafile = self.cafile,
    apiv3_key = self.apiv3_key,
    apiv2_key = self.apiv2_key,
    merchant_cert = "file://" .. self.merchant_cert_file,
  }
  for k, v in pairs(options or {}) do opts[k] = v end
  if opts.apiv3_key == false then opts.apiv3_key = nil end   -- a client that cannot download
  if opts.apiv2_key == false then opts.apiv2_key = nil end
  if opts.merchant_cert == false then opts.merchant_cert = nil end
  return require("wechatpay").new(opts)
end

--- What an APIv2 call stored: kind "order" (by out_trade_no), "redpack"
-- (by mch_billno) or "refund" (by out_refund_no); nil when none.
function Server:v2_record(kind, id)
  return admin_record(self, "/v2/" .. kind .. "/", id)
end

function Server:v2_stats()
  return (admin_or_raise(self, "GET", "/v2/stats"))
end

function Server:error_log_tail(lines)
  return tail(self.error_log, lines)
end

local function stop_nginx(pid)
  if not pid then
    return
  end
  run("kill -TERM " .. pid)
  for _ = 1, 250 do
    if not process_alive(pid) then
      return
    end
    socket.sleep(0.02)
  end
  -- Did not exit within 5 s: kill it, it is ours.
  run("kill -KILL " .. pid)
  for _ = 1, 50 do
    if not process_alive(pid) then
      return
    end
    socket.sleep(0.02)
  end
end

--- Stops nginx (waits until its master is gone) and removes the temp dir.
-- Idempotent.
function Server:stop()
  if self._stopped then
    return true
  end
  self._stopped = true
  stop_nginx(self._pid)
  remove_dir(self.dir)
  return true
end

Server.__close = Server.stop
-- Lua 5.4 collects tables with __gc; LuaJIT needs a userdata proxy (below).
Server.__gc = Server.stop

local function attach_gc(server)
  if newproxy then
    local proxy = newproxy(true)
    getmetatable(proxy).__gc = function()
      server:stop()
    end
    server._gc_proxy = proxy
  end
end

---------------------------------------------------------------------------
-- start

local function check_options(opts)
  if opts == nil then
    return {}
  end
  if type(opts) ~= "table" then
    error("wechatpay.mock.start: options must be a table", 3)
  end
  for key, value in pairs(opts) do
    local want = OPTION_TYPES[key]
    if not want then
      error("wechatpay.mock.start: unknown option " .. tostring(key), 3)
    end
    local ok = type(value) == want
      or (want == "number|false" and (type(value) == "number" or value == false))
    if not ok then
      error("wechatpay.mock.start: option " .. key .. " must be " .. want
        .. ", got " .. type(value), 3)
    end
  end
  if opts.sign_with and opts.sign_with ~= "public_key" and opts.sign_with ~= "certificate" then
    error("wechatpay.mock.start: sign_with must be \"public_key\" or \"certificate\"", 3)
  end
  if opts.apiv3_key and #opts.apiv3_key ~= 32 then
    error("wechatpay.mock.start: apiv3_key must be 32 characters", 3)
  end
  if opts.apiv2_key and not opts.apiv2_key:match("^" .. ("%w"):rep(32) .. "$") then
    error("wechatpay.mock.start: apiv2_key must be 32 letters and digits", 3)
  end
  if opts.mchid and not opts.mchid:match("^%d+$") then
    error("wechatpay.mock.start: mchid must be digits", 3)
  end
  return opts
end

local function wait_ready(server, timeout)
  local deadline = socket.gettime() + timeout
  local last_err
  repeat
    if not server._pid or not process_alive(server._pid) then
      return nil, "nginx exited right after starting"
    end
    local decoded, status = admin_call(server, "GET", "/ping")
    if decoded and status == 200 and decoded.ready then
      return true
    end
    last_err = decoded and (decoded.error or ("status " .. tostring(status))) or status
    socket.sleep(0.02)
  until socket.gettime() > deadline
  return nil, "nginx did not become ready: " .. tostring(last_err)
end

local function read_pid(dir)
  for _ = 1, 100 do
    local text = read_file(dir .. "/nginx.pid")
    local pid = text and text:match("(%d+)")
    if pid then
      return pid
    end
    socket.sleep(0.01)
  end
  return nil
end

--- Starts a mock server. Returns the server object, or nil, err.
function mock.start(opts)
  opts = check_options(opts)
  local mchid = opts.mchid or "1900000001"
  local users = users_module.merge(opts.users)
  local stocks = users_module.stocks(opts.stocks)
  local rate_limit = opts.rate_limit
  if rate_limit == nil then
    rate_limit = 1000
  end

  local nginx_bin, err = find_nginx(opts)
  if not nginx_bin then
    return nil, "wechatpay.mock: " .. err
  end
  local modules
  modules, err = find_modules(nginx_bin, opts)
  if not modules then
    return nil, "wechatpay.mock: " .. err
  end
  local root = lua_root()
  if not root then
    return nil, "wechatpay.mock: cannot locate the wechatpay.mock Lua sources"
  end

  local dir
  dir, err = make_temp_dir()
  if not dir then
    return nil, "wechatpay.mock: " .. err
  end
  local keys
  keys, err = pki.generate(dir, mchid)
  if not keys then
    remove_dir(dir)
    return nil, "wechatpay.mock: " .. err
  end

  local apiv3_key = opts.apiv3_key or hex(rand.bytes(16))
  local apiv2_key = opts.apiv2_key or hex(rand.bytes(16)):upper()
  local launcher_pid, launcher_start = self_identity()
  local admin_token = hex(rand.bytes(16))
  root = root:gsub("/%./", "/")
  local lua_path = table.concat({ root .. "/?.lua", root .. "/?/init.lua",
    opts.worker_lua_path or table.concat(WORKER_LUA_PATH, ";"), ";" }, ";")
  local lua_cpath = table.concat({
    opts.worker_lua_cpath or table.concat(WORKER_LUA_CPATH, ";"), ";" }, ";")
  local run_as_root = is_root()

  local last_err
  for _ = 1, 5 do
    local port, admin_port = free_port(), free_port()
    if port ~= admin_port then
      local config = {
        dir = dir,
        mchid = mchid,
        merchant_serial = keys.merchant_serial,
        platform_key_id = keys.platform_key_id,
        platform_cert_serial = keys.platform_cert_serial,
        platform_cert_old_serial = keys.platform_cert_old_serial,
        platform_cert_next_serial = keys.platform_cert_next_serial,
        apiv3_key = apiv3_key,
        apiv2_key = apiv2_key,
        public_key_only = opts.public_key_only or false,
        files = keys.files,
        users = users,
        stocks = stocks,
        latency = opts.latency or 0,
        rate_limit = rate_limit or 0,
        sign_with = opts.sign_with or "public_key",
        admin_token = admin_token,
        launcher_pid = launcher_pid,
        launcher_start_time = launcher_start,
        watch_launcher = opts.watch_launcher ~= false,
      }
      local config_file = dir .. "/config.json"
      write_file(config_file, cjson.encode(config))
      local conf_file = dir .. "/nginx.conf"
      write_file(conf_file, nginx_conf.render({
        dir = dir, port = port, admin_port = admin_port, modules = modules,
        run_as_root = run_as_root, lua_path = lua_path, lua_cpath = lua_cpath,
        config_file = config_file,
      }))
      os.remove(dir .. "/error.log")
      local ok, out, rc = run(shell_quote(nginx_bin) .. " -p " .. shell_quote(dir .. "/")
        .. " -c " .. shell_quote(conf_file) .. " -e " .. shell_quote(dir .. "/error.log"))
      if ok then
        local server = setmetatable({
          base_url = "https://127.0.0.1:" .. port .. "/",
          port = port,
          admin_port = admin_port,
          dir = dir,
          error_log = dir .. "/error.log",
          cafile = keys.files.ca,
          mchid = mchid,
          merchant_serial = keys.merchant_serial,
          merchant_key_file = keys.files.merchant_key,
          merchant_cert_file = keys.files.merchant_cert,
          platform_key_id = keys.platform_key_id,
          platform_public_key_file = keys.files.platform_public_key,
          platform_cert_serial = keys.platform_cert_serial,
          platform_cert_file = keys.files.platform_cert,
          platform_cert_old_serial = keys.platform_cert_old_serial,
          platform_cert_next_serial = keys.platform_cert_next_serial,
          apiv3_key = apiv3_key,
          apiv2_key = apiv2_key,
          users = users,
          stocks = stocks,
          _admin_url = "http://127.0.0.1:" .. admin_port,
          _admin_token = admin_token,
        }, Server)
        server._pid = read_pid(dir)
        attach_gc(server)
        local ready, ready_err = wait_ready(server, opts.start_timeout or 10)
        if ready then
          return server
        end
        local log = tail(server.error_log)
        stop_nginx(server._pid)
        server._stopped = true
        remove_dir(dir)
        return nil, "wechatpay.mock: " .. ready_err .. (log ~= "" and ("\n" .. log) or "")
      end
      last_err = "exit status " .. tostring(rc) .. "\n" .. out .. tail(dir .. "/error.log")
      if not last_err:find("Address already in use", 1, true) then
        remove_dir(dir)
        return nil, "wechatpay.mock: nginx failed to start: " .. last_err
      end
    end
  end
  remove_dir(dir)
  return nil, "wechatpay.mock: no free port after 5 attempts: " .. tostring(last_err)
end

return mock
