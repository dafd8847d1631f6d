--- Our client's half of the side-by-side benchmark (bench/peer/run.sh):
-- N coupon grants against the running mock described by PEER_MOCK (the JSON
-- bench/peer/mock.lua printed), sequential (concurrency 1) or with up to
-- `concurrency` calls in flight, then one TSV line:
--
--   client  mode  n  wall_s  cpu_s  mock_cpu_s  crypto_ms  failed  machine_cpu_s
--
-- cpu_s is this process's CPU (os.clock) over the timed grants; mock_cpu_s
-- the nginx worker's over the same span (from /proc); crypto_ms what one
-- grant's crypto (1 sign + 1 verify + 2 OAEP encryptions) costs in this
-- process, measured after the grants on the same keys; machine_cpu_s the
-- whole machine's busy CPU time over the span (/proc/stat), so the caller can
-- tell other processes' load from ours.
--
--   PEER_MOCK=mock.json lua5.4 bench/peer/grants.lua <concurrency> <n>
local cjson = require("cjson")
local core = require("wechatpay.core")
local wechatpay = require("wechatpay")

local concurrency = assert(tonumber(arg[1]), "usage: grants.lua <concurrency> <n>")
local n = assert(tonumber(arg[2]), "usage: grants.lua <concurrency> <n>")
local WARMUP = tonumber(os.getenv("PEER_WARMUP") or "") or 50
local CLK_TCK = tonumber(os.getenv("PEER_CLK_TCK") or "") or 100

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("*a")
  f:close()
  return text
end

local m = cjson.decode(read_file(assert(os.getenv("PEER_MOCK"), "PEER_MOCK: the mock's JSON file")))
local users = m.users

-- The nginx workers' CPU seconds so far (utime + stime, fields 14 and 15).
local function mock_cpu()
  local ticks = 0
  for _, pid in ipairs(m.nginx_workers) do
    local stat = read_file(("/proc/%d/stat"):format(pid))
    local fields = {}
    for field in stat:match("%)%s+(.*)$"):gmatch("%S+") do fields[#fields + 1] = field end
    ticks = ticks + tonumber(fields[12]) + tonumber(fields[13])   -- fields 14, 15 counted from after comm
  end
  return ticks / CLK_TCK
end

-- The machine's busy CPU seconds so far: every CPU's time but idle and iowait.
local function machine_cpu()
  local line = read_file("/proc/stat"):match("^cpu%s+([^\n]*)")
  local ticks, i = 0, 0
  for field in line:gmatch("%d+") do
    i = i + 1
    if i ~= 4 and i ~= 5 and i <= 8 then ticks = ticks + tonumber(field) end
  end
  return ticks / CLK_TCK
end

local client = wechatpay.new{
  mchid = m.mchid,
  serial = m.merchant_serial,
  private_key = "file://" .. m.merchant_key_file,
  certs = { [m.platform_key_id] = "file://" .. m.platform_public_key_file },
  base_url = m.base_url,
  cafile = m.cafile,
  max_concurrency = concurrency,
  retry = false,
}

local run_id = tostring(os.time()) .. core.nonce(6)
local counter = 0

-- One grant's body: the encryption is part of what a merchant's call costs.
local function grant_json(user)
  counter = counter + 1
  return {
    stock_id = "9856000",
    out_request_no = ("lua%s%d"):format(run_id, counter),
    user_name = assert(client:encrypt(user.name)),
    id_card_number = assert(client:encrypt(user.id_card)),
    appid = "wx233544546545989",
    card_type = "ID_CARD",
  }
end

local function grant_async(i)
  local user = users[i % #users + 1]
  return client.v3.multiuse.users._openid_.coupons:postAsync{ openid = user.openid, json = grant_json(user) }
end

-- i grants, at most `concurrency` in flight (the dispatcher's bound), with a
-- bounded window of promises as a batch job would keep.
local function grants(count)
  local failed = 0
  if concurrency == 1 then
    for i = 1, count do
      local user = users[i % #users + 1]
      local res, err = client.v3.multiuse.users._openid_.coupons:post{ openid = user.openid, json = grant_json(user) }
      if not res or not res:json().coupon_id then
        failed = failed + 1
        io.stderr:write("grant failed: ", tostring(err), "\n")
      end
    end
    return failed
  end
  -- head..tail are the promises not yet waited for; `#` is not used on the
  -- window, whose settled front is nil (on Lua 5.4 its length may then be
  -- any border, and promises were overwritten: never sent, yet counted)
  local window, head, tail, settled = {}, 1, 0, 0
  local function settle()
    local res, err = window[head]:wait()
    if not res or not res:json().coupon_id then
      failed = failed + 1
      io.stderr:write("grant failed: ", tostring(err), "\n")
    end
    window[head] = nil
    head = head + 1
    settled = settled + 1
  end
  for i = 1, count do
    tail = tail + 1
    window[tail] = grant_async(i)
    if tail - head + 1 >= concurrency * 2 then settle() end
  end
  while head <= tail do settle() end
  assert(settled == count, ("%d grants settled of %d"):format(settled, count))
  return failed
end

-- The crypto one grant needs, on this client's keys, called on the core.
local function crypto_ms()
  local key = require("wechatpay.key")
  local private = assert(key.private("file://" .. m.merchant_key_file))
  local public = assert(key.public("file://" .. m.platform_public_key_file))
  local message = ("POST\n/v3/multiuse/users/oUpF8uMuAJO_M2pxb1Q9zNjWeS6o/coupons\n1700000000\n"
    .. ("N"):rep(32) .. "\n" .. ("x"):rep(800) .. "\n")
  local signature = core.rsa_sign(private, message)
  local runs = {}
  for _ = 1, 3 do
    local count, started = 100, os.clock()
    for _ = 1, count do
      core.rsa_sign(private, message)
      core.rsa_verify(public, "1700000000\nNONCE\n{\"coupon_id\":\"1\"}\n", signature)
      core.rsa_encrypt(public, "张三")
      core.rsa_encrypt(public, "110101199003071234")
    end
    runs[#runs + 1] = (os.clock() - started) * 1000 / count
  end
  table.sort(runs)
  return runs[2]
end

assert(grants(WARMUP) == 0, "warm-up grants failed")
collectgarbage()
local machine0, mock0, wall0, cpu0 = machine_cpu(), mock_cpu(), core.monotonic(), os.clock()
local failed = grants(n)
local wall, cpu, mock = core.monotonic() - wall0, os.clock() - cpu0, mock_cpu() - mock0
local machine = machine_cpu() - machine0
client:close()

local name = (jit and "LuaJIT" or "Lua 5.4") .. " (" .. tostring(core.crypto_backend):match("^%S+") .. ")"
io.stdout:write(("%s\t%s\t%d\t%.4f\t%.4f\t%.4f\t%.4f\t%d\t%.4f\n"):format(
  name, concurrency == 1 and "sequential" or ("concurrency " .. concurrency),
  n, wall, cpu, mock, crypto_ms(), failed, machine))
