-- APIv2 through the same chain, against the mock WeChat Pay over real
-- HTTPS: every call style, what is sent (checked with the Node SDK's v2
-- helpers), both sign types, each answer kind and fault, retries by
-- merchant number, and the programmer errors raised before sending.
local wechatpay = require("wechatpay")
local mock = require("wechatpay.mock")
local merchant = require("support.merchant")
local node = require("support.v2_node")

local APPID = "wx2421b1c4370ec43b"

describe("APIv2 client against the mock", function()
  local server, client

  setup(function()
    server = assert(mock.start{ rate_limit = false })
    client = server:client{ timeout = 3, retry = false }
  end)

  teardown(function()
    if client then client:close() end
    if server then server:stop() end
  end)

  before_each(function() server:reset() end)

  local counter = 0
  local function micropay_xml(extra)
    counter = counter + 1
    local xml = { appid = APPID, body = "image形象店-深圳腾大- QQ公仔", out_trade_no = ("v2spec%d%d"):format(os.time(), counter),
      total_fee = 1, spbill_create_ip = "127.0.0.1", auth_code = "120061098828009406" }
    for k, v in pairs(extra or {}) do xml[k] = v end
    return xml
  end

  it("pays in each call style, each answer's sign verified, the URL without v2", function()
    local calls = {
      function(xml) return client.v2.pay.micropay:post{ xml = xml } end,
      function(xml) return client:chain("v2/pay/micropay"):post{ xml = xml } end,
      function(xml) return client["v2/pay/micropay"]:post{ xml = xml } end,
      function(xml) return client.v2.pay.micropay:postAsync{ xml = xml }:wait() end,
      function(xml) return client:request("POST", "v2/pay/micropay", { xml = xml }) end,
    }
    for i, call in ipairs(calls) do
      local xml = micropay_xml()
      local res, err = call(xml)
      assert.is_truthy(res, "style " .. i .. ": " .. tostring(err))
      assert.equal(200, res.status)
      local answer = res:xml()
      assert.equal("SUCCESS", answer.return_code)
      assert.equal("SUCCESS", answer.result_code)
      assert.equal(xml.out_trade_no, answer.out_trade_no)
      assert.equal("1", answer.total_fee)
      assert.is_string(answer.sign)
      local order = assert(server:v2_record("order", xml.out_trade_no))
      assert.equal(answer.transaction_id, order.transaction_id)
      assert.matches("<xml>", res.body)
      assert.is_string(res.headers["request-id"])
    end
    assert.equal(#calls, server:v2_stats().v2_payments)
  end)

  it("HMAC-SHA256: the mock checks it, the answer is verified with it", function()
    local xml = micropay_xml{ sign_type = "HMAC-SHA256" }
    local res = assert(client.v2.pay.micropay:post{ xml = xml })
    local query = assert(client.v2.pay.orderquery:post{ xml = { appid = APPID, out_trade_no = xml.out_trade_no,
      sign_type = "HMAC-SHA256" } })
    assert.equal("SUCCESS", query:xml().trade_state)
    assert.equal(res:xml().transaction_id, query:xml().transaction_id)
    -- and the answer's sign is HMAC-SHA256 by the Node SDK's reckoning
    local fields = query:xml()
    assert.equal(node.sign("HMAC-SHA256", fields, server.apiv2_key), fields.sign)
  end)

  it("a value with carriage returns reaches WeChat Pay's XML parser as signed", function()
    -- an XML parser reads CR LF and a lone CR as LF, in CDATA too: in CDATA
    -- the mock (expat, as WeChat Pay's parser) would check the sign over other text
    local body = "line one\r\nline two\rline <three> & ]]> four\n"
    local xml = micropay_xml{ body = body }
    local res = assert(client.v2.pay.micropay:post{ xml = xml })
    assert.equal("SUCCESS", res:xml().result_code)
    assert.equal(body, assert(server:v2_record("order", xml.out_trade_no)).body)
  end)

  it("unifiedorder gives a prepay_id and a code_url for NATIVE", function()
    local xml = micropay_xml{ trade_type = "NATIVE", notify_url = "https://example.com/notify", auth_code = nil }
    local answer = assert(client.v2.pay.unifiedorder:post{ xml = xml }):xml()
    assert.matches("^wx%d+$", answer.prepay_id)
    assert.matches("^weixin://", answer.code_url)
  end)

  describe("answers that are errors", function()
    it("a bad request sign: return_code FAIL as an http error with return_msg", function()
      server:fault("v2_bad_sign")
      local res, err = client.v2.pay.micropay:post{ xml = micropay_xml() }
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.equal("FAIL", err.code)
      assert.equal("签名错误", err.message)
      assert.equal(200, err.status)
      assert.equal("FAIL", err.xml.return_code)
      assert.equal(200, err.response.status)
      assert.equal(0, server:v2_stats().v2_payments)
    end)

    it("a key the mock does not know is refused by its check, not ours", function()
      local other = server:client{ timeout = 3, retry = false, apiv2_key = ("Z"):rep(32) }
      local res, err = other.v2.pay.micropay:post{ xml = micropay_xml() }
      assert.is_nil(res)
      assert.equal("签名错误", err.message)
      assert.is_nil(tostring(err):find(("Z"):rep(32), 1, true))
      other:close()
    end)

    it("return_code FAIL and result_code FAIL carry WeChat Pay's words", function()
      server:fault("v2_return_fail", { message = "系统繁忙" })
      local _, err = client.v2.pay.micropay:post{ xml = micropay_xml() }
      assert.equal("http", err.kind)
      assert.equal("FAIL", err.code)
      assert.equal("系统繁忙", err.message)
      server:fault("v2_result_fail", { code = "USERPAYING", message = "需要用户输入支付密码" })
      _, err = client.v2.pay.micropay:post{ xml = micropay_xml() }
      assert.equal("http", err.kind)
      assert.equal("USERPAYING", err.code)
      assert.equal("需要用户输入支付密码", err.message)
      assert.matches("wechatpay http error 200 USERPAYING", tostring(err))
      _, err = client.v2.pay.orderquery:post{ xml = { appid = APPID, out_trade_no = "no-such-order" } }
      assert.equal("ORDERNOTEXIST", err.code)
    end)

    it("a tampered answer sign is a verify error that keeps the response", function()
      server:fault("v2_tamper_sign")
      local xml = micropay_xml()
      local res, err = client.v2.pay.micropay:post{ xml = xml }
      assert.is_nil(res)
      assert.equal("verify", err.kind)
      assert.matches("does not verify", err.message)
      assert.equal(200, err.response.status)
      -- the payment happened: the error keeps the answer, and says what to do
      assert.is_truthy(server:v2_record("order", xml.out_trade_no))
      assert.matches("may have taken effect: query it, or send it again with the same merchant number", err.message, 1, true)
    end)

    it("a SUCCESS answer without its sign is a verify error off the unsigned endpoints", function()
      server:fault("v2_unsigned", { path = "^/pay/micropay" })
      local res, err = client.v2.pay.micropay:post{ xml = micropay_xml() }
      assert.is_nil(res)
      assert.equal("verify", err.kind)
      assert.matches("SUCCESS without a sign", err.message)
      assert.equal(200, err.response.status)
      assert.is_nil(err.xml.sign)
    end)

    it("the answer's sign is checked with the request's sign_type, not the one the answer says", function()
      server:fault("v2_answer_sign_type", { sign_type = "HMAC-SHA256", path = "^/pay/micropay" })
      local res, err = client.v2.pay.micropay:post{ xml = micropay_xml() }   -- MD5
      assert.is_nil(res)
      assert.equal("verify", err.kind)
      assert.matches("(MD5)", err.message, 1, true)
      assert.equal("HMAC-SHA256", err.xml.sign_type)
      -- said and used alike, it passes
      server:fault("v2_answer_sign_type", { sign_type = "HMAC-SHA256", path = "^/pay/micropay" })
      res, err = client.v2.pay.micropay:post{ xml = micropay_xml{ sign_type = "HMAC-SHA256" } }
      assert.is_truthy(res, tostring(err))
    end)

    it("a gateway 5xx is an http error with the status", function()
      server:fault("status", { status = 503, path = "^/pay/" })
      local _, err = client.v2.pay.micropay:post{ xml = micropay_xml() }
      assert.equal("http", err.kind)
      assert.equal(503, err.status)
    end)
  end)

  describe("retries by merchant number", function()
    it("a 500 is retried for a request with out_trade_no, once paid", function()
      local retrying = server:client{ timeout = 3, retry = { idempotent = true, backoff = 0.01, attempts = 3 } }
      server:fault("status_after_grant", { status = 500, path = "^/pay/micropay" })
      server:fault("status", { status = 500, path = "^/pay/micropay" })
      local xml = micropay_xml()
      local res, err = retrying.v2.pay.micropay:post{ xml = xml }
      assert.is_truthy(res, tostring(err))
      assert.equal(1, server:v2_stats().v2_payments)
      assert.equal(3, server:v2_stats().v2_requests)
      assert.equal(xml.out_trade_no, res:xml().out_trade_no)
      retrying:close()
    end)

    it("but not without one", function()
      local retrying = server:client{ timeout = 3, retry = { idempotent = true, backoff = 0.01, attempts = 3 } }
      server:fault("status", { status = 500, path = "^/pay/orderquery" })
      local _, err = retrying.v2.pay.orderquery:post{ xml = { appid = APPID, transaction_id = "4200000000" } }
      assert.equal(500, err.status)
      assert.equal(1, err.attempts)
      retrying:close()
    end)
  end)
end)

describe("APIv2 requests as sent", function()
  local apiv2_key = "abcdefghij0123456789ABCDEFGHIJKL"
  local function recording(reply)
    local transport = merchant.recording_transport(reply)
    return wechatpay.new(merchant.options{ apiv2_key = apiv2_key, transport = transport, retry = false }), transport
  end

  it("a signed XML body, mch_id and nonce_str filled, no Authorization", function()
    local client, transport = recording()
    client.v2.pay.micropay:post{ xml = { appid = APPID, body = "a]]>b", total_fee = 1, out_trade_no = "x1" } }
    local sent = transport.requests[1]
    assert.equal("POST", sent.method)
    assert.matches("/pay/micropay$", sent.url)
    assert.is_nil(sent.url:find("/v2/", 1, true))
    for _, line in ipairs(sent.headers) do assert.is_nil(line:lower():find("^authorization:")) end
    local fields = node.to_object(sent.body)
    assert.equal("1900000001", fields.mch_id)
    assert.matches("^%w+$", fields.nonce_str)
    assert.equal("a]]>b", fields.body)
    assert.equal("1", fields.total_fee)
    assert.equal(node.sign("MD5", fields, apiv2_key), fields.sign)
  end)

  it("never overrides a given mch_id or nonce_str, nor adds mch_id beside mchid", function()
    local client, transport = recording()
    client.v2.pay.micropay:post{ xml = { mch_id = "1230000109", nonce_str = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
      sign_type = "HMAC-SHA256" } }
    local fields = node.to_object(transport.requests[1].body)
    assert.equal("1230000109", fields.mch_id)
    assert.equal("5K8264ILTKCH16CQ2502SI8ZNMTM67VS", fields.nonce_str)
    assert.equal(node.sign("HMAC-SHA256", fields, apiv2_key), fields.sign)
    client.v2.mmpaymkttransfers.promotion.transfers:post{ xml = { mchid = "1230000109" } }
    fields = node.to_object(transport.requests[2].body)
    assert.is_nil(fields.mch_id)
  end)

  it("fills mchid, not mch_id, for the endpoints that name the merchant so", function()
    local client, transport = recording(function()
      return { status = 200, headers = {}, body = "<xml><return_code>SUCCESS</return_code></xml>" }
    end)
    client.v2.mmpaymkttransfers.promotion.transfers:post{ xml = { mch_appid = APPID, partner_trade_no = "t1" } }
    local fields = node.to_object(transport.requests[1].body)
    assert.equal("1900000001", fields.mchid)
    assert.is_nil(fields.mch_id)
    assert.equal(node.sign("MD5", fields, apiv2_key), fields.sign)
    -- and mch_id for the others, the red packet's query among them
    client.v2.mmpaymkttransfers.gettransferinfo:post{ xml = { appid = APPID, partner_trade_no = "t1" } }
    fields = node.to_object(transport.requests[2].body)
    assert.equal("1900000001", fields.mch_id)
    assert.is_nil(fields.mchid)
  end)

  it("an unsigned SUCCESS answer passes only from an endpoint WeChat Pay answers unsigned; a non-XML 2xx "
    .. "is a verify error", function()
    local unsigned = "<xml><return_code>SUCCESS</return_code><result_code>SUCCESS</result_code></xml>"
    local answers = {
      { status = 200, headers = {}, body = unsigned },
      { status = 200, headers = {}, body = unsigned },
      { status = 200, headers = {}, body = unsigned },
      { status = 200, headers = {}, body = unsigned },
      { status = 200, headers = {}, body = unsigned },
      { status = 200, headers = {}, body = unsigned },
      { status = 200, headers = {}, body = unsigned },
      { status = 200, headers = {}, body = "<xml><return_code>FAIL</return_code><return_msg>签名错误</return_msg></xml>" },
      { status = 200, headers = {}, body = '{"code":"SUCCESS"}' },
    }
    local client = recording(function() return table.remove(answers, 1) end)
    local _, err = client.v2.pay.orderquery:post{ xml = { out_trade_no = "x" } }
    assert.equal("verify", err.kind)
    assert.matches("without a sign", err.message)
    local res = assert(client.v2.mmpaymkttransfers.promotion.transfers:post{ xml = { partner_trade_no = "x" } })
    assert.equal("SUCCESS", res:xml().result_code)
    assert(client.v2.mmpaymkttransfers.gethbinfo:post{ xml = { mch_billno = "x" } })
    -- a transfer to a bank card that went through must not read as a failure
    assert(client.v2.mmpaymkttransfers.pay_bank:post{ xml = { partner_trade_no = "x" } })
    assert(client["v2/mmpaymkttransfers/query_bank/"]:post{ xml = { partner_trade_no = "x" } })
    assert(client.v2.mmpaysptrans.pay_bank:post{ xml = { partner_trade_no = "x" } })
    assert(client.v2.mmpaysptrans.query_bank:post{ xml = { partner_trade_no = "x" } })
    -- a FAIL answer comes unsigned from every endpoint: its words are kept
    _, err = client.v2.pay.orderquery:post{ xml = { out_trade_no = "x" } }
    assert.equal("http", err.kind)
    assert.equal("签名错误", err.message)
    _, err = client.v2.pay.orderquery:post{ xml = { out_trade_no = "x" } }
    assert.equal("verify", err.kind)
    assert.matches("not APIv2 XML", err.message)
  end)

  it("reads the red packet query's nested <hblist>, which only unsigned answers may have", function()
    -- as WeChat Pay documents gethbinfo's answer for a group red packet
    local body = "<xml><return_code><![CDATA[SUCCESS]]></return_code><result_code><![CDATA[SUCCESS]]></result_code>"
      .. "<mch_billno><![CDATA[9010080799701411170000046603]]></mch_billno><status><![CDATA[RECEIVED]]></status>"
      .. "<total_num>2</total_num><hblist>\n"
      .. "<hbinfo><openid><![CDATA[oTkdqt1]]></openid><amount>100</amount>"
      .. "<rcv_time><![CDATA[2015-04-21 20:00:00]]></rcv_time></hbinfo>\n"
      .. "<hbinfo><openid><![CDATA[oTkdqt2]]></openid><amount>200</amount>"
      .. "<rcv_time><![CDATA[2015-04-21 20:01:00]]></rcv_time></hbinfo>\n"
      .. "</hblist></xml>"
    local answers = { body, body:gsub("<hbinfo>.-</hbinfo>\n", "", 1), body }
    local client = recording(function() return { status = 200, headers = {}, body = table.remove(answers, 1) } end)
    local res = assert(client.v2.mmpaymkttransfers.gethbinfo:post{ xml = { mch_billno = "x", bill_type = "MCHT" } })
    local fields = res:xml()
    assert.equal("RECEIVED", fields.status)
    assert.equal(2, #fields.hblist.hbinfo)
    assert.same({ openid = "oTkdqt2", amount = "200", rcv_time = "2015-04-21 20:01:00" }, fields.hblist.hbinfo[2])
    fields.hblist.hbinfo[1].amount = "0"   -- a copy
    assert.equal("100", res:xml().hblist.hbinfo[1].amount)
    -- one received packet is still a list of one
    fields = assert(client.v2.mmpaymkttransfers.gethbinfo:post{ xml = { mch_billno = "x" } }):xml()
    assert.equal(1, #fields.hblist.hbinfo)
    assert.equal("oTkdqt2", fields.hblist.hbinfo[1].openid)
    -- an endpoint that signs its answers has a flat <xml>
    local _, err = client.v2.pay.orderquery:post{ xml = { out_trade_no = "x" } }
    assert.equal("verify", err.kind)
    assert.matches("<hbinfo> is nested", err.message, 1, true)
  end)

  it("raises on programmer errors before sending anything", function()
    local client, transport = recording()
    local cases = {
      { function() client.v2.pay.micropay:post{} end, "give the request fields as xml" },
      { function() client.v2.pay.micropay:post{ xml = { total_fee = 1.5 } } end, "must be an integer" },
      { function() client.v2.pay.micropay:post{ xml = { sign = "X" } } end, "computed by the client" },
      { function() client.v2.pay.micropay:post{ xml = { sign_type = "SHA1" } } end, "sign_type must be" },
      { function() client.v2.pay.micropay:post{ xml = {}, json = {} } end, "unknown request option 'json'" },
      -- a GET would count as safe to send again, to another host too
      { function() client.v2.secapi.pay.refund:get{ xml = { out_refund_no = "R1" } } end,
        "v2/secapi/pay/refund: APIv2 calls are POST (:post{ xml = ... }), not GET" },
      { function() client.v2.pay.micropay:post{ xml = { attach = "a\239\191\191" } } end, "holds U+FFFE or U+FFFF" },
      { function() client.v2.mmpaymkttransfers.sendredpack:post{ xml = {}, security = true } end,
        "security = true presents the merchant certificate" },
      { function() client.v2.pay.micropay:post{ xml = {}, headers = { Authorization = "x" } } end, "set by the client" },
      { function() client.v2.pay.downloadbill:post{ xml = { bill_date = "20261126", bill_type = "ALL" } } end,
        "not supported yet" },
      { function() client:chain("v2/pay/downloadfundflow"):post{ xml = { bill_date = "20261126" } } end,
        "not supported yet" },
      { function() client:chain("v2/sandboxnew/pay/downloadbill/"):post{ xml = { bill_date = "20261126" } } end,
        "not supported yet" },
    }
    for _, case in ipairs(cases) do
      local ok, err = pcall(case[1])
      assert.is_false(ok)
      assert.matches(case[2], err, 1, true)
      assert.is_nil(err:find(apiv2_key, 1, true))
    end
    assert.equal(0, #transport.requests)
    local without = wechatpay.new(merchant.options{ transport = merchant.recording_transport() })
    local ok, err = pcall(function() without.v2.pay.micropay:post{ xml = {} } end)
    assert.is_false(ok)
    assert.matches("need apiv2_key", err)
  end)
end)
