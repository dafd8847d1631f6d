-- APIv2 mutual TLS over curl against the mock, which asks every handshake
-- for a client certificate (nginx ssl_verify_client optional) and refuses
-- its mTLS endpoints without the merchant's: a red packet and a refund.
local wechatpay = require("wechatpay")
local mock = require("wechatpay.mock")
local core = require("wechatpay.core")
local ossl = require("support.openssl")

local APPID = "wx2421b1c4370ec43b"
local OPENID = "oxTWIuGaIt6gTKsQRLau2M0yL16E"

describe("APIv2 mutual TLS (curl)", function()
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
  local function redpack(extra)
    counter = counter + 1
    local xml = { mch_billno = ("1900000001%s%04d"):format(os.date("%Y%m%d"), counter), wxappid = APPID,
      send_name = "天虹百货", re_openid = OPENID, total_amount = 100, total_num = 1, wishing = "感谢您参加猜灯谜活动",
      client_ip = "127.0.0.1", act_name = "猜灯谜抢红包活动", remark = "猜越多得越多，快来抢！" }
    for k, v in pairs(extra or {}) do xml[k] = v end
    return xml
  end

  it("sends a red packet with security = true; the unsigned answer passes", function()
    local xml = redpack()
    local res, err = client.v2.mmpaymkttransfers.sendredpack:post{ xml = xml, security = true }
    assert.is_truthy(res, tostring(err))
    local answer = res:xml()
    assert.equal("SUCCESS", answer.result_code)
    assert.equal(xml.mch_billno, answer.mch_billno)
    assert.is_nil(answer.sign)
    assert.equal(OPENID, server:v2_record("redpack", xml.mch_billno).re_openid)
    -- the same mch_billno is the same packet
    local again = assert(client.v2.mmpaymkttransfers.sendredpack:post{ xml = xml, security = true })
    assert.equal(answer.send_listid, again:xml().send_listid)
    assert.equal(1, server:v2_stats().redpacks)
  end)

  it("without the certificate the mock refuses it, on the same pooled connection's host", function()
    local _, missing = client.v2.pay.orderquery:post{ xml = { appid = APPID, out_trade_no = "none" } }
    assert.equal("ORDERNOTEXIST", missing.code)   -- a plain connection to the mock is open now
    local res, err = client.v2.mmpaymkttransfers.sendredpack:post{ xml = redpack(), security = false }
    assert.is_nil(res)
    assert.equal("http", err.kind)
    assert.matches("证书验证失败", err.message)
    -- then with it, after connections made without it: presented, not a reused plain connection
    res, err = client.v2.mmpaymkttransfers.sendredpack:post{ xml = redpack(), security = true }
    assert.is_truthy(res, tostring(err))
    -- and a plain call after it still works
    assert.is_truthy(client.v2.pay.micropay:post{ xml = { appid = APPID, body = "b", out_trade_no = "after-mtls",
      total_fee = 1, spbill_create_ip = "127.0.0.1", auth_code = "1" } })
    assert.equal(1, server:v2_stats().redpacks)
  end)

  it("presents the certificate by itself where WeChat Pay wants it, when the client has one", function()
    local paid = assert(client.v2.pay.micropay:post{ xml = { appid = APPID, body = "b", out_trade_no = "to-refund-2",
      total_fee = 10, spbill_create_ip = "127.0.0.1", auth_code = "1" } })
    local res, err = client.v2.secapi.pay.refund:post{ xml = { appid = APPID, out_trade_no = "to-refund-2",
      out_refund_no = "r-2", total_fee = 10, refund_fee = 10 } }
    assert.is_truthy(res, tostring(err))
    assert.equal(paid:xml().transaction_id, res:xml().transaction_id)
    res, err = client.v2.mmpaymkttransfers.sendredpack:post{ xml = redpack() }
    assert.is_truthy(res, tostring(err))
  end)

  it("refunds through secapi with the certificate, idempotent on out_refund_no", function()
    local paid = assert(client.v2.pay.micropay:post{ xml = { appid = APPID, body = "b", out_trade_no = "to-refund",
      total_fee = 10, spbill_create_ip = "127.0.0.1", auth_code = "1" } })
    local refund = { appid = APPID, out_trade_no = "to-refund", out_refund_no = "r-1", total_fee = 10, refund_fee = 10 }
    local _, err = client.v2.secapi.pay.refund:post{ xml = refund, security = false }
    assert.matches("证书验证失败", err.message)
    local res = assert(client.v2.secapi.pay.refund:post{ xml = refund, security = true })
    assert.equal(paid:xml().transaction_id, res:xml().transaction_id)
    local again = assert(client.v2.secapi.pay.refund:post{ xml = refund, security = true })
    assert.equal(res:xml().refund_id, again:xml().refund_id)
    assert.equal(1, server:v2_stats().refunds)
  end)

  it("a certificate the mock CA did not sign is refused by the mock", function()
    local ossl = require("support.openssl")
    local dir = ossl.tmpdir()
    local cert = dir .. "/self.pem"
    ossl.run("openssl req -x509 -key " .. ossl.quote(server.merchant_key_file) .. " -subj /CN=1900000001 -days 2 -out "
      .. ossl.quote(cert))
    local stranger = server:client{ timeout = 3, retry = false, merchant_cert = "file://" .. cert }
    local res, err = stranger.v2.mmpaymkttransfers.sendredpack:post{ xml = redpack(), security = true }
    assert.is_nil(res)
    assert.matches("证书验证失败", err.message)
    stranger:close()
  end)

  it("presents an encrypted PEM key (with passphrase) and a private.pkcs8:// DER key", function()
    local ossl = require("support.openssl")
    local dir = ossl.tmpdir()
    local encrypted = dir .. "/encrypted.pem"
    ossl.run("openssl pkcs8 -topk8 -v2 aes-256-cbc -passout pass:s3cret -in " .. ossl.quote(server.merchant_key_file)
      .. " -out " .. ossl.quote(encrypted))
    local der = ossl.run("openssl pkcs8 -topk8 -nocrypt -outform DER -in " .. ossl.quote(server.merchant_key_file)
      .. " | openssl base64 -A")
    for _, key in ipairs{ { "file://" .. encrypted, "s3cret" }, { "private.pkcs8://" .. der } } do
      local c = server:client{ timeout = 3, retry = false, private_key = key[1], passphrase = key[2] }
      local res, err = c.v2.mmpaymkttransfers.sendredpack:post{ xml = redpack(), security = true }
      assert.is_truthy(res, tostring(err))
      c:close()
    end
    assert.equal(2, server:v2_stats().redpacks)
  end)

  it("refuses a loaded key object beside merchant_cert: it cannot be handed to curl", function()
    local key = assert(wechatpay.key.private("file://" .. server.merchant_key_file))
    local ok, err = pcall(server.client, server, { private_key = key })
    assert.is_false(ok)
    assert.matches("merchant_cert needs private_key given as", err)
  end)

  it("security = true without merchant_cert raises before sending", function()
    local plain = server:client{ timeout = 3, merchant_cert = false }
    local before = server:v2_stats().v2_requests
    assert.has_error(function() plain.v2.mmpaymkttransfers.sendredpack:post{ xml = redpack(), security = true } end)
    assert.equal(before, server:v2_stats().v2_requests)
    plain:close()
  end)

  it("the session refuses client_cert when it holds none, and half a pair", function()
    local session = core.http_session{}
    assert.has_error(function() session:submit{ method = "GET", url = "https://127.0.0.1:1/", client_cert = true } end)
    assert.has_error(function() core.http_session{ client_cert = "x" } end)
    assert.has_error(function() core.http_session{ client_cert = "x", client_key = "y", client_key_type = "JKS" } end)
    session:close()
  end)

  it("the session takes an encrypted key only decrypted, as a key object: curl is never given the passphrase", function()
    local cert = ossl.read(server.merchant_cert_file)
    local pem = ossl.read(server.merchant_key_file)
    local ok, err = pcall(core.http_session, { client_cert = cert, client_key = pem, client_key_passphrase = "s3cret" })
    assert.is_false(ok)
    assert.matches("option 'client_key_passphrase' is not taken: give client_key as the decrypted key object "
      .. "(wechatpay.key.private(pem, passphrase))", err, 1, true)
    ok, err = pcall(core.http_session, { client_cert = cert, client_key = assert(core.key_from_pem(cert)) })
    assert.is_false(ok)
    assert.matches("option 'client_key' must be a private key", err, 1, true)
    -- the object's DER is what curl presents: the mock's nginx verifies it
    local xml = require("wechatpay.v2.xml")
    local fields = xml.fields(redpack{ mch_id = server.mchid, nonce_str = "n1" })
    fields.sign = require("wechatpay.v2.sign").sign(fields, server.apiv2_key)
    local function send(options, client_cert)
      local session = core.http_session(options)
      local id = session:submit{ method = "POST", url = server.base_url:gsub("/$", "") .. "/mmpaymkttransfers/sendredpack",
        client_cert = client_cert, body = xml.encode(fields), timeout = 5 }
      local result
      for _ = 1, 500 do
        for _, r in ipairs(session:perform(0.01)) do if r.id == id then result = r end end
        if result then break end
      end
      session:close()
      assert.is_nil(result.error, result.message)
      return result.body
    end
    local ca = ossl.read(server.cafile)
    assert.matches("证书验证失败", send({ ca_pem = ca }))   -- the check that the key must pass
    local body = send({ ca_pem = ca, client_cert = cert, client_key = assert(core.key_from_pem(pem)) }, true)
    assert.matches("<result_code><!%[CDATA%[SUCCESS%]%]>", body)
  end)
end)
