-- APIv2 signing and XML against references that are not ours: WeChat Pay's
-- documented example (checked by the openssl command line too), the Node
-- SDK's v2 helpers (wechatpay-axios-plugin from npm) and `openssl dgst`.
local sign = require("wechatpay.v2.sign")
local xml = require("wechatpay.v2.xml")
local ossl = require("support.openssl")
local node = require("support.v2_node")

-- random printable field values, some with what XML and the sort must get right
local function random_fields(seed)
  math.randomseed(seed)
  local fields = {}
  local names = { "appid", "mch_id", "nonce_str", "body", "Out_Trade_No", "_x", "a1", "A", "total_fee", "attach" }
  for _, name in ipairs(names) do
    local chars = {}
    for i = 1, math.random(0, 12) do chars[i] = string.char(math.random(33, 126)) end
    fields[name] = table.concat(chars)
  end
  fields.body = "腾讯充值中心-QQ会员充值 " .. fields.body
  fields.attach = "a]]>b<c>&d\"e'"
  fields.sign = "IGNORED"
  fields.empty = ""
  return fields
end

local function openssl_hex(text, hmac_key)
  local path = os.tmpname()
  ossl.write(path, text)
  local cmd = hmac_key and ("openssl dgst -sha256 -hmac " .. ossl.quote(hmac_key)) or "openssl dgst -md5"
  local out = ossl.run(cmd .. " -r " .. ossl.quote(path))
  os.remove(path)
  return out:match("^(%x+)"):upper()
end

describe("v2 sign", function()
  -- the example of WeChat Pay's APIv2 documentation, "安全规范 / 签名算法"
  local documented = { appid = "wxd930ea5d5a258f4f", mch_id = "10000100", device_info = "1000", body = "test",
    nonce_str = "ibuaiVcKdpRxkhJA" }
  local documented_key = "192006250b4c09247ec02edce69f6a2d"

  it("gives the documented MD5 and HMAC-SHA256 answers", function()
    assert.equal("appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100&nonce_str=ibuaiVcKdpRxkhJA",
      sign.string_to_sign(documented))
    assert.equal("9A0A8659F005D6984697E2CA0A9CF3B7", sign.sign(documented, documented_key))
    assert.equal("9A0A8659F005D6984697E2CA0A9CF3B7", sign.sign(documented, documented_key, "MD5"))
    assert.equal("6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6",
      sign.sign(documented, documented_key, "HMAC-SHA256"))
    local text = sign.string_to_sign(documented) .. "&key=" .. documented_key
    assert.equal(openssl_hex(text), sign.sign(documented, documented_key))
    assert.equal(openssl_hex(text, documented_key), sign.sign(documented, documented_key, "HMAC-SHA256"))
  end)

  it("agrees with the Node SDK and openssl on random fields, both algorithms", function()
    local apiv2_key = "0123456789abcdefABCDEF0123456789"
    for seed = 1, 4 do
      local fields = random_fields(seed)
      local text = sign.string_to_sign(fields) .. "&key=" .. apiv2_key
      for _, t in ipairs{ "MD5", "HMAC-SHA256" } do
        local ours = sign.sign(fields, apiv2_key, t)
        assert.equal(node.sign(t, fields, apiv2_key), ours, t .. " seed " .. seed)
        assert.equal(openssl_hex(text, t == "HMAC-SHA256" and apiv2_key or nil), ours)
      end
    end
  end)

  it("sorts in byte order and leaves out sign and empty values", function()
    assert.equal("A=1&_=2&a=3", sign.string_to_sign{ a = "3", _ = "2", A = "1", sign = "x", z = "" })
  end)

  it("verifies a sign in either case, and refuses a changed field", function()
    local fields = { appid = "wx1", nonce_str = "n" }
    fields.sign = sign.sign(fields, "k")
    assert.is_true(sign.verify(fields, "k"))
    fields.sign = fields.sign:lower()
    assert.is_true(sign.verify(fields, "k"))
    fields.appid = "wx2"
    assert.is_false(sign.verify(fields, "k"))
    assert.is_false(sign.verify({ appid = "wx1" }, "k"))
  end)

  it("raises on a sign_type it does not know or a non-string value", function()
    assert.has_error(function() sign.sign({ a = "1" }, "k", "SHA1") end,
      'v2 sign: sign_type must be "MD5" or "HMAC-SHA256", got "SHA1"')
    assert.has_error(function() sign.sign({ a = 1 }, "k") end, "v2 sign: field 'a' must be a string, got number")
  end)
end)

describe("v2 xml", function()
  it("writes what the Node SDK reads back, ]]> and markup included", function()
    local fields = xml.fields(random_fields(7))
    fields.sign = nil
    fields.empty = nil   -- the Node SDK reads an empty element as ""
    local back = node.to_object(xml.encode(fields))
    assert.same(fields, back)
  end)

  it("reads what the Node SDK writes", function()
    local fields = xml.fields(random_fields(9))
    fields.empty = nil
    -- the SDK puts a value in one CDATA section without splitting a "]]>"
    -- (its XML would be broken): everything else it may write is kept
    fields.attach = "b<c>&d\"e'"
    assert.same(fields, assert(xml.decode(node.to_xml(fields))))
  end)

  it("writes integers exactly and refuses other numbers and types", function()
    assert.same({ total_fee = "1", big = "9007199254740991", neg = "-5" },
      xml.fields{ total_fee = 1, big = 9007199254740991, neg = -5 })
    assert.equal("<xml><total_fee><![CDATA[1]]></total_fee></xml>", xml.encode(xml.fields{ total_fee = 1 }))
    assert.has_error(function() xml.fields{ total_fee = 1.5 } end)
    assert.has_error(function() xml.fields{ total_fee = 0 / 0 } end)
    assert.has_error(function() xml.fields{ ok = true } end, "xml.ok must be a string or an integer, got boolean")
    assert.has_error(function() xml.fields{ ["a b"] = "x" } end,
      'xml: field name "a b" must be letters, digits and _ only')
    assert.has_error(function() xml.fields{ ["a<b"] = "x" } end)
    assert.has_error(function() xml.fields{ a = "x\0y" } end, "xml.a holds a control character, which XML cannot carry")
    for _, bad in ipairs{ "\255", "\192\128", "\237\160\128", "\228\184", "\244\144\128\128" } do
      assert.has_error(function() xml.fields{ a = bad } end, "xml.a is not UTF-8 text: WeChat Pay's XML is UTF-8")
    end
    assert.same({ a = "中文 é 😀" }, xml.fields{ a = "中文 é 😀" })
  end)

  it("decodes nested elements only when asked: a record is always a list, text and elements never mix", function()
    local nested = '<xml><a>1</a><list> <item><x>1</x><y/></item> <item><x>2</x></item> </list></xml>'
    assert.matches("<item> is nested", select(2, xml.decode(nested)), 1, true)
    assert.same({ a = "1", list = { item = { { x = "1", y = "" }, { x = "2" } } } },
      xml.decode(nested, nil, nil, true))
    for _, case in ipairs{
      { "<xml><a><b>1</b><b>2</b></a></xml>", "<b> appears twice" },
      { "<xml><a><b>1</b><b><c>2</c></b></a></xml>", "<b> appears twice" },
      { "<xml><a><b><c>1</c></b><b>2</b></a></xml>", "<b> appears twice" },
      { "<xml><a>text<b>1</b></a></xml>", "<a> holds text and elements" },
      { "<xml><a><b>1</b>text</a></xml>", "<a> holds text and elements" },
      { "<xml>" .. ("<a>"):rep(8) .. "1" .. ("</a>"):rep(8) .. "</xml>", "nested more than 8 deep" },
    } do
      local value, err = xml.decode(case[1], nil, nil, true)
      assert.is_nil(value, case[2])
      assert.matches(case[2], err, 1, true)
    end
  end)

  it("refuses DOCTYPE, entities, nesting, repeats, other roots, and oversize", function()
    local cases = {
      { '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><xml><x>&b;</x></xml>',
        "DOCTYPE" },
      { '<xml><x>&a;</x></xml>', "undefined entity" },
      { '<xml><x><y>1</y></x></xml>', "nested" },
      { '<xml><x>1</x><x>2</x></xml>', "appears twice" },
      { '<root><x>1</x></root>', "not <xml>" },
      { '<xml><x>1</x>', "not well%-formed" },
      { '<xml>text<x>1</x></xml>', "text outside" },
      { '', "not well%-formed" },
      { '<xml><x>' .. ("a"):rep(300 * 1024) .. '</x></xml>', "more than" },
    }
    for _, case in ipairs(cases) do
      local value, err = xml.decode(case[1])
      assert.is_nil(value, case[2])
      assert.matches(case[2], err)
    end
    assert.same({ x = "<&>" }, xml.decode("<xml><x>&lt;&amp;&gt;</x></xml>"))
    assert.same({ x = "" }, xml.decode("<xml><x/></xml>"))
  end)
end)

describe("v2 configuration", function()
  local wechatpay = require("wechatpay")
  local merchant = require("support.merchant")

  it("takes a 32-character apiv2_key and never echoes a wrong one", function()
    local secret = "SECRET-apiv2-key-pasted-wrongly!!"
    local ok, err = pcall(wechatpay.new, merchant.options{ apiv2_key = secret })
    assert.is_false(ok)
    assert.matches("apiv2_key must be the 32%-character APIv2 key", err)
    assert.is_nil(err:find(secret, 1, true))
    assert.is_nil(err:find("SECRET", 1, true))
    assert.has_error(function() wechatpay.new(merchant.options{ apiv2_key = 12 }) end)
    local same = ("k"):rep(32)
    assert.has_error(function() wechatpay.new(merchant.options{ apiv2_key = same, apiv3_key = same }) end)
    assert.is_truthy(wechatpay.new(merchant.options{ apiv2_key = ("a"):rep(32) }))
  end)

  it("checks that merchant_cert is a certificate matching private_key", function()
    local m = merchant.make()
    assert.is_truthy(wechatpay.new(merchant.options{ merchant_cert = "file://" .. m.merchant_cert }))
    -- a certificate of another key (the platform certificate)
    local ok, err = pcall(wechatpay.new, merchant.options{ merchant_cert = "file://" .. m.platform_cert })
    assert.is_false(ok)
    assert.matches("does not match private_key", err)
    ok, err = pcall(wechatpay.new, merchant.options{ merchant_cert = "file://" .. m.merchant_pub })
    assert.is_false(ok)
    assert.matches("must be a PEM certificate", err)
    ok, err = pcall(wechatpay.new, merchant.options{ merchant_cert = "file://" .. m.merchant_key })
    assert.is_false(ok)
    assert.matches("must be a PEM certificate", err)
    assert.is_nil(err:find("PRIVATE KEY", 1, true))
    ok, err = pcall(wechatpay.new, merchant.options{ merchant_cert = "file:///nonexistent/cert.pem" })
    assert.is_false(ok)
    assert.matches("cannot read", err)
  end)
end)
