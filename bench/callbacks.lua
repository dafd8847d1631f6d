--- Callback handling per second on one core, next to its crypto alone.
--
--   LUA_PATH='./lua/?.lua;./lua/?/init.lua;;' LUA_CPATH='./build/lua5.4/?.so;;' lua5.4 bench/callbacks.lua
--
-- A callback with a 1 KiB resource (as WeChat Pay sends: signed body,
-- AES-256-GCM with associated data "transaction"): client:parse_notification
-- (verify + decode + decrypt + decode) and notification.handle (the same plus
-- the answer, no dedupe store), against the RSA verify and GCM decrypt they
-- cannot avoid.  Target: the overhead beyond the crypto at most 20%.
--   BENCH_TSV=1  "id<TAB>ops/s<TAB>what" lines for scripts/bench.sh
--   BENCH_RUNS (5), BENCH_SECONDS (1)
local wechatpay = require("wechatpay")
local core = require("wechatpay.core")
local cjson = require("cjson")
local cjson_safe = require("cjson.safe")   -- what notification.lua decodes with

local RUNS = tonumber(os.getenv("BENCH_RUNS") or "") or 5
local SECONDS = tonumber(os.getenv("BENCH_SECONDS") or "") or 1
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

-- two key pairs: the merchant's and WeChat Pay's (the client refuses one for both)
local pipe = assert(io.popen("mktemp -d"))
local dir = pipe:read("*l")
pipe:close()
for _, name in ipairs{ "merchant", "platform" } do
  sh(("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s/%s.pem"):format(dir, name))
end
sh(("openssl pkey -in %s/platform.pem -pubout -out %s/platform_pub.pem"):format(dir, dir))
local platform = assert(wechatpay.key.private(read(dir .. "/platform.pem")))
local platform_public = assert(wechatpay.key.public(read(dir .. "/platform_pub.pem")))
local apiv3_key = string.rep("0123456789abcdef", 2)
local client = wechatpay.new{
  mchid = "1900000001", serial = "1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C",
  private_key = read(dir .. "/merchant.pem"),
  certs = { PUB_KEY_ID_0114232134912410000000000000 = read(dir .. "/platform_pub.pem") },
  apiv3_key = apiv3_key,
}
os.execute("rm -rf " .. dir)

-- the callback: a 1 KiB transaction resource
local resource = { out_trade_no = "1217752501201407033233368018", trade_state = "SUCCESS",
  amount = { total = 100, currency = "CNY" }, attach = "" }
resource.attach = string.rep("x", 1024 - #cjson.encode(resource))
local plaintext = cjson.encode(resource)
assert(#plaintext == 1024, #plaintext)
local nonce = "fdasflkja484"
local sealed = assert(wechatpay.aes.gcm_encrypt(apiv3_key, nonce, "transaction", plaintext))
-- WeChat Pay does not escape "/" as lua-cjson does: the body as it arrives
local body = (cjson.encode({ id = "EV-2018022511223320873", create_time = "2015-05-20T13:29:35+08:00",
  resource_type = "encrypt-resource", event_type = "TRANSACTION.SUCCESS", summary = "支付成功",
  resource = { original_type = "transaction", algorithm = "AEAD_AES_256_GCM", ciphertext = sealed,
    associated_data = "transaction", nonce = nonce } })):gsub("\\/", "/")
local timestamp, signature_nonce = tostring(os.time()), core.nonce(32)
local signature = wechatpay.rsa.sign(platform, timestamp .. "\n" .. signature_nonce .. "\n" .. body .. "\n")
local headers = { ["Wechatpay-Timestamp"] = timestamp, ["Wechatpay-Nonce"] = signature_nonce,
  ["Wechatpay-Signature"] = signature, ["Wechatpay-Serial"] = "PUB_KEY_ID_0114232134912410000000000000" }
assert(client:parse_notification(headers, body).resource.trade_state == "SUCCESS")

local function run(fn, n)
  collectgarbage()
  local t0 = os.clock()
  for _ = 1, n do fn() end
  return n / (os.clock() - t0)
end

local function measure(fn)
  local n = 1
  while true do
    local t0 = os.clock()
    for _ = 1, n do fn() end
    local dt = os.clock() - t0
    if dt >= 0.1 then n = math.max(1, math.floor(n * SECONDS / dt)) break end
    n = n * (dt < 0.01 and 10 or 2)
  end
  local rates = {}
  for i = 1, RUNS do rates[i] = run(fn, n) end
  table.sort(rates)
  return rates[math.floor((RUNS + 1) / 2)]
end

local handle = wechatpay.notification.handle
local function handler() return true end
local cases = {
  { "callback.crypto", "callback crypto alone: rsa.verify + aes.gcm_decrypt of 1 KiB", function()
    assert(core.verify_message(platform_public, timestamp, signature_nonce, body, signature))
    assert(wechatpay.aes.gcm_decrypt(apiv3_key, nonce, "transaction", sealed))
  end },
  -- what every parse must also do and the crypto does not: the two JSON
  -- decodes (the envelope, then the plaintext), with lua-cjson
  { "callback.json", "callback JSON alone: cjson decode of the body + the 1 KiB plaintext", function()
    assert(cjson_safe.decode(body))
    assert(cjson_safe.decode(plaintext))
  end },
  { "callback.parse", "client:parse_notification, 1 KiB resource", function()
    assert(client:parse_notification(headers, body))
  end },
  { "callback.handle", "notification.handle (no dedupe store), 1 KiB resource", function()
    assert(handle(client, headers, body, handler, { dedupe = false }) == 204)
  end },
}

local results = {}
for _, case in ipairs(cases) do
  local ops = measure(case[3])
  results[case[1]] = ops
  if TSV then
    print(("%s\t%.1f\t%s"):format(case[1], ops, case[2]))
  else
    print(("%-60s %10.0f /s"):format(case[2], ops))
  end
end
if not TSV then
  for _, id in ipairs{ "callback.parse", "callback.handle" } do
    print(("%s: %.1f%% beyond its crypto (target: at most 20%%)"):format(id,
      (results["callback.crypto"] / results[id] - 1) * 100))
  end
  print(("callback.json: the two JSON decodes alone cost %.1f%% of the crypto"):format(
    results["callback.crypto"] / results["callback.json"] * 100))
end
