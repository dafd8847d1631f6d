--- Client benchmarks against the loopback mock WeChat Pay (real HTTPS).
--
--   LUA_PATH='./lua/?.lua;./lua/?/init.lua;./mock/?.lua;./mock/?/init.lua;;' LUA_CPATH='./build/lua5.4/?.so;;' lua5.4 bench/client/grants.lua [part...]
--
-- Parts (all by default):
--   sequential   BENCH_GRANTS (2,000) grants one after another over one keep-alive
--                connection: calls/s and the client's CPU per call, next to the crypto
--                a grant needs (one sign, one verify, two OAEP encryptions)
--   concurrent   BENCH_ASYNC_GRANTS (5,000) grants at concurrency 1, 8 and 64 with
--                BENCH_LATENCY (0.05) s added by the mock to every call
--   memory       BENCH_MEMORY_CALLS (10,000) async calls; Lua heap and RSS stay flat
--   nginx        BENCH_NGINX_GRANTS (3,000) grants through handlers of an nginx with 1 and
--                2 workers (cosocket transport, LuaJIT), 64 requests at once, BENCH_LATENCY
--                added by the mock: calls/s, and the workers' CPU per grant next to the crypto
-- CPU time is this process's (os.clock): the mock's nginx runs in its own.
local core = require("wechatpay.core")
local wechatpay = require("wechatpay")
local mock = require("wechatpay.mock")

local monotonic = core.monotonic

local function env_number(name, default)
  return tonumber(os.getenv(name) or "") or default
end

local function median(list)
  table.sort(list)
  return list[math.floor((#list + 1) / 2)]
end

local function seeded_users(server)
  local list = {}
  for openid, user in pairs(server.users) do
    list[#list + 1] = { openid = openid, name = user.name, id_card = user.id_card }
  end
  table.sort(list, function(a, b) return a.openid < b.openid end)
  return list
end

local run_id = tostring(os.time()) .. core.nonce(6)

-- One grant's request; the encryption is part of what a merchant's call costs.
local function grant_json(client, user, n)
  return {
    stock_id = "9856000",
    out_request_no = ("bench%s%d"):format(run_id, n),
    user_name = assert(client:encrypt(user.name)),
    id_card_number = assert(client:encrypt(user.id_card)),
    appid = "wx233544546545989",
    card_type = "ID_CARD",
  }
end

local counter = 0
local function next_n()
  counter = counter + 1
  return counter
end

-- The crypto a grant needs, called on the core directly: ms per grant.
local function crypto_cost_ms(server)
  local key = require("wechatpay.key")
  local private = assert(key.private("file://" .. server.merchant_key_file))
  local public = assert(key.public("file://" .. server.platform_public_key_file))
  local message = ("POST\n/v3/multiuse/users/oUpF8uMuAJO_M2pxb1Q9zNjWeS6o/coupons\n1700000000\n"
    .. ("N"):rep(32) .. "\n" .. ("x"):rep(800) .. "\n")
  local signature = core.rsa_sign(private, message)
  local runs = {}
  for _ = 1, 5 do
    local n, started = 200, os.clock()
    for _ = 1, n do
      core.rsa_sign(private, message)
      core.rsa_verify(public, "1700000000\nNONCE\n{\"coupon_id\":\"1\"}\n", signature)
      core.rsa_encrypt(public, "张三")
      core.rsa_encrypt(public, "110101199003071234")
    end
    runs[#runs + 1] = (os.clock() - started) * 1000 / n
  end
  return median(runs)
end

local function start_mock(opts)
  local server, err = mock.start(opts)
  if not server then error("cannot start the mock: " .. tostring(err)) end
  return server
end

local function sequential()
  local n = env_number("BENCH_GRANTS", 2000)
  local server = start_mock{ rate_limit = false }
  local client = server:client{ retry = false }
  local users = seeded_users(server)
  for _ = 1, 20 do   -- warm up: the connection (counted), caches
    assert(client.v3.multiuse.users[users[1].openid].coupons:post{ json = grant_json(client, users[1], next_n()) })
  end
  local wall, cpu = monotonic(), os.clock()
  for i = 1, n do
    local user = users[i % #users + 1]
    local res, err = client.v3.multiuse.users._openid_.coupons:post{
      openid = user.openid, json = grant_json(client, user, next_n()) }
    if not res then error("grant " .. i .. " failed: " .. tostring(err)) end
  end
  wall, cpu = monotonic() - wall, os.clock() - cpu
  local stats = server:stats()
  local crypto = crypto_cost_ms(server)
  local per_call = cpu * 1000 / n
  print(("sequential  %d grants over %d connection(s): %.0f calls/s, client CPU %.3f ms/call;"
    .. " crypto (sign + verify + 2 OAEP) %.3f ms: %.2fx"):format(
    n, stats.connections, n / wall, per_call, crypto, per_call / crypto))
  client:close()
  server:stop()
  return crypto
end

local function concurrent(crypto)
  local n = env_number("BENCH_ASYNC_GRANTS", 5000)
  local latency = env_number("BENCH_LATENCY", 0.05)
  local server = start_mock{ rate_limit = false, latency = latency }
  local users = seeded_users(server)
  crypto = crypto or crypto_cost_ms(server)
  local rates = {}
  for _, concurrency in ipairs{ 1, 8, 64 } do
    local client = server:client{ max_concurrency = concurrency, retry = false }
    server:reset()
    local wall, cpu = monotonic(), os.clock()
    -- head..tail: the promises not yet waited for (never `#window`: its
    -- settled front is nil, and on Lua 5.4 the length may then be any border)
    local window, head, tail, failed = {}, 1, 0, 0
    for i = 1, n do
      local user = users[i % #users + 1]
      tail = tail + 1
      window[tail] = client.v3.multiuse.users._openid_.coupons:postAsync{
        openid = user.openid, json = grant_json(client, user, next_n()) }
      -- keep a bounded window of promises, as a batch job would
      if tail - head + 1 >= concurrency * 4 then
        local _, err = window[head]:wait()
        if err then failed = failed + 1 end
        window[head] = nil
        head = head + 1
      end
    end
    for i = head, tail do
      local _, err = window[i]:wait()
      if err then failed = failed + 1 end
    end
    wall, cpu = monotonic() - wall, os.clock() - cpu
    local stats = server:stats()
    -- every call counted must have reached the mock (server:reset() above)
    assert(stats.grants + failed == n, ("the mock saw %d grants of %d"):format(stats.grants, n))
    rates[concurrency] = n / wall
    print(("concurrency %-3d %d grants, %.0f ms latency: %.1f calls/s, client CPU %.3f ms/call (%.2fx crypto),"
      .. " in flight at the mock: %d, connections: %d, failed: %d"):format(
      concurrency, n, latency * 1000, n / wall, cpu * 1000 / n, cpu * 1000 / n / crypto,
      stats.in_flight_max, stats.connections, failed))
    client:close()
  end
  print(("concurrency 64 vs 1: %.1fx the calls/s"):format(rates[64] / rates[1]))
  server:stop()
end

local function rss_kib()
  local f = io.open("/proc/self/statm", "r")
  if not f then return 0 end
  local pages = f:read("*n") and f:read("*n")
  f:close()
  return (pages or 0) * 4
end

local function memory()
  local total = env_number("BENCH_MEMORY_CALLS", 10000)
  local server = start_mock{ rate_limit = false }
  local client = server:client{ max_concurrency = 16, retry = false }
  local function batch(count)
    local list = {}
    for i = 1, count do list[i] = client.v3.mock.echo.memory:getAsync{ query = { i = i } } end
    assert(wechatpay.all(list):wait())
  end
  batch(1000)
  collectgarbage("collect")
  local heap1, rss1 = collectgarbage("count"), rss_kib()
  for _ = 2, total / 1000 do batch(1000) end
  collectgarbage("collect")
  local heap2, rss2 = collectgarbage("count"), rss_kib()
  print(("memory      %d async calls: Lua heap %.0f KiB after 1,000 -> %.0f KiB after %d; RSS %d -> %d KiB"):format(
    total, heap1, heap2, total, rss1, rss2))
  client:close()
  server:stop()
end

-- CPU seconds (user + system) a process has used, from /proc.
local function process_cpu(pid)
  local f = io.open("/proc/" .. pid .. "/stat", "r")
  if not f then return 0 end
  local stat = f:read("*a")
  f:close()
  local fields = {}
  for field in stat:match("%)%s+(.*)$"):gmatch("%S+") do fields[#fields + 1] = field end
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100   -- utime, stime in ticks (USER_HZ 100)
end

local function worker_pids(master)
  local pids = {}
  local p = io.popen("ps -o pid= --ppid " .. master)
  for pid in p:read("*a"):gmatch("%d+") do pids[#pids + 1] = pid end
  p:close()
  return pids
end

-- Grants through an nginx app (spec/support/nginx_app.lua): 64 handler
-- requests at once, each one grant on the cosocket transport.
local function nginx_part(crypto)
  package.path = "./spec/?.lua;" .. package.path
  local app_support = require("support.nginx")
  local n = env_number("BENCH_NGINX_GRANTS", 3000)
  local latency = env_number("BENCH_LATENCY", 0.05)
  local server = start_mock{ rate_limit = false, latency = latency }
  crypto = crypto or crypto_cost_ms(server)
  for _, workers in ipairs{ 1, 2 } do
    local app = app_support.start(server, { workers = workers, max_concurrency = 64 })
    local session = app:session()
    local function run(count, prefix, path)
      local submitted, done, failed = 0, 0, 0
      local function submit()
        submitted = submitted + 1
        session:submit{ method = "GET", timeout = 60,
          url = app:url(path or ("/grant?style=async&no=%s%s%d"):format(prefix, run_id, submitted)) }
      end
      while submitted < math.min(64, count) do submit() end
      while done < count do
        for _, r in ipairs(session:perform(0.01)) do
          done = done + 1
          if r.status ~= 200 then failed = failed + 1 end
          if submitted < count then submit() end
        end
      end
      return failed
    end
    run(200, "ngxwarm" .. workers .. "-")   -- pools full, code compiled
    server:reset()
    local pids = worker_pids(app.pid)
    local function measured(prefix, path)
      local cpu0 = 0
      for _, pid in ipairs(pids) do cpu0 = cpu0 + process_cpu(pid) end
      local wall = monotonic()
      local failed = run(n, prefix, path)
      wall = monotonic() - wall
      local cpu = -cpu0
      for _, pid in ipairs(pids) do cpu = cpu + process_cpu(pid) end
      return wall, cpu * 1000 / n, failed
    end
    local wall, per_call, failed = measured("ngx" .. workers .. "-")
    local stats = server:stats()
    -- the same handler's crypto with no call: the difference is the call
    -- itself (transport, dispatcher, promise, request building, verification)
    local _, per_crypto_only = measured("", "/crypto")
    -- the transport alone: one unsigned HTTPS GET of the mock's "/" per
    -- handler, less a handler that answers at once
    local _, per_raw = measured("", "/raw?host=localhost&path=/&port=" .. server.port)
    local _, per_ping = measured("", "/ping")
    print(("nginx %d worker%s %d grants, 64 at once, %.0f ms latency: %.1f calls/s, worker CPU %.3f ms/call"
      .. " (%.2fx crypto), in flight at the mock: %d, connections: %d, failed: %d;"
      .. " the same handler with the crypto and no call: %.3f ms: the call adds %.3f ms;"
      .. " the transport alone (an HTTPS GET on a pooled cosocket): %.3f ms"):format(
      workers, workers == 1 and " " or "s", n, latency * 1000, n / wall, per_call, per_call / crypto,
      stats.in_flight_max, stats.connections, failed, per_crypto_only, per_call - per_crypto_only,
      per_raw - per_ping))
    session:close()
    app:stop()
  end
  server:stop()
end

local parts = { ... }
if #parts == 0 then parts = { "sequential", "concurrent", "memory", "nginx" } end
print(("# client benchmarks (%s, %s)"):format(jit and jit.version or _VERSION, core.crypto_backend))
local crypto
for _, part in ipairs(parts) do
  if part == "sequential" then crypto = sequential()
  elseif part == "concurrent" then concurrent(crypto)
  elseif part == "memory" then memory()
  elseif part == "nginx" then nginx_part(crypto)
  else error("unknown part " .. part) end
end
