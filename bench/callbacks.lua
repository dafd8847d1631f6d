--- Callback handling per second on one core, next to its crypto alone.
--
--   LUA_PATH='./lua/?.lua;./lua/?/init.lua;;' LUA_CPATH='./build/lua5.4/?.so;;' lua5.4 bench/callbacks.lua
--
-- A callback with a 1 KiB resource (as WeChat Pay sends: signed body,
-- AES-256-GCM with associated data "transaction"): client:parse_notification
-- (verify + decode + decrypt + decode) and notification.handle (the same plus
-- the answer, no dedupe store), against the RSA verify and GCM decrypt they
-- cannot avoid.  Target: the overhead beyond the crypto at most 20%.  Three
-- resources of the same size: a payment result with a coupon as WeChat Pay
-- documents it (the headline figure), the same without the coupon (the
-- common callback), and one long member, where decoding costs least.
--   BENCH_TSV=1  "id<TAB>ops/s<TAB>what" lines for scripts/bench.sh
--   BENCH_RUNS (5), BENCH_SECONDS (1)
local wechatpay = require("wechatpay")
local core = require("wechatpay.core")
local cjson = require("cjson")

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

local nonce = "fdasflkja484"
-- A signed callback carrying `resource` (its JSON exactly 1 KiB) as
-- WeChat Pay sends it: AES-256-GCM with associated data "transaction".
local function callback(resource, pad)
  resource[pad] = ""
  resource[pad] = string.rep("x", 1024 - #cjson.encode(resource))
  local plaintext = cjson.encode(resource)
  assert(#plaintext == 1024, #plaintext)
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
  return { headers = headers, body = body, sealed = sealed, timestamp = timestamp,
    signature_nonce = signature_nonce, signature = signature }
end

-- A payment result shaped as WeChat Pay documents it, paid `payer_total`
-- of 100 fen; `promotion` adds its promotion_detail.
local function payment_result(payer_total, promotion)
  return { mchid = "1230000109", appid = "wxd678efh567hg6787", out_trade_no = "1217752501201407033233368018",
    transaction_id = "1217752501201407033233368018", trade_type = "JSAPI", trade_state = "SUCCESS",
    trade_state_desc = "支付成功", bank_type = "CMC", success_time = "2018-06-08T10:34:56+08:00",
    payer = { openid = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" },
    amount = { total = 100, payer_total = payer_total, currency = "CNY", payer_currency = "CNY" },
    scene_info = { device_id = "013467007045764" }, promotion_detail = promotion }
end
-- With a coupon: a promotion with two goods, 50 members in 6 objects, its
-- attach filled up to 1 KiB (the headline figure).
local payment = callback(payment_result(90, { { coupon_id = "109519", name = "单品惠-6", scope = "SINGLE",
  type = "CASH", stock_id = "931386", amount = 10, wechatpay_contribute = 0, merchant_contribute = 10,
  other_contribute = 0, currency = "CNY", goods_detail = {
    { goods_id = "M1006", quantity = 1, unit_price = 100, discount_amount = 10, goods_remark = "商品备注信息" },
    { goods_id = "M1007", quantity = 2, unit_price = 50, discount_amount = 0, goods_remark = "" } } } }), "attach")
-- The common payment result: no coupon, so no promotion_detail (17 members).
local plain = callback(payment_result(100), "attach")
-- The same 1 KiB as few members: one long attach (JSON work mostly scanning).
local flat = callback({ out_trade_no = "1217752501201407033233368018", trade_state = "SUCCESS",
  amount = { total = 100, currency = "CNY" } }, "attach")

local function run(fn, n)
  collectgarbage()
  local t0 = os.clock()
  for _ = 1, n do fn() end
  return n / (os.clock() - t0)
end

-- iterations for about SECONDS of fn
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

-- The cases take turns, run by run, so a slower minute of a shared machine
-- weighs on each alike instead of on whichever ran then; median of RUNS.
local function measure_all(cases)
  local sizes, rates = {}, {}
  for i, case in ipairs(cases) do sizes[i], rates[i] = calibrate(case[3]), {} end
  for _ = 1, RUNS do
    for i, case in ipairs(cases) do rates[i][#rates[i] + 1] = run(case[3], sizes[i]) end
  end
  for i = 1, #cases do
    table.sort(rates[i])
    rates[i] = rates[i][math.floor((RUNS + 1) / 2)]
  end
  return rates
end

local handle = wechatpay.notification.handle
local function handler() return true end
local cases = {
  { "callback.crypto", "callback crypto alone: rsa.verify + aes.gcm_decrypt of 1 KiB", function()
    assert(core.verify_message(platform_public, payment.timestamp, payment.signature_nonce, payment.body,
      payment.signature))
    assert(wechatpay.aes.gcm_decrypt(apiv3_key, nonce, "transaction", payment.sealed))
  end },
  { "callback.parse", "client:parse_notification, 1 KiB payment result", function()
    assert(client:parse_notification(payment.headers, payment.body))
  end },
  { "callback.handle", "notification.handle (no dedupe store), 1 KiB payment result", function()
    assert(handle(client, payment.headers, payment.body, handler, { dedupe = false }) == 204)
  end },
  { "callback.parse_plain", "client:parse_notification, 1 KiB payment result without a coupon", function()
    assert(client:parse_notification(plain.headers, plain.body))
  end },
  { "callback.parse_flat", "client:parse_notification, 1 KiB resource, one long member", function()
    assert(client:parse_notification(flat.headers, flat.body))
  end },
}

local results = {}
for i, ops in ipairs(measure_all(cases)) do
  local case = cases[i]
  results[case[1]] = ops
  if TSV then
    print(("%s\t%.1f\t%s"):format(case[1], ops, case[2]))
  else
    print(("%-60s %10.0f /s"):format(case[2], ops))
  end
end
if not TSV then
  for _, id in ipairs{ "callback.parse", "callback.handle", "callback.parse_plain", "callback.parse_flat" } do
    print(("%s: %.1f%% beyond its crypto (target: at most 20%%)"):format(id,
      (results["callback.crypto"] / results[id] - 1) * 100))
  end
end
