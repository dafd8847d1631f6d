--- APIv2 answers: the XML of a response judged, and `res:xml()`.
--
-- A 2xx body is parsed (lua-expat); its `sign` is verified with the
-- APIv2 key and the request's sign_type, whatever sign_type the answer
-- says (mismatch: kind "verify").  A SUCCESS answer without `sign` is kind
-- "verify" too, except from the endpoints of answer.UNSIGNED, which WeChat
-- Pay answers unsigned (red packets, transfers, bank cards...); then
--   return_code ~= SUCCESS  -> kind "http", code = return_code, message = return_msg
--   result_code ~= SUCCESS  -> kind "http", code = err_code, message = err_code_des
-- Every error keeps the response (err.response, and err.xml the fields).
-- Nothing here raises on what arrives from the network.
local errors = require("wechatpay.errors")
local response = require("wechatpay.response")
local sign = require("wechatpay.v2.sign")
local xml = require("wechatpay.v2.xml")

local answer = {}

--- The endpoints whose SUCCESS answers WeChat Pay sends without `sign`:
-- path -> true.  A sign that is there is still checked; only its absence
-- is let pass.  wechatpay-php's list (its noneSignatureRespond), so a
-- merchant moving from it sees the same answers, and the bank-card paths.
answer.UNSIGNED = {
  -- 现金红包 and 小程序红包, and their query
  ["/mmpaymkttransfers/sendredpack"] = true,
  ["/mmpaymkttransfers/sendgroupredpack"] = true,
  ["/mmpaymkttransfers/sendminiprogramhb"] = true,
  ["/mmpaymkttransfers/gethbinfo"] = true,
  -- 企业付款到零钱, to 企业微信 members, to a bank card, and their queries
  ["/mmpaymkttransfers/promotion/transfers"] = true,
  ["/mmpaymkttransfers/gettransferinfo"] = true,
  ["/mmpaymkttransfers/promotion/paywwsptrans2pocket"] = true,
  ["/mmpaymkttransfers/promotion/querywwsptrans2pocket"] = true,
  ["/mmpaymkttransfers/pay_bank"] = true,
  ["/mmpaymkttransfers/query_bank"] = true,
  -- where the bank-card transfer and its query are served (wechatpay-php's
  -- list names them under mmpaymkttransfers only): a transfer that went
  -- through must never read as a forged answer, which invites a retry
  ["/mmpaysptrans/pay_bank"] = true,
  ["/mmpaysptrans/query_bank"] = true,
  ["/risk/getpublickey"] = true,   -- the RSA key of 付款到银行卡 (served by fraud.mch.weixin.qq.com)
  -- merchant risk and violation notices
  ["/mchrisk/querymchrisk"] = true,
  ["/mchrisk/setmchriskcallback"] = true,
  ["/mchrisk/syncmchriskresult"] = true,
  ["/risk/getviolation"] = true,
  -- 委托代扣 sign-up pages, the 交易保障 report, sub-merchant management
  ["/papay/entrustweb"] = true,
  ["/papay/h5entrustweb"] = true,
  ["/papay/partner/entrustweb"] = true,
  ["/papay/partner/h5entrustweb"] = true,
  ["/payitil/report"] = true,
  ["/secapi/mch/submchmanage"] = true,
  -- the sandbox's and the signing key's own endpoints, and the bills (whose
  -- errors come as unsigned XML; client.v2 refuses them before sending)
  ["/sandboxnew/pay/getsignkey"] = true,
  ["/xdc/apiv2getsignkey/sign/getsignkey"] = true,
  ["/pay/downloadbill"] = true,
  ["/pay/downloadfundflow"] = true,
  ["/sandboxnew/pay/downloadbill"] = true,
}

-- A v2 response is a v3 response plus xml(): the same fields and methods.
local FIELDS = {}   -- private key of the parsed fields on the response
local base_mt = getmetatable(response.new{ status = 200, headers = {}, body = "" })
local v2_mt = {}
for k, v in pairs(base_mt) do v2_mt[k] = v end
local methods = {}
for k, v in pairs(base_mt.__index) do methods[k] = v end
v2_mt.__index = methods

local function copy_of(fields)
  local copy = {}
  for k, v in pairs(fields) do copy[k] = type(v) == "table" and copy_of(v) or v end
  return copy
end

--- res:xml() -> the answer's fields, name -> string (a copy: change it
-- freely).  The few unsigned answers that nest elements (gethbinfo's
-- <hblist>) give those fields as tables, as xml.decode's `nested` says.
function methods.xml(self)
  return copy_of(self[FIELDS])
end

function v2_mt:__tostring()
  return ("wechatpay.response (APIv2, %d, %d bytes)"):format(self.status, #self.body)
end

local function fail(kind, message, res, fields, extra)
  local data = { status = res.status, response = res, xml = fields, request_id = res.headers["request-id"] }
  for k, v in pairs(extra or {}) do data[k] = v end
  return nil, errors.new(kind, message, data)
end

local function text(value, limit)
  return type(value) == "string" and value:sub(1, limit or 256) or nil
end

-- A 2xx answer that cannot be trusted says nothing of what WeChat Pay did:
-- a refund or a red packet may have gone out.
local MAY_HAVE_ACTED = "; the call may have taken effect: query it, or send it again with the same merchant number "
  .. "(out_trade_no, out_refund_no, mch_billno, partner_trade_no), never a new one"

--- check(apiv2_key, sign_type, raw, target) -> response | nil, err
function answer.check(apiv2_key, sign_type, raw, target)
  local res = response.new(raw)
  local where = target:match("^[^?]*")
  if res.status < 200 or res.status >= 300 then
    return fail("http", ("HTTP %d from %s"):format(res.status, where), res)
  end
  local unsigned = answer.UNSIGNED[where:gsub("/+$", "")]
  -- only answers that may come unsigned nest elements: no sign covers those
  local fields, why = xml.decode(res.body, nil, nil, unsigned)
  if not fields then
    return fail("verify", ("the answer of %s is not APIv2 XML: %s"):format(where, why) .. MAY_HAVE_ACTED, res)
  end
  -- the answer is signed as the request was: a sign_type in the answer is
  -- no more authenticated than the rest, so it cannot choose the check
  if fields.sign ~= nil then
    local signed = fields
    if unsigned then
      signed = {}
      for k, v in pairs(fields) do if type(v) == "string" then signed[k] = v end end
    end
    if not sign.verify(signed, apiv2_key, sign_type) then
      return fail("verify", ("the answer of %s has a sign that does not verify with the APIv2 key (%s): "
        .. "body altered, or another key"):format(where, sign_type) .. MAY_HAVE_ACTED, res, fields)
    end
  elseif fields.return_code == "SUCCESS" and not unsigned then
    return fail("verify", ("the answer of %s is SUCCESS without a sign: WeChat Pay signs it, so it was "
      .. "altered or is not from WeChat Pay"):format(where) .. MAY_HAVE_ACTED, res, fields)
  end
  if fields.return_code ~= "SUCCESS" then
    return fail("http", text(fields.return_msg) or ("return_code %s from %s"):format(
      text(fields.return_code, 32) or "missing", where), res, fields, { code = text(fields.return_code, 64) or "FAIL" })
  end
  if fields.result_code ~= nil and fields.result_code ~= "SUCCESS" then
    return fail("http", text(fields.err_code_des) or text(fields.err_code) or ("result_code %s from %s")
      :format(text(fields.result_code, 32), where), res, fields, { code = text(fields.err_code, 64) or "FAIL" })
  end
  res[FIELDS] = fields
  return setmetatable(res, v2_mt)
end

return answer
