-- APIv2 callbacks, made by implementations that are not ours: payment
-- results written and signed by the Node SDK's v2 helpers, refund
-- notifications' req_info sealed by its AES-256-ECB with the key's MD5
-- taken by `openssl dgst`.
local wechatpay = require("wechatpay")
local merchant = require("support.merchant")
local node = require("support.v2_node")
local ossl = require("support.openssl")

local APIV2_KEY = "3a9cd17ef8bb4e0e8c2f7a614d5e90b1"

local function md5_hex_by_openssl(text)
  local path = os.tmpname()
  ossl.write(path, text)
  local out = ossl.run("openssl dgst -md5 -r " .. ossl.quote(path))
  os.remove(path)
  return out:match("^(%x+)")
end

-- the payment result of WeChat Pay's documentation ("支付结果通知"), for this merchant
local function payment_fields()
  return { appid = "wx2421b1c4370ec43b", attach = "支付测试", bank_type = "CFT", fee_type = "CNY", is_subscribe = "Y",
    mch_id = "1900000001", nonce_str = "5d2b6c2a8db53831f7eda20af46e531c", openid = "oUpF8uMEb4qRXf22hE3X68TekukE",
    out_trade_no = "1409811653", result_code = "SUCCESS", return_code = "SUCCESS", time_end = "20140903131540",
    total_fee = "1", coupon_fee = "10", coupon_count = "1", coupon_type = "CASH", coupon_id = "10000",
    trade_type = "JSAPI", transaction_id = "1004400740201409030005092168" }
end

local function signed_body(fields, sign_type)
  fields.sign = node.sign(sign_type or "MD5", fields, APIV2_KEY)
  return node.to_xml(fields)
end

describe("APIv2 notifications", function()
  local client = wechatpay.new(merchant.options{ apiv2_key = APIV2_KEY, transport = merchant.recording_transport() })

  it("a payment result signed in MD5 or HMAC-SHA256 (said or not) verifies", function()
    for _, case in ipairs{ { "MD5" }, { "HMAC-SHA256" }, { "HMAC-SHA256", true }, { "MD5", true } } do
      local fields = payment_fields()
      if case[2] then fields.sign_type = case[1] end
      local body = signed_body(fields, case[1])
      local notice, err = client:parse_v2_notification(body)
      assert.is_truthy(notice, case[1] .. ": " .. tostring(err))
      fields.type, fields.paid = "payment", true
      assert.same(fields, notice)
    end
  end)

  it("a signed payment result that failed is a notice with paid = false, not a paid one", function()
    local fields = payment_fields()
    fields.result_code, fields.err_code, fields.err_code_des = "FAIL", "SYSTEMERROR", "系统错误"
    local notice, err = client:parse_v2_notification(signed_body(fields))
    assert.is_truthy(notice, tostring(err))
    assert.equal("payment", notice.type)
    assert.is_false(notice.paid)
    fields = payment_fields()
    fields.return_code, fields.return_msg = "FAIL", "签名失败"
    notice, err = client:parse_v2_notification(signed_body(fields, "HMAC-SHA256"))
    assert.is_truthy(notice, tostring(err))
    assert.is_false(notice.paid)
    fields = payment_fields()
    fields.result_code = nil
    notice = client:parse_v2_notification(signed_body(fields))
    assert.is_false(notice.paid)
  end)

  it("refuses an altered field, a missing sign, another merchant, and what is not XML", function()
    local fields = payment_fields()
    local body = signed_body(fields)
    local altered = body:gsub("<total_fee>1</total_fee>", "<total_fee>100</total_fee>")
    assert.are_not.equal(body, altered)
    local notice, err = client:parse_v2_notification(altered)
    assert.is_nil(notice)
    assert.equal("verify", err.kind)
    fields = payment_fields()
    _, err = client:parse_v2_notification(node.to_xml(fields))
    assert.equal("verify", err.kind)
    assert.matches("unsigned", err.message)
    fields = payment_fields()
    fields.mch_id = "1230000109"
    _, err = client:parse_v2_notification(signed_body(fields))
    assert.equal("verify", err.kind)
    assert.matches("1230000109", err.message)
    for _, bad in ipairs{ "", "{}", '<!DOCTYPE xml [<!ENTITY a "b">]><xml><a>&a;</a></xml>', "<xml><a>1</a>" } do
      _, err = client:parse_v2_notification(bad)
      assert.equal("malformed", err.kind)
    end
    _, err = client:parse_v2_notification(nil)
    assert.equal("malformed", err.kind)
  end)

  it("never reads the signed answer of a call, or the pay parameters of a payer, as a payment", function()
    -- each signed with the APIv2 key by the Node SDK, as WeChat Pay signs them
    local common = { appid = "wx2421b1c4370ec43b", mch_id = "1900000001", nonce_str = "IITRi8Iabbblz1Jc",
      return_code = "SUCCESS", result_code = "SUCCESS" }
    local function with(extra)
      local fields = {}
      for k, v in pairs(common) do fields[k] = v end
      for k, v in pairs(extra) do fields[k] = v end
      return fields
    end
    -- an order query's answer for an unpaid order: a notice, never a paid one
    local notice, err = client:parse_v2_notification(signed_body(with{ out_trade_no = "1415757673", total_fee = "100",
      trade_state = "NOTPAY", trade_state_desc = "订单未支付", trade_type = "NATIVE",
      transaction_id = "", time_end = "" }))
    assert.is_truthy(notice, tostring(err))
    assert.is_false(notice.paid)
    local cases = {
      code_url = with{ prepay_id = "wx201410272009395522657a690389285100", trade_type = "NATIVE",
        code_url = "weixin://wxpay/bizpayurl?pr=Xyz" },                                 -- unifiedorder
      out_refund_no = with{ out_trade_no = "1415757673", out_refund_no = "R1", refund_id = "2008450740201411110000174436",
        refund_fee = "1", total_fee = "100", transaction_id = "1008450740201411110005820873" },   -- refund
    }
    for first, fields in pairs(cases) do
      notice, err = client:parse_v2_notification(signed_body(fields))
      assert.is_nil(notice, first)
      assert.equal("malformed", err.kind, first)
      assert.matches("with " .. first .. ", which no payment result has", err.message, 1, true)
    end
    -- the APP-pay parameters every payer receives, signed for the app
    local app = { appid = "wx2421b1c4370ec43b", partnerid = "1900000001", prepayid = "wx2014102720093955",
      package = "Sign=WXPay", noncestr = "5K8264ILTKCH16CQ", timestamp = "1412000000" }
    _, err = client:parse_v2_notification(signed_body(app))
    assert.equal("malformed", err.kind)
    -- a SUCCESS without what every payment holds paid nothing
    for _, name in ipairs{ "out_trade_no", "transaction_id", "total_fee", "time_end" } do
      local fields = payment_fields()
      fields[name] = nil
      notice, err = client:parse_v2_notification(signed_body(fields))
      assert.is_truthy(notice, tostring(err))
      assert.is_false(notice.paid, name)
    end
  end)

  it("reads the notices of 委托代扣: a deduction that succeeded is paid, a contract's signing is not", function()
    -- the deduction result (扣款结果通知) carries trade_state and contract_id
    local fields = payment_fields()
    fields.trade_state, fields.contract_id = "SUCCESS", "Wx15463511252015071056489715"
    local notice, err = client:parse_v2_notification(signed_body(fields))
    assert.is_truthy(notice, tostring(err))
    assert.is_true(notice.paid)
    fields = payment_fields()
    fields.trade_state = "PAYERROR"
    assert.is_false(client:parse_v2_notification(signed_body(fields)).paid)
    -- the signing notice (签约通知): SUCCESS, and no payment in it
    local contract = { appid = "wx2421b1c4370ec43b", mch_id = "1900000001", return_code = "SUCCESS",
      result_code = "SUCCESS", contract_code = "100001256", plan_id = "123", openid = "onqOjjmM1tad-3ROpncN-yUfa6ua",
      change_type = "ADD", operate_time = "2015-07-01 10:00:00", contract_id = "Wx15463511252015071056489715",
      request_serial = "123", nonce_str = "5K8264ILTKCH16CQ" }
    notice, err = client:parse_v2_notification(signed_body(contract))
    assert.is_truthy(notice, tostring(err))
    assert.is_false(notice.paid)
  end)

  it("reads the letters of a DOCTYPE in a field's text as text", function()
    local fields = payment_fields()
    fields.attach = "note <!DOCTYPE x> <!ENTITY y>"
    local notice, err = client:parse_v2_notification(signed_body(fields))
    assert.is_truthy(notice, tostring(err))
    assert.equal("note <!DOCTYPE x> <!ENTITY y>", notice.attach)
    -- a real one is refused, in UTF-16 too, where the ASCII letters are not found as such
    local doctype = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE xml [<!ENTITY a "b">]><xml><a>&a;</a></xml>'
    local utf16 = "\255\254" .. doctype:gsub(".", "%0\0")
    for _, body in ipairs{ doctype:gsub(' encoding="UTF%-16"', ""), utf16 } do
      local _, refused = client:parse_v2_notification(body)
      assert.equal("malformed", refused.kind)
      assert.matches("DOCTYPE", refused.message, 1, true)
    end
  end)

  describe("refunds", function()
    local plain = "<root><out_refund_no><![CDATA[131811191610442717309]]></out_refund_no>"
      .. "<out_trade_no><![CDATA[71106718111915575302817]]></out_trade_no>"
      .. "<refund_account><![CDATA[REFUND_SOURCE_RECHARGE_FUNDS]]></refund_account>"
      .. "<refund_fee><![CDATA[3960]]></refund_fee><refund_id><![CDATA[50000408942018111907145868882]]></refund_id>"
      .. "<refund_recv_accout><![CDATA[支付用户零钱]]></refund_recv_accout>"
      .. "<refund_request_source><![CDATA[API]]></refund_request_source>"
      .. "<refund_status><![CDATA[SUCCESS]]></refund_status><settlement_refund_fee><![CDATA[3960]]></settlement_refund_fee>"
      .. "<settlement_total_fee><![CDATA[3960]]></settlement_total_fee><success_time><![CDATA[2018-11-19 16:24:13]]></success_time>"
      .. "<total_fee><![CDATA[3960]]></total_fee><transaction_id><![CDATA[4200000215201811190261405420]]></transaction_id></root>"

    local function refund_body()
      local req_info = node.ecb_encrypt(md5_hex_by_openssl(APIV2_KEY), plain)
      return node.to_xml{ return_code = "SUCCESS", appid = "wx2421b1c4370ec43b", mch_id = "1900000001",
        nonce_str = "TeqClE3i0mvn3DrK", req_info = req_info }, req_info
    end

    it("decrypts req_info with the MD5 of the APIv2 key", function()
      local body = refund_body()
      local notice, err = client:parse_v2_notification(body)
      assert.is_truthy(notice, tostring(err))
      assert.equal("refund", notice.type)
      assert.is_nil(notice.paid)
      assert.equal("SUCCESS", notice.return_code)
      assert.equal("1900000001", notice.mch_id)
      assert.equal("TeqClE3i0mvn3DrK", notice.nonce_str)
      assert.equal("131811191610442717309", notice.req_info.out_refund_no)
      assert.equal("支付用户零钱", notice.req_info.refund_recv_accout)
      assert.equal("SUCCESS", notice.req_info.refund_status)
      assert.equal("3960", notice.req_info.refund_fee)
    end)

    it("refuses a replayed req_info dressed with unsigned payment-result fields", function()
      local _, req_info = refund_body()
      local forged = "<xml><return_code>SUCCESS</return_code><req_info>" .. req_info .. "</req_info>"
        .. "<result_code>SUCCESS</result_code><out_trade_no>FAKE</out_trade_no><total_fee>1</total_fee></xml>"
      local notice, err = client:parse_v2_notification(forged)
      assert.is_nil(notice)
      assert.equal("malformed", err.kind)
      assert.matches("out_trade_no", err.message)
      assert.matches("forged", err.message)
      assert.is_nil(tostring(err):find("71106718111915575302817", 1, true))
      -- each such field alone, a sign too, and a req_info field copied outside it
      for _, extra in ipairs{ "<sign>ABC</sign>", "<transaction_id>1</transaction_id>", "<coupon_fee_0>1</coupon_fee_0>",
          "<refund_status>SUCCESS</refund_status>" } do
        notice, err = client:parse_v2_notification("<xml><return_code>SUCCESS</return_code><mch_id>1900000001</mch_id>"
          .. "<req_info>" .. req_info .. "</req_info>" .. extra .. "</xml>")
        assert.is_nil(notice, extra)
        assert.equal("malformed", err.kind)
      end
      -- return_msg and a service provider's sub_* are a refund notification's own
      notice, err = client:parse_v2_notification("<xml><return_code>SUCCESS</return_code><return_msg>OK</return_msg>"
        .. "<sub_mch_id>1900000109</sub_mch_id><req_info>" .. req_info .. "</req_info></xml>")
      assert.is_truthy(notice, tostring(err))
      assert.same({ type = "refund", return_code = "SUCCESS", req_info = notice.req_info }, notice)
      assert.equal("131811191610442717309", notice.req_info.out_refund_no)
    end)

    it("another key is a decrypt error that quotes neither key nor plaintext", function()
      local other = wechatpay.new(merchant.options{ apiv2_key = ("Q"):rep(32), transport = merchant.recording_transport() })
      local notice, err = other:parse_v2_notification((refund_body()))
      assert.is_nil(notice)
      assert.equal("decrypt", err.kind)
      local text = tostring(err)
      assert.is_nil(text:find("131811191610442717309", 1, true))
      assert.is_nil(text:find(APIV2_KEY, 1, true))
      assert.is_nil(text:find(("Q"):rep(32), 1, true))
    end)

    it("a refund notification whose req_info is not base64 is a decrypt error", function()
      local _, err = client:parse_v2_notification(node.to_xml{ return_code = "SUCCESS", mch_id = "1900000001",
        req_info = "%%%not base64%%%" })
      assert.equal("decrypt", err.kind)
    end)
  end)

  it("answers in the XML WeChat Pay expects", function()
    local answer = wechatpay.v2.notification.answer
    assert.equal("<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>",
      answer())
    assert.equal("<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[busy]]></return_msg></xml>",
      answer(false, "busy"))
    assert.same({ return_code = "SUCCESS", return_msg = "OK" }, node.to_object(answer()))
    assert.equal("<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[已处理]]></return_msg></xml>",
      answer(true, "已处理"))
    -- both answers are checked alike: a message XML cannot carry, or a message given as ok
    assert.has_error(function() answer(true, "a\0b") end, "answer.return_msg holds a control character, which XML cannot carry")
    assert.has_error(function() answer(true, 5) end, "answer: message must be a string")
    assert.has_error(function() answer("busy") end,
      "answer: ok must be true or false, got a string (the message is the second argument)")
    -- a handler's truthy result answers SUCCESS, as it always did
    assert.equal(answer(), answer(1))
  end)

  it("raises without apiv2_key", function()
    local plain_client = wechatpay.new(merchant.options{ transport = merchant.recording_transport() })
    assert.has_error(function() plain_client:parse_v2_notification("<xml/>") end,
      "parse_v2_notification: the client was made without apiv2_key")
  end)
end)
