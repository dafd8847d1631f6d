--- Download a trade bill: GET /v3/bill/tradebill (signed, verified) names the
-- file and its hash; client:download streams the file, gunzips it, checks
-- the hash and writes it to disk only when it matches.
--
--   lua5.4 examples/download_bill.lua --mock [bill_date]    against the built-in mock (make demo)
--   lua5.4 examples/download_bill.lua bill_date             against WeChat Pay, configured by:
--     the variables bin/wechatpay reads (README "The wechatpay command"): WECHATPAY_MCHID,
--     WECHATPAY_PRIVATE_KEY (/path/apiclient_key.pem), WECHATPAY_MERCHANT_CERT (or WECHATPAY_SERIAL),
--     WECHATPAY_PUBLIC_KEY_ID (PUB_KEY_ID_...), WECHATPAY_PUBLIC_KEY (/path/pub_key.pem)
-- The bill is written to ./trade-<bill_date>.csv.
local wechatpay = require("wechatpay")

local client, server, bill_date
if arg[1] == "--mock" then
  local mock = require("wechatpay.mock")
  local err
  server, err = mock.start{}
  if not server then
    io.stderr:write("cannot start the mock WeChat Pay: ", tostring(err), "\n")
    os.exit(1)
  end
  client = server:client()
  bill_date = arg[2] or "2026-11-26"
  server:bill("trade-" .. bill_date:gsub("%-", ""), { rows = 20000 })   -- about 4.5 MB
  print(("mock WeChat Pay at %s (mchid %s)"):format(server.base_url, server.mchid))
else
  bill_date = arg[1] or os.date("!%Y-%m-%d", os.time() - 86400)
  -- configured as bin/wechatpay is (`bin/wechatpay --help`): WECHATPAY_CONFIG, or the WECHATPAY_*
  -- variables, a key's value a path; the serial WECHATPAY_SERIAL or that of WECHATPAY_MERCHANT_CERT
  local options, profile = require("wechatpay.cli.config").configured()
  if not options then io.stderr:write(profile, " (or run with --mock)\n") os.exit(2) end
  client = wechatpay.new(options)
end

local function finish(code)
  client:close()
  if server then server:stop() end
  os.exit(code)
end

local bill, err = client.v3.bill.tradebill:get{ query = { bill_date = bill_date, tar_type = "GZIP" } }
if not bill then
  print("tradebill failed: " .. tostring(err))
  finish(1)
end

local to = "trade-" .. bill_date .. ".csv"
local info
info, err = client:download(bill, { to = to })
if not info then
  print("download failed: " .. tostring(err))   -- err.kind "integrity" when the hash does not match
  finish(1)
end
print(("%s: %d bytes (%s on the wire), %s %s checked"):format(info.path, info.bytes,
  info.gzip and ("gzip, " .. info.received .. " bytes") or "plain", info.hash_type, info.hash_value))

-- The same bill to a function: rows counted as they stream by, nothing kept.
local rows, tail = 0, ""
info, err = client:download(bill, { to = function(bytes)
  local text = tail .. bytes
  local last = 1
  for line_end in text:gmatch("()\n") do
    rows = rows + 1
    last = line_end + 1
  end
  tail = text:sub(last)
end })
if not info then
  print("download failed: " .. tostring(err))
  finish(1)
end
print(("%d lines streamed through a function, %s %s checked"):format(rows, info.hash_type, info.hash_value))
os.remove(to)
finish(0)
