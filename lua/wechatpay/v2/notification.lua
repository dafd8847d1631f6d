--- APIv2 callbacks: payment results verified by their `sign`, refund
-- notifications' `req_info` decrypted (AES-256-ECB, key = the lower-hex
-- MD5 of the APIv2 key), and the XML answer WeChat Pay expects.
--
--   local notice, err = client:parse_v2_notification(raw_body)
--   -- notice.type == "payment": the signed fields (strings), and notice.paid,
--   --   true only when return_code and result_code are SUCCESS, trade_state (when
--   --   given) too, and out_trade_no, transaction_id, total_fee and time_end are there
--   -- notice.type == "refund": notice.req_info = { out_refund_no =, refund_id =, refund_status =, ... }
--   --   (decrypted, so authenticated) beside appid, mch_id, nonce_str and return_code;
--   --   no other outer field, since nothing signs them
--   ngx.say(v2notification.answer())            -- SUCCESS / OK
--   ngx.say(v2notification.answer(false, "..."))  -- FAIL: WeChat Pay delivers again
--
-- Errors (never raised, never quoting the key or the decrypted text):
--   "malformed"  not a flat <xml>, a refund notification without req_info, or
--                one that also carries a payment result's fields (sign,
--                result_code, out_trade_no, total_fee, ...): a forgery
--                dressing a replayed req_info as a payment; or a signed
--                message that is no notification (an order's or a refund's
--                answer, the APP-pay parameters)
--   "verify"     a payment result without a sign, or whose sign does not
--                verify, or addressed to another merchant
--   "decrypt"    a req_info that does not decrypt with this APIv2 key
local aes = require("wechatpay.aes")
local errors = require("wechatpay.errors")
local sign = require("wechatpay.v2.sign")
local xml = require("wechatpay.v2.xml")

local notification = {}

--- The most a callback body may hold.
notification.MAX_BYTES = 64 * 1024

local function fail(kind, message)
  return nil, errors.new(kind, message)
end

-- the fields of a payment result ("支付结果通知"), which a refund notification
-- (return_code, return_msg, appid, mch_id, nonce_str, req_info, and a
-- service provider's sub_appid/sub_mch_id) never carries: beside a replayed
-- req_info they can only be a forgery, as nothing signs them
local PAYMENT_FIELDS = {}
for name in ([[sign sign_type result_code err_code err_code_des openid is_subscribe trade_type bank_type
    total_fee settlement_total_fee fee_type cash_fee cash_fee_type coupon_fee coupon_count transaction_id
    out_trade_no attach time_end device_info]]):gmatch("%S+") do
  PAYMENT_FIELDS[name] = true
end

-- Every APIv2 answer is signed with the same key as a payment result: an
-- order's (prepay_id, code_url), a refund's, the APP-pay parameters handed
-- to every payer.  Posted to notify_url they verify too; these fields,
-- which no notification has, tell them apart.  (trade_state is no such
-- field: a deduction result of 委托代扣 carries it; an order query's answer
-- that does, NOTPAY, is not paid below.)
local ANSWER_FIELDS = {}
for name in ([[prepay_id code_url mweb_url partnerid prepayid package noncestr timestamp recall mch_billno
    send_listid partner_trade_no payment_no hblist]]):gmatch("%S+") do
  ANSWER_FIELDS[name] = true
end
local function answer_field(fields)
  local names = {}
  for name in pairs(fields) do
    if ANSWER_FIELDS[name] or name:find("refund") then names[#names + 1] = name end
  end
  table.sort(names)
  return names[1]
end
-- what a payment result always holds: without them nothing was paid (a
-- contract's signing notice of 委托代扣 says SUCCESS and has none)
local PAID_FIELDS = { "out_trade_no", "transaction_id", "total_fee", "time_end" }

local function is_paid(fields)
  if fields.return_code ~= "SUCCESS" or fields.result_code ~= "SUCCESS" then return false end
  if fields.trade_state ~= nil and fields.trade_state ~= "SUCCESS" then return false end
  for _, name in ipairs(PAID_FIELDS) do
    if (fields[name] or "") == "" then return false end
  end
  return true
end

local function refused(fields, info)
  local extra = {}
  for k in pairs(fields) do
    if PAYMENT_FIELDS[k] or k:find("^coupon_") or (info and info[k] ~= nil) then extra[#extra + 1] = k end
  end
  if #extra == 0 then return nil end
  table.sort(extra)
  return fail("malformed", "a refund notification (req_info) that also carries " .. table.concat(extra, ", ", 1,
    math.min(#extra, 8)) .. " outside it: unsigned fields no refund notification has; refused as forged")
end

local function refund(apiv2_key, fields)
  if fields.return_code ~= "SUCCESS" then
    return fail("malformed", "refund notification with return_code " .. tostring(fields.return_code):sub(1, 32))
  end
  local _, forged = refused(fields)
  if forged then return nil, forged end
  local plain, why = aes.decrypt_refund_notification(apiv2_key, fields.req_info)
  if not plain then
    return fail("decrypt", "req_info does not decrypt with the APIv2 key (" .. tostring(why) .. "): check apiv2_key")
  end
  local info, err = xml.decode(plain, notification.MAX_BYTES, "root")
  if not info then
    return fail("decrypt", "req_info decrypted to something that is not a flat <root> (" .. err .. "): check apiv2_key")
  end
  _, forged = refused(fields, info)
  if forged then return nil, forged end
  return { type = "refund", appid = fields.appid, mch_id = fields.mch_id, nonce_str = fields.nonce_str,
    return_code = fields.return_code, req_info = info }
end

--- parse(apiv2_key, mchid, body) -> notice | nil, err
function notification.parse(apiv2_key, mchid, body)
  if type(body) ~= "string" then return fail("malformed", "the body must be the raw bytes received, got " .. type(body)) end
  local fields, why = xml.decode(body, notification.MAX_BYTES)
  if not fields then return fail("malformed", "not an APIv2 notification: " .. why) end
  if fields.mch_id ~= nil and fields.mch_id ~= mchid then
    return fail("verify", ("notification for merchant %s, not this client's %s"):format(fields.mch_id:sub(1, 32), mchid))
  end
  if fields.req_info ~= nil then return refund(apiv2_key, fields) end
  if type(fields.sign) ~= "string" then
    return fail("verify", "unsigned notification: a payment result carries a sign")
  end
  -- the sign type is the order's; the notification may not say it, but an
  -- MD5 sign has 32 hex digits and an HMAC-SHA256 one 64
  local sign_type = fields.sign_type
  if not sign.is_type(sign_type) then sign_type = #fields.sign == 64 and sign.HMAC_SHA256 or sign.MD5 end
  if not sign.verify(fields, apiv2_key, sign_type) then
    return fail("verify", ("the notification's sign does not verify with the APIv2 key (%s): altered, "
      .. "or not from WeChat Pay"):format(sign_type))
  end
  local foreign = answer_field(fields)
  if foreign then
    return fail("malformed", ("a signed APIv2 message with %s, which no payment result has: the answer to a call "
      .. "(or the pay parameters given to a payer) posted as a notification; refused"):format(foreign:sub(1, 40)))
  end
  -- a genuine, signed notice of a payment that failed is still answered
  -- SUCCESS (else WeChat Pay delivers it again), so it is not an error
  fields.type = "payment"
  fields.paid = is_paid(fields)
  return fields
end

--- answer([ok [, message]]) -> the XML body to answer a notification with:
-- SUCCESS when ok is true or nil, FAIL (WeChat Pay delivers again) when false.
function notification.answer(ok, message)
  -- a string there is a message in the wrong place (answer("busy") meant FAIL)
  if type(ok) == "string" then
    errors.raise("answer: ok must be true or false, got a string (the message is the second argument)")
  end
  if message ~= nil and type(message) ~= "string" then errors.raise("answer: message must be a string") end
  local handled = ok == nil or not not ok
  return xml.encode(xml.fields({ return_code = handled and "SUCCESS" or "FAIL",
    return_msg = message or (handled and "OK" or "FAIL") }, "answer"))
end

return notification
