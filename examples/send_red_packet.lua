--- Send a cash red packet (现金红包) through APIv2: POST /mmpaymkttransfers/sendredpack,
-- signed XML with the APIv2 key, over mutual TLS with the merchant API certificate.
--
--   lua5.4 examples/send_red_packet.lua --mock     against the built-in mock (make demo)
--   lua5.4 examples/send_red_packet.lua            against WeChat Pay, configured by:
--     the variables bin/wechatpay reads (README "The wechatpay command"): WECHATPAY_MCHID,
--     WECHATPAY_PRIVATE_KEY (/path/apiclient_key.pem), WECHATPAY_MERCHANT_CERT (/path/apiclient_cert.pem,
--     presented for mutual TLS), WECHATPAY_PUBLIC_KEY_ID, WECHATPAY_PUBLIC_KEY (/path/pub_key.pem);
--     and WECHATPAY_APIV2_KEY_FILE (a file holding the 32-character APIv2 key), REDPACK_APPID, REDPACK_OPENID
local wechatpay = require("wechatpay")

local function env(name)
  local value = os.getenv(name)
  if not value or value == "" then
    io.stderr:write("missing environment variable ", name, " (or run with --mock)\n")
    os.exit(2)
  end
  return value
end

local client, server, appid, openid
if arg[1] == "--mock" then
  local err
  server, err = require("wechatpay.mock").start{}
  if not server then
    io.stderr:write("cannot start the mock WeChat Pay: ", tostring(err), "\n")
    os.exit(1)
  end
  client = server:client()   -- with the mock's apiv2_key and merchant_cert
  appid, openid = "wx2421b1c4370ec43b", "oxTWIuGaIt6gTKsQRLau2M0yL16E"
  print(("mock WeChat Pay at %s (mchid %s)"):format(server.base_url, server.mchid))
else
  -- configured as bin/wechatpay is (`bin/wechatpay --help`): WECHATPAY_CONFIG, or the WECHATPAY_*
  -- variables, a key's value a path; the serial WECHATPAY_SERIAL or that of WECHATPAY_MERCHANT_CERT
  local options, profile = require("wechatpay.cli.config").configured()
  if not options then io.stderr:write(profile, " (or run with --mock)\n") os.exit(2) end
  options.merchant_cert = profile.merchant_cert or env("WECHATPAY_MERCHANT_CERT")
  if options.apiv2_key == nil then   -- a config file may hold apiv2_key itself
    local f = assert(io.open(env("WECHATPAY_APIV2_KEY_FILE"), "rb"))
    options.apiv2_key = f:read("*a"):gsub("%s", "")
    f:close()
  end
  client = wechatpay.new(options)
  appid, openid = env("REDPACK_APPID"), env("REDPACK_OPENID")
end

-- mch_billno: the merchant number (mchid + yyyymmdd + 10 digits) that makes a retry the same packet
local billno = ("%s%s%010d"):format(client.mchid, os.date("%Y%m%d"), os.time() % 10000000000)
local res, err = client.v2.mmpaymkttransfers.sendredpack:post{
  security = true,   -- present the merchant certificate
  xml = {
    mch_billno = billno, wxappid = appid, send_name = "wechatpay-lua", re_openid = openid,
    total_amount = 100, total_num = 1,   -- fen: 1.00 CNY
    wishing = "恭喜发财", client_ip = "127.0.0.1", act_name = "demo", remark = "sent by examples/send_red_packet.lua",
  },
}
local status = 0
if res then
  local answer = res:xml()
  print(("red packet %s sent: send_listid %s, %s fen to %s"):format(answer.mch_billno, answer.send_listid,
    answer.total_amount, answer.re_openid))
else
  print("red packet failed: " .. tostring(err))
  status = 1
end
client:close()
if server then server:stop() end
os.exit(status)
