-- wechatpay.new refuses each configuration mistake with a message that
-- names it, and never shows a secret.
local wechatpay = require("wechatpay")
local merchant = require("support.merchant")
local ossl = require("support.openssl")

describe("wechatpay.new configuration", function()
  local m

  setup(function() m = merchant.make() end)

  local function refused(opts, pattern)
    local ok, err = pcall(wechatpay.new, opts)
    assert.is_false(ok)
    assert.matches(pattern, tostring(err))
    -- no key material in the message
    assert.is_nil(tostring(err):find("BEGIN", 1, true))
    return tostring(err)
  end

  it("accepts a complete configuration and says nothing secret in tostring", function()
    local client = wechatpay.new(merchant.options{ apiv3_key = ("k"):rep(32) })
    local text = tostring(client)
    assert.matches("mchid 1900000001", text)
    assert.matches(m.merchant_serial, text, 1, true)
    assert.is_nil(text:find(("k"):rep(32), 1, true))
    assert.is_nil(text:find("PRIVATE", 1, true))
    for k, v in pairs(client) do
      assert.is_nil(tostring(v):find(("k"):rep(32), 1, true), "client." .. tostring(k) .. " holds the APIv3 key")
    end
  end)

  it("refuses a missing mchid, serial, private_key or certs", function()
    for _, name in ipairs{ "mchid", "serial", "private_key", "certs" } do
      local opts = merchant.options()
      opts[name] = nil
      refused(opts, "wechatpay.new: " .. name .. " is required")
    end
  end)

  it("refuses an unknown option (a typo)", function()
    refused(merchant.options{ privateKey = "x" }, "unknown option 'privateKey'")
  end)

  it("refuses the merchant's own serial inside certs", function()
    local opts = merchant.options()
    opts.certs[m.merchant_serial:lower() .. "\n"] = "file://" .. m.merchant_cert
    refused(opts, "merchant's own API certificate serial")
  end)

  it("refuses the merchant's own certificate under another name", function()
    local opts = merchant.options()
    opts.certs["ABCDEF"] = "file://" .. m.merchant_cert
    refused(opts, "merchant's own")
  end)

  it("refuses a key file that does not exist or does not parse", function()
    refused(merchant.options{ private_key = "file://" .. m.dir .. "/nope.pem" }, "private_key: cannot open key file")
    local bad = ossl.write(m.dir .. "/bad.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    refused(merchant.options{ private_key = "file://" .. bad }, "private_key: cannot parse the private key")
    local opts = merchant.options()
    opts.certs[m.platform_key_id] = "file://" .. m.dir .. "/nope.pem"
    refused(opts, "certs%[\"PUB_KEY_ID_0114232134912410000000000000\"%]: cannot open key file")
  end)

  it("refuses a certificate where the private key belongs", function()
    refused(merchant.options{ private_key = "file://" .. m.platform_cert },
      "private_key: a certificate was given where the merchant private key is needed")
  end)

  it("refuses a private key among the platform keys", function()
    local opts = merchant.options()
    opts.certs[m.platform_key_id] = "file://" .. m.platform_key
    refused(opts, "a private key was given where a WeChat Pay public key or certificate belongs")
  end)

  it("refuses a platform certificate under an id that is not its serial; leading zeros are dropped", function()
    local opts = merchant.options()
    opts.certs = { ABCDEF = "file://" .. m.platform_cert }
    refused(opts, 'certs%["ABCDEF"%] holds the platform certificate with serial ' .. m.platform_cert_serial
      .. ": give it under that serial")
    opts.certs = { [m.platform_key_id] = "file://" .. m.platform_cert }
    refused(opts, "is a platform certificate %(serial " .. m.platform_cert_serial .. "%): a PUB_KEY_ID_")
    opts.certs = { ["00" .. m.platform_cert_serial] = "file://" .. m.platform_cert }
    assert.same({ m.platform_cert_serial }, wechatpay.new(opts):platform_key_ids())
  end)

  it("trims and upper-cases serials", function()
    local opts = merchant.options{ serial = "  " .. m.merchant_serial:lower() .. "\n" }
    opts.certs = { [" " .. m.platform_cert_serial:lower() .. "\n"] = "file://" .. m.platform_cert }
    local client = wechatpay.new(opts)
    assert.equal(m.merchant_serial, client.serial)
    assert.same({ m.platform_cert_serial }, client:platform_key_ids())
  end)

  it("encrypts with the public key id when there is one, else the certificate that expires last", function()
    local opts = merchant.options()
    opts.certs[m.platform_cert_serial] = "file://" .. m.platform_cert
    assert.equal(m.platform_key_id, wechatpay.new(opts).platform_key_id)
    opts.certs = {
      [m.platform_cert_serial] = "file://" .. m.platform_cert,
      [m.platform_cert_later_serial] = "file://" .. m.platform_cert_later,
    }
    assert.equal(m.platform_cert_later_serial, wechatpay.new(opts).platform_key_id)
  end)

  it("refuses bad values of the optional settings", function()
    refused(merchant.options{ timeout = -1 }, "timeout must be a finite number of seconds")
    refused(merchant.options{ base_url = "ftp://x" }, "base_url must use https, not ftp")
    refused(merchant.options{ cafile = m.dir .. "/none.pem" }, "cafile .* cannot be opened")
    refused(merchant.options{ apiv3_key = "short" }, "apiv3_key must be the 32%-character APIv3 key")
    refused(merchant.options{ mchid = "abc" }, "mchid is required")
    refused(merchant.options{ certs = {} }, "certs is empty")
    for _, bad in ipairs{ 0, -1, 2.5, "x" } do
      refused(merchant.options{ max_concurrency = bad }, "max_concurrency must be a finite integer")
    end
    for _, bad in ipairs{ { calls = 5, per = 1, burst = 0 }, { calls = 5, period = 1 }, { calls = 5, burst = "x" },
                          -3, { per = 1 } } do
      refused(merchant.options{ rate_limit = bad }, "rate_limit must be calls per minute")
    end
    refused(merchant.options{ retry = { attempt = 2 } }, "retry: unknown field 'attempt'")
    refused(merchant.options{ transport = {} }, "transport must be an object")
  end)

  it("client:decrypt_resource uses the APIv3 key (sealed by luaossl)", function()
    local apiv3_key = "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb"
    local cipher = require("openssl.cipher").new("aes-256-gcm")
    cipher:encrypt(apiv3_key, "uluk4a9R25RW")
    local sealed = cipher:final('{"coupon_id":"1"}') .. cipher:getTag(16)
    local resource = { algorithm = "AEAD_AES_256_GCM", nonce = "uluk4a9R25RW", associated_data = "",
      ciphertext = require("wechatpay.base64").encode(sealed) }
    local client = wechatpay.new(merchant.options{ apiv3_key = apiv3_key })
    assert.equal('{"coupon_id":"1"}', client:decrypt_resource(resource))
    resource.nonce = "uluk4a9R25RX"
    local none, err = client:decrypt_resource(resource)
    assert.is_nil(none)
    assert.matches("authentication", err)
    assert.has_error(function() wechatpay.new(merchant.options()):decrypt_resource(resource) end,
      "decrypt_resource: the client was made without apiv3_key")
  end)

  it("client:encrypt uses the platform key and client:decrypt the merchant key (checked with openssl)", function()
    local client = wechatpay.new(merchant.options())
    local ciphertext, id = client:encrypt("张三")
    assert.equal(m.platform_key_id, id)
    ossl.write(m.dir .. "/ct.b64", ciphertext)
    local plain = ossl.run("openssl base64 -d -A -in " .. ossl.quote(m.dir .. "/ct.b64")
      .. " | openssl pkeyutl -decrypt -inkey " .. ossl.quote(m.platform_key)
      .. " -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1")
    assert.equal("张三", plain)
    local from_openssl = ossl.run("printf '%s' 110101199003071234 | openssl pkeyutl -encrypt -pubin -inkey "
      .. ossl.quote(m.merchant_pub) .. " -pkeyopt rsa_padding_mode:oaep | openssl base64 -A")
    assert.equal("110101199003071234", client:decrypt(from_openssl))
    local too_long, err = client:encrypt(("x"):rep(215))
    assert.is_nil(too_long)
    assert.matches("at most 214", err)
  end)
end)
