--- Grant a consumption-gold (消费金) coupon: POST /v3/multiuse/users/{openid}/coupons,
-- in each of the chained call styles, with the user's real name and ID card
-- number RSA-OAEP encrypted for WeChat Pay.
--
--   lua5.4 examples/grant_multiuse_coupon.lua --mock     against the built-in mock (make demo)
--   lua5.4 examples/grant_multiuse_coupon.lua            against WeChat Pay, configured by:
--     the variables bin/wechatpay reads (README "The wechatpay command"): WECHATPAY_MCHID,
--     WECHATPAY_PRIVATE_KEY (/path/apiclient_key.pem), WECHATPAY_MERCHANT_CERT (or WECHATPAY_SERIAL),
--     WECHATPAY_PUBLIC_KEY_ID (PUB_KEY_ID_...), WECHATPAY_PUBLIC_KEY (/path/pub_key.pem),
--     GRANT_STOCK_ID, GRANT_APPID, GRANT_OPENID, GRANT_NAME, GRANT_ID_CARD
local wechatpay = require("wechatpay")

local function env(name)
  local value = os.getenv(name)
  if not value or value == "" then
    io.stderr:write("missing environment variable ", name, " (or run with --mock)\n")
    os.exit(2)
  end
  return value
end

local client, users, stock_id, appid, server
if arg[1] == "--mock" then
  local mock = require("wechatpay.mock")
  local err
  server, err = mock.start{}
  if not server then
    io.stderr:write("cannot start the mock WeChat Pay: ", tostring(err), "\n")
    os.exit(1)
  end
  client = server:client()
  users, stock_id, appid = {}, "9856000", "wx233544546545989"
  for openid, user in pairs(server.users) do
    users[#users + 1] = { openid = openid, name = user.name, id_card = user.id_card }
  end
  table.sort(users, function(a, b) return a.openid < b.openid end)
  print(("mock WeChat Pay at %s (mchid %s)"):format(server.base_url, server.mchid))
else
  -- configured as bin/wechatpay is (`bin/wechatpay --help`): WECHATPAY_CONFIG, or the WECHATPAY_*
  -- variables, a key's value a path; the serial WECHATPAY_SERIAL or that of WECHATPAY_MERCHANT_CERT
  local options, profile = require("wechatpay.cli.config").configured()
  if not options then io.stderr:write(profile, " (or run with --mock)\n") os.exit(2) end
  client = wechatpay.new(options)
  users = { { openid = env("GRANT_OPENID"), name = env("GRANT_NAME"), id_card = env("GRANT_ID_CARD") } }
  stock_id, appid = env("GRANT_STOCK_ID"), env("GRANT_APPID")
end

-- The request body for one user; the merchant number makes a retry safe.
local function grant_body(user, style)
  local user_name, key_id = assert(client:encrypt(user.name))
  local id_card_number = assert(client:encrypt(user.id_card))
  return {
    stock_id = stock_id,
    out_request_no = ("demo%d%s%s"):format(os.time(), style, user.openid:sub(-6)):gsub("[^%w|_*-]", ""),
    user_name = user_name,
    id_card_number = id_card_number,
    appid = appid,
    card_type = "ID_CARD",
  }, key_id
end

local styles = {
  { "chained, _openid_ template", function(user, json, key_id)
    return client.v3.multiuse.users._openid_.coupons:post{
      openid = user.openid, json = json, headers = { ["Wechatpay-Serial"] = key_id } }
  end },
  { "chain(path)", function(user, json)
    return client:chain("v3/multiuse/users/{openid}/coupons"):post{ openid = user.openid, json = json }
  end },
  { "client[path]", function(user, json)
    return client["v3/multiuse/users/{openid}/coupons"]:post{ openid = user.openid, json = json }
  end },
  { "literal openid segment", function(user, json)
    return client.v3.multiuse.users[user.openid].coupons:post{ json = json }
  end },
  { "postAsync():next():wait()", function(user, json)
    local coupon
    local res, err = client.v3.multiuse.users._openid_.coupons:postAsync{ openid = user.openid, json = json }
      :next(function(response) coupon = response; return response end)
      :wait()
    return coupon or res, err
  end },
}

local failures = 0
for i, style in ipairs(styles) do
  local user = users[(i - 1) % #users + 1]
  local json, key_id = grant_body(user, tostring(i))
  local res, err = style[2](user, json, key_id)
  if res then
    print(("%-28s openid %-32s coupon_id %s (Request-ID %s)"):format(
      style[1], user.openid, res:json().coupon_id, tostring(res.headers["Request-ID"])))
  else
    failures = failures + 1
    print(("%-28s openid %-32s FAILED: %s"):format(style[1], user.openid, tostring(err)))
  end
end

if server then server:stop() end
os.exit(failures == 0 and 0 or 1)
