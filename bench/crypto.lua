--- Crypto benchmark through the public Lua API: what a client does per request.
--
--   LUA_PATH='./lua/?.lua;./lua/?/init.lua;;' LUA_CPATH='./build/lua5.4/?.so;;' lua5.4 bench/crypto.lua
--
-- Prints ops/s, the median of BENCH_RUNS runs (5) of about BENCH_SECONDS (1)
-- of process CPU time each.  Keys come from BENCH_KEYDIR (key.pem, pub.pem,
-- msg.bin, as scripts/bench.sh makes them) or are made by openssl in a
-- temporary folder.
--   BENCH_TSV=1         "id<TAB>ops/s<TAB>what" lines, which scripts/bench.sh merges
--   BENCH_ONLY=rsa.sign one operation
--   BENCH_COUNT=n       exactly n calls, once, no calibration (for callgrind)
local rsa = require("wechatpay.rsa")
local aes = require("wechatpay.aes")
local hash = require("wechatpay.hash")
local key = require("wechatpay.key")

local RUNS = tonumber(os.getenv("BENCH_RUNS") or "") or 5
local SECONDS = tonumber(os.getenv("BENCH_SECONDS") or "") or 1
local COUNT = tonumber(os.getenv("BENCH_COUNT") or "")
local ONLY = os.getenv("BENCH_ONLY")
local TSV = os.getenv("BENCH_TSV") == "1"

local function sh(cmd)
  local ok = os.execute(cmd .. " >/dev/null 2>&1")
  if ok ~= true and ok ~= 0 then error("command failed: " .. cmd) end
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

-- The key, its public half and a ~200-byte message to sign.
local function material()
  local dir = os.getenv("BENCH_KEYDIR")
  local tmp
  if not dir then
    local pipe = assert(io.popen("mktemp -d"))
    tmp = pipe:read("*l")
    pipe:close()
    dir = tmp
    sh("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. dir .. "/key.pem")
    sh("openssl pkey -in " .. dir .. "/key.pem -pubout -out " .. dir .. "/pub.pem")
  end
  local m = {
    private = assert(key.private(read(dir .. "/key.pem"))),
    public = assert(key.public(read(dir .. "/pub.pem"))),
  }
  local f = io.open(dir .. "/msg.bin", "rb")
  if f then
    m.message = f:read("*a")
    f:close()
  else
    m.message = ("POST\n/v3/pay/transactions/jsapi\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n"
      .. string.rep("{\"appid\":\"wxd678efh567hg6787\"}", 5)):sub(1, 199) .. "\n"
  end
  if tmp then os.execute("rm -rf " .. tmp) end
  return m
end

-- ops/s of one run of n calls, in process CPU time (os.clock).
local function run(fn, n)
  collectgarbage()
  local t0 = os.clock()
  for _ = 1, n do fn() end
  return n / (os.clock() - t0)
end

-- How many calls make a run of about SECONDS.
local function calibrate(fn)
  local n = 1
  while true do
    local t0 = os.clock()
    for _ = 1, n do fn() end
    local dt = os.clock() - t0
    if dt >= 0.1 then return math.max(1, math.floor(n * SECONDS / dt)) end
    n = n * (dt < 0.01 and 10 or 2)
  end
end

local function median(xs)
  table.sort(xs)
  local n = #xs
  if n % 2 == 1 then return xs[(n + 1) / 2] end
  return (xs[n / 2] + xs[n / 2 + 1]) / 2
end

local function measure(fn)
  if COUNT then
    for _ = 1, COUNT do fn() end
    return 0, COUNT
  end
  local n, rates = calibrate(fn), {}
  for i = 1, RUNS do rates[i] = run(fn, n) end
  return median(rates), n
end

local m = material()
local signature = assert(rsa.sign(m.private, m.message))
assert(rsa.verify(m.public, m.message, signature), "the signature does not verify")
local name = "Zhang San, 20 bytes!"
assert(#name == 20)
local apiv3_key = string.rep("0123456789abcdef", 2)
local nonce, aad = "4cc7be5cb5a2", "certificate"
local resource = string.rep("a WeChat Pay platform certificate or a callback's body. ", 19):sub(1, 1024)
local sealed = assert(aes.gcm_encrypt(apiv3_key, nonce, aad, resource))
assert(aes.gcm_decrypt(apiv3_key, nonce, aad, sealed) == resource)

local cases = {
  { "rsa.sign", ("rsa.sign, RSA-2048 SHA256withRSA, %d-byte message"):format(#m.message),
    function() return rsa.sign(m.private, m.message) end },
  { "rsa.verify", "rsa.verify of that signature",
    function() return rsa.verify(m.public, m.message, signature) end },
  { "rsa.encrypt", "rsa.encrypt, RSA-2048 OAEP-SHA1, 20-byte name",
    function() return rsa.encrypt(m.public, name) end },
  { "aes.gcm_decrypt", "aes.gcm_decrypt, AES-256-GCM, 1 KiB resource",
    function() return aes.gcm_decrypt(apiv3_key, nonce, aad, sealed) end },
  { "hash.sha256", "hash.sha256 of 1 KiB",
    function() return hash.sha256(resource) end },
}

local runtime = jit and jit.version or _VERSION
if not TSV and not COUNT then
  print(("%s, %s, median of %d runs of ~%gs CPU time"):format(runtime, require("wechatpay.core").crypto_backend,
    RUNS, SECONDS))
  print(("| %-52s | %12s |"):format("operation", "ops/s"))
  print(("|%s|%s|"):format(string.rep("-", 54), string.rep("-", 13) .. ":"))
end
for _, case in ipairs(cases) do
  local id, what, fn = case[1], case[2], case[3]
  if not ONLY or ONLY == id then
    local ops, n = measure(fn)
    if COUNT then
      -- nothing to print: the caller counts instructions
    elseif TSV then
      print(("%s\t%.1f\t%s\t%d calls/run"):format(id, ops, what, n))
    else
      print(("| %-52s | %12.0f |"):format(what, ops))
    end
    io.stdout:flush()
  end
end
