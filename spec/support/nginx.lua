--- Test support: an application nginx (Debian's nginx + libnginx-mod-http-lua)
-- under a private prefix, running spec/support/nginx_app.lua with the
-- LuaJIT build of wechatpay.core, configured against a running mock.
--
--   local app = nginx.start(server, { workers = 1, init_call = "NO-1", rate_limit = {...} })
--   app:get("/grant?no=X")  --> status, decoded JSON (or body)
--   app:session()           --> a core.http_session to drive many requests at once
--   app:reload()            -- HUP, waits for the new workers
--   app:error_log()         app:stop()
local cjson = require("cjson")
local socket = require("socket")
local http = require("socket.http")
local ltn12 = require("ltn12")
local core = require("wechatpay.core")
local mock = require("wechatpay.mock")
local ossl = require("support.openssl")

local M = {}

local function write(path, data, mode)
  ossl.write(path, data)
  if mode then ossl.run("chmod " .. mode .. " " .. ossl.quote(path)) end
end

local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat", "r")
  if not f then return false end
  local stat = f:read("*a")
  f:close()
  local st = stat:match("%)%s+(%S)")
  return st ~= "Z" and st ~= "X"
end

local function quote(s) return '"' .. s:gsub("\\", "\\\\"):gsub('"', '\\"') .. '"' end

--- build_dir() -> the absolute folder of the core.so builds under test (WECHATPAY_BUILD).
local function build_dir()
  local build = os.getenv("WECHATPAY_BUILD") or "./build"
  if build:sub(1, 1) ~= "/" then build = ossl.repo_root() .. "/" .. build:gsub("^%./", "") end
  return build
end
M.build_dir = build_dir

local function render(p)
  local l = {}
  local function line(s) l[#l + 1] = s end
  for _, m in ipairs(p.modules) do line("load_module " .. quote(m) .. ";") end
  line("worker_processes " .. p.workers .. ";")
  line("daemon on; master_process on;")
  line("pid " .. quote(p.dir .. "/nginx.pid") .. ";")
  line("error_log " .. quote(p.dir .. "/error.log") .. " warn;")
  line("events { worker_connections 4096; }")
  line("http {")
  line("  access_log off;")
  for _, kind in ipairs{ "client_body", "proxy", "fastcgi", "uwsgi", "scgi" } do
    line("  " .. kind .. "_temp_path " .. quote(p.dir .. "/tmp_" .. kind) .. ";")
  end
  line("  lua_package_path " .. quote(p.lua_path) .. ";")
  line("  lua_package_cpath " .. quote(p.lua_cpath) .. ";")
  line("  lua_ssl_trusted_certificate " .. quote(p.dir .. "/ca.pem") .. ";")
  line("  lua_ssl_verify_depth 3;")
  line("  lua_socket_log_errors off;")
  line("  lua_shared_dict app_results 1m;")
  line("  lua_shared_dict wechatpay 1m;")
  if p.callbacks then
    line("  lua_shared_dict wechatpay_certs 1m;")
    line("  lua_shared_dict wechatpay_events 1m;")
  end
  line("  init_by_lua_block { require('support.nginx_app').init(" .. ("%q"):format(p.config_file) .. ") }")
  line("  init_worker_by_lua_block { require('support.nginx_app').init_worker() }")
  line("  server {")
  line("    listen 127.0.0.1:" .. p.port .. " reuseport backlog=4096;")
  line("    location / { content_by_lua_block { require('support.nginx_app').handle() } }")
  if p.callbacks then
    -- a small buffer: a callback over 1 KiB is spooled to a temp file
    line("    location = /notify {")
    line("      client_body_buffer_size 1k;")
    line("      client_max_body_size 8m;")
    line("      content_by_lua_block { require('support.nginx_app').notify() }")
    line("    }")
  end
  if p.dns_port then
    -- /raw through nginx's resolver (support.dns), for names not pinned by `resolve`
    line("    location = /raw_resolved {")
    line("      resolver 127.0.0.1:" .. p.dns_port .. " ipv6=off;")
    line("      resolver_timeout 5s;")
    line("      content_by_lua_block { require('support.nginx_app').handle() }")
    line("    }")
  end
  line("    location = /phase/set {")
  line("      set_by_lua_block $wechatpay_result { return require('support.nginx_app').forbidden_call('set') }")
  line("      content_by_lua_block { ngx.say(ngx.var.wechatpay_result) }")
  line("    }")
  line("    location = /phase/filters {")
  line("      content_by_lua_block { ngx.say('body') }")
  line("      header_filter_by_lua_block { require('support.nginx_app').forbidden_call('header_filter') }")
  line("      body_filter_by_lua_block { if ngx.arg[2] then require('support.nginx_app').forbidden_call('body_filter') end }")
  line("      log_by_lua_block { require('support.nginx_app').forbidden_call('log') }")
  line("    }")
  line("  }")
  -- An HTTPS origin with the mock's `localhost` certificate, for the
  -- transport's own edge cases (chunked bodies, size cap, timeouts, names).
  line("  server {")
  line("    listen 127.0.0.1:" .. p.origin_port .. " ssl;")
  line("    ssl_certificate " .. quote(p.origin_cert) .. ";")
  line("    ssl_certificate_key " .. quote(p.origin_key) .. ";")
  line("    location = /chunked { content_by_lua_block { ngx.print('ab'); ngx.flush(true); ngx.print('cd') } }")
  line("    location = /length { content_by_lua_block { ngx.header['Content-Length'] = 5; ngx.print('hello') } }")
  line("    location = /big { content_by_lua_block { ngx.print(string.rep('x', 100000)) } }")
  line("    location = /slow { content_by_lua_block { ngx.sleep(2); ngx.say('late') } }")
  -- a byte every 0.2 s: each read sees progress, the whole answer takes 4 s
  line("    location = /drip { content_by_lua_block { ngx.header['Content-Length'] = 20; ngx.send_headers(); "
    .. "for _ = 1, 20 do ngx.print('x'); ngx.flush(true); ngx.sleep(0.2) end } }")
  -- takes a request body 64 KiB every 0.05 s for 10 s: each piece read lets the sender progress
  line("    location = /slowread { client_max_body_size 0; content_by_lua_block { local sock = ngx.req.socket(); "
    .. "for _ = 1, 200 do if not sock:receive(65536) then break end ngx.sleep(0.05) end ngx.say('read') } }")
  line("    location = /close { keepalive_timeout 0; content_by_lua_block { ngx.say('bye') } }")
  line("    location = /empty { return 204; }")
  line("  }")
  line("}")
  return table.concat(l, "\n") .. "\n"
end

--- sanitizer_preload() -> the environment assignments (shell words) an nginx
-- needs before its command when core.so is the sanitizer build (make DEV=1):
-- the runtime must be loaded first; "" otherwise.
function M.sanitizer_preload()
  if not build_dir():find("/dev", 1, true) then return "" end
  return "ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD=\"$(cc -print-file-name=libasan.so) "
    .. "$(cc -print-file-name=libubsan.so)\" "
end

local App = {}
App.__index = App

--- get(path) -> status, decoded JSON body (or the raw body), over plain HTTP.
function App:get(path, timeout)
  local chunks = {}
  local ok, status = http.request{
    url = "http://127.0.0.1:" .. self.port .. path,
    sink = ltn12.sink.table(chunks),
    create = function() local s = socket.tcp(); s:settimeout(timeout or 15); return s end,
  }
  if not ok then return nil, status end
  local body = table.concat(chunks)
  local decoded = body:sub(1, 1) == "{" and cjson.decode(body) or body
  return status, decoded
end

--- A curl multi session to this app (many requests at once).
function App:session()
  return core.http_session{ max_connections = 1000 }
end

function App:url(path) return "http://127.0.0.1:" .. self.port .. path end

function App:error_log()
  local f = io.open(self.dir .. "/error.log", "rb")
  if not f then return "" end
  local text = f:read("*a")
  f:close()
  return text
end

local function worker_pids(master)
  local out = ossl.run("ps -o pid= --ppid " .. master .. " || true")
  local pids = {}
  for pid in out:gmatch("%d+") do pids[#pids + 1] = pid end
  table.sort(pids)
  return pids
end

--- reload(): HUP; returns once the old workers are gone and the new answer.
function App:reload()
  local old = worker_pids(self.pid)
  ossl.run("kill -HUP " .. self.pid)
  local deadline = socket.gettime() + 10
  repeat
    socket.sleep(0.05)
    local now = worker_pids(self.pid)
    local fresh = true
    for _, p in ipairs(now) do
      for _, o in ipairs(old) do if p == o then fresh = false end end
    end
    if fresh and #now > 0 and self:get("/ping") == 200 then return true end
  until socket.gettime() > deadline
  error("nginx did not reload:\n" .. self:error_log())
end

function App:stop()
  if self.stopped then return end
  self.stopped = true
  if self.pid then
    os.execute("kill -TERM " .. self.pid .. " 2>/dev/null")
    for _ = 1, 250 do
      if not alive(self.pid) then break end
      socket.sleep(0.02)
    end
    if alive(self.pid) then os.execute("kill -KILL " .. self.pid .. " 2>/dev/null") end
  end
  os.execute("rm -rf " .. ossl.quote(self.dir))
end

--- start(server, opts) -> app.  opts: workers (1), init_call (an
-- out_request_no granted in init_by_lua), init_worker_call (one granted by each
-- worker in init_worker_by_lua), rate_limit, max_concurrency, timeout,
-- callbacks (a /notify location served by wechatpay.ngx.notification with a
-- certificate client whose store is a shared dict, refreshed from init_worker),
-- v2 (an APIv2 client with apiv2_key and merchant_cert, served at /v2),
-- background_refresh (the APIv3 key for /bg's certificate client).
function M.start(server, opts)
  opts = opts or {}
  local nginx_bin, modules = assert(mock.locate_nginx())
  local dir = os.tmpname()
  os.remove(dir)
  ossl.run("mkdir -m 755 " .. ossl.quote(dir))
  -- nginx's workers (nobody) read lua_ssl_trusted_certificate themselves
  write(dir .. "/ca.pem", ossl.read(server.cafile), "644")
  local users = {}
  for openid, u in pairs(server.users) do users[#users + 1] = { openid = openid, name = u.name, id_card = u.id_card } end
  table.sort(users, function(a, b) return a.openid < b.openid end)
  local config = {
    mchid = server.mchid,
    merchant_serial = server.merchant_serial,
    merchant_key_file = server.merchant_key_file,
    platform_key_id = server.platform_key_id,
    platform_public_key_file = server.platform_public_key_file,
    cafile = server.cafile,
    base_url = "https://localhost:" .. server.port .. "/",
    ip_base_url = server.base_url,
    resolve = { ["localhost:" .. server.port] = "127.0.0.1" },
    users = users,
    init_call = opts.init_call,
    init_worker_call = opts.init_worker_call,
    rate_limit = opts.rate_limit,
    max_concurrency = opts.max_concurrency,
    timeout = opts.timeout,
    callbacks = opts.callbacks,
    apiv3_key = (opts.callbacks or opts.background_refresh) and server.apiv3_key or nil,
    -- opts.v2: an APIv2 client with mutual TLS (app.v2_client, /v2 handler)
    apiv2_key = opts.v2 and server.apiv2_key or nil,
    merchant_cert_file = server.merchant_cert_file,
    -- the merchant key as wechatpay-php's DER form: a client that cosockets cannot present
    merchant_key_pkcs8 = opts.v2 and ossl.run("openssl pkcs8 -topk8 -nocrypt -outform DER -in "
      .. ossl.quote(server.merchant_key_file) .. " | openssl base64 -A") or nil,
  }
  local config_file = dir .. "/config.json"
  write(config_file, cjson.encode(config), "644")
  local root = ossl.repo_root()
  local build = build_dir()
  local app = setmetatable({ dir = dir }, App)
  for _ = 1, 5 do
    app.port, app.origin_port = free_port(), free_port()
    local mock_dir = server.cafile:match("^(.*)/[^/]+$")
    write(dir .. "/nginx.conf", render{
      origin_port = app.origin_port, origin_cert = mock_dir .. "/server.pem", origin_key = mock_dir .. "/server.key",
      dir = dir, port = app.port, modules = modules, workers = opts.workers or 1, config_file = config_file,
      callbacks = opts.callbacks, dns_port = opts.dns_port,
      lua_path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. root .. "/spec/?.lua;;",
      lua_cpath = build .. "/luajit/?.so;;",
    })
    local preload = M.sanitizer_preload()
    local ok, err = pcall(ossl.run, "env -u LUA_PATH -u LUA_CPATH " .. preload .. ossl.quote(nginx_bin)
      .. " -p " .. ossl.quote(dir .. "/") .. " -c " .. ossl.quote(dir .. "/nginx.conf")
      .. " -e " .. ossl.quote(dir .. "/error.log"))
    if ok then
      for _ = 1, 100 do
        local f = io.open(dir .. "/nginx.pid")
        if f then app.pid = f:read("*a"):match("%d+"); f:close() end
        if app.pid then break end
        socket.sleep(0.02)
      end
      for _ = 1, 250 do
        if app:get("/ping", 1) == 200 then return app end
        socket.sleep(0.02)
      end
      local log = app:error_log()
      app:stop()
      error("the app nginx did not answer /ping:\n" .. log)
    elseif not tostring(err):find("in use", 1, true) then
      local log = app:error_log()
      app:stop()
      error(tostring(err) .. "\n" .. log)
    end
  end
  app:stop()
  error("no free port for the app nginx")
end

return M
