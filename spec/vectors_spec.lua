-- Known answers from the official WeChat Pay SDKs' own test suites, kept in
-- spec/fixtures/vectors (see its README.md for sources and licences).
-- Nobody here wrote these: they pin our crypto to what WeChat Pay's own SDKs
-- compute.
local cjson = require("cjson")
local key = require("wechatpay.key")
local rsa = require("wechatpay.rsa")
local aes = require("wechatpay.aes")
local ossl = require("support.openssl")

local repo_root = ossl.repo_root

local VECTORS = repo_root() .. "/spec/fixtures/vectors"

local function vector_path(name) return VECTORS .. "/" .. name end
local function read_vector(name) return ossl.read(vector_path(name)) end
local function json_vector(name) return cjson.decode(read_vector(name)) end

-- PEM text compared without regard to trailing whitespace or line endings
local function normalize_pem(text)
  return (text:gsub("\r\n", "\n"):gsub("[ \t]+\n", "\n"):gsub("%s+$", ""))
end

local epoch = ossl.epoch

describe("third-party vectors (spec/fixtures/vectors)", function()
  setup(function()
    assert(ossl.exists(vector_path("README.md")), "the vectors are missing: expected " .. VECTORS)
  end)

  it("every vector file is attributed in the README, with the Apache-2.0 text beside it", function()
    local readme = read_vector("README.md")
    assert.truthy(readme:find("Copyright 2021 Tencent Inc.", 1, true))
    assert.truthy(read_vector("LICENSE-Apache-2.0"):find("Apache License", 1, true))
    local files = ossl.run("ls " .. ossl.quote(VECTORS))
    for name in files:gmatch("[^\n]+") do
      if name ~= "README.md" and name ~= "LICENSE-Apache-2.0" then
        local sdk = name:match("^(%a+)_")
        assert.truthy(sdk == "go" or sdk == "java", name .. " is from neither wechatpay-go nor wechatpay-java")
        assert.truthy(readme:find("`" .. name .. "`", 1, true), name .. " is not described in the README")
      end
    end
  end)

  describe("wechatpay-go: core/auth/signers/sha256withrsa_signer_test.go", function()
    -- Source: wechatpay-apiv3/wechatpay-go (Apache-2.0), quoted from
    -- spec/fixtures/vectors/README.md: SHA256withRSA of the 6 bytes `source` with
    -- go_test_key.pem.
    local GO_SIGNATURE = "BKyAfU4iMCuvXMXS0Wzam3V/cnxZ+JaqigPM5OhljS2iOT95OO6Fsuml2JkFANJU9K6q9bLlDhPXuoVz+pp4hAm6pHU4ld815U4jsKu1RkyaII+1CYBUYC8TK0XtJ8FwUXXz8vZHh58rrAVN1XwNyvD1vfpxrMT4SL536GLwvpUHlCqIMzoZUguLli/K8V29QiOhuH6IEqLNJn8e9b3nwNcQ7be3CzYGpDAKBfDGPCqCv8Rw5zndhlffk2FEA70G4hvMwe51qMN/RAJbknXG23bSlObuTCN7Ndj1aJGH6/L+hdwfLpUtJm4QYVazzW7DFD27EpSQEqA8bX9+8m1rLg=="

    it("the quoted signature is the one in the vectors' README", function()
      assert.truthy(read_vector("README.md"):find(GO_SIGNATURE, 1, true))
    end)

    it("go_test_key.pem signing `source` gives exactly wechatpay-go's signature", function()
      local private = assert(key.load("file://" .. vector_path("go_test_key.pem")))
      assert.equal("private", private:kind())
      assert.equal(GO_SIGNATURE, rsa.sign(private, "source"))
      assert.are_not.equal(GO_SIGNATURE, rsa.sign(private, "source "))
    end)

    it("the signature verifies with go_test_cert.pem, and not over another message", function()
      local cert = assert(key.load("file://" .. vector_path("go_test_cert.pem")))
      assert.is_true(rsa.verify(cert, "source", GO_SIGNATURE))
      assert.is_false(rsa.verify(cert, "Source", GO_SIGNATURE))
    end)

    it("go_test_cert.pem has serial D7CE59D1F522D701 and is valid 2021-04-27 to 2031-04-25", function()
      -- serial and dates: spec/fixtures/vectors/README.md (from wechatpay-go)
      local cert = assert(key.load("file://" .. vector_path("go_test_cert.pem")))
      local info = assert(cert:certificate())
      assert.equal("D7CE59D1F522D701", info.serial)
      local day = 86400
      local from, to = epoch("2021-04-27 00:00:00 UTC"), epoch("2031-04-25 00:00:00 UTC")
      assert.is_true(info.not_before >= from and info.not_before < from + day, tostring(info.not_before))
      assert.is_true(info.not_after >= to and info.not_after < to + day, tostring(info.not_after))
      -- and to the second, as openssl reads the same certificate
      assert.equal(ossl.cert_date(vector_path("go_test_cert.pem"), "-startdate"), info.not_before)
      assert.equal(ossl.cert_date(vector_path("go_test_cert.pem"), "-enddate"), info.not_after)
    end)
  end)

  describe("wechatpay-java: RSAPrivacyDecryptorTest (java_oaep_sha1.json)", function()
    it("the OAEP-SHA1 ciphertext decrypts with java_merchant_private_key.pem to its plaintext", function()
      -- Source: wechatpay-apiv3/wechatpay-java (Apache-2.0), RSAPrivacyDecryptorTest
      local v = json_vector("java_oaep_sha1.json")
      assert.equal("plaintext", v.plaintext)
      local private = assert(key.load("file://" .. vector_path(v.private_key)))
      assert.equal(v.plaintext, rsa.decrypt(private, v.ciphertext))
      -- another key cannot decrypt it
      local other = assert(key.load("file://" .. vector_path("go_test_key.pem")))
      local none, err = rsa.decrypt(other, v.ciphertext)
      assert.is_nil(none)
      assert.is_string(err)
    end)
  end)

  describe("wechatpay-java: AeadAesCipherTest (java_aes256gcm.json)", function()
    -- Source: wechatpay-apiv3/wechatpay-java (Apache-2.0), AeadAesCipherTest, key from TestConfig
    it("decrypts to the plaintext", function()
      local v = json_vector("java_aes256gcm.json")
      assert.equal(32, #v.key)
      assert.equal(v.plaintext, aes.gcm_decrypt(v.key, v.nonce, v.associated_data, v.ciphertext))
    end)

    it("encrypts to the same ciphertext", function()
      local v = json_vector("java_aes256gcm.json")
      assert.equal(v.ciphertext, aes.gcm_encrypt(v.key, v.nonce, v.associated_data, v.plaintext))
    end)

    it("refuses it under other associated data", function()
      local v = json_vector("java_aes256gcm.json")
      local none, err = aes.gcm_decrypt(v.key, v.nonce, v.associated_data .. "x", v.ciphertext)
      assert.is_nil(none)
      assert.matches("authentication", err)
    end)
  end)

  describe("certificate downloads", function()
    it("wechatpay-go's response decrypts (mockAPIv3Key1234, 16 bytes) to go_test_cert.pem", function()
      -- Source: wechatpay-go core/downloader/mock_download_server_test.go (Apache-2.0);
      -- the key is quoted from spec/fixtures/vectors/README.md
      local body = json_vector("go_certificates_response.json")
      assert.equal(1, #body.data)
      local item = body.data[1]
      local enc = item.encrypt_certificate
      assert.equal("AEAD_AES_256_GCM", enc.algorithm)
      assert.equal("certificate", enc.associated_data)
      local pem = assert(aes.decrypt_resource("mockAPIv3Key1234", enc, { allow_short_key = true }))
      assert.equal(normalize_pem(read_vector("go_test_cert.pem")), normalize_pem(pem))
      -- the delivered certificate has the serial the response announces
      local cert = assert(key.load(pem))
      assert.equal(item.serial_no, cert:certificate().serial)
      -- without the short-key allowance a 16-byte key is refused
      local none, err = aes.decrypt_resource("mockAPIv3Key1234", enc)
      assert.is_nil(none)
      assert.matches("32 bytes", err)
    end)

    it("wechatpay-java's response decrypts (32-byte key) to java_downloaded_cert.pem", function()
      -- Source: wechatpay-java (Apache-2.0); the key is quoted from spec/fixtures/vectors/README.md
      local body = json_vector("java_certificates_response.json")
      local item = body.data[1]
      local pem = assert(aes.decrypt_resource("a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb", item.encrypt_certificate))
      assert.equal(normalize_pem(read_vector("java_downloaded_cert.pem")), normalize_pem(pem))
      local cert = assert(key.load("file://" .. vector_path("java_downloaded_cert.pem")))
      -- serial quoted from spec/fixtures/vectors/README.md (no validity check against
      -- today's clock: these certificates expire)
      assert.equal("5DEA10EF55877E3CF6C33255C2E7DEFFF7E427EC", cert:certificate().serial)
      assert.equal(item.serial_no, cert:certificate().serial)
      assert.equal("5DEA10EF55877E3CF6C33255C2E7DEFFF7E427EC",
        key.normalize_serial(ossl.run("openssl x509 -noout -serial -in " .. ossl.quote(vector_path("java_downloaded_cert.pem")))))
    end)
  end)

  describe("wechatpay-go: core/notify/notify_test.go (go_notification.json)", function()
    local v, cert, message

    setup(function()
      -- Source: wechatpay-apiv3/wechatpay-go core/notify/notify_test.go (Apache-2.0)
      v = json_vector("go_notification.json")
      cert = assert(key.load("file://" .. vector_path(v.verify_with)))
      local h = v.headers
      message = h["Wechatpay-Timestamp"] .. "\n" .. h["Wechatpay-Nonce"] .. "\n" .. v.body .. "\n"
    end)

    it("names the certificate that verifies it", function()
      assert.equal(v.headers["Wechatpay-Serial"], cert:certificate().serial)
      assert.equal("WECHATPAY2-SHA256-RSA2048", v.headers["Wechatpay-Signature-Type"])
    end)

    it("the signature verifies over TIMESTAMP\\nNONCE\\nBODY\\n", function()
      assert.is_true(rsa.verify(cert, message, v.headers["Wechatpay-Signature"]))
    end)

    it("a one-byte change of the body, or of the timestamp, fails", function()
      local sig = v.headers["Wechatpay-Signature"]
      local h = v.headers
      for _, i in ipairs{ 1, math.floor(#v.body / 2), #v.body } do
        local body = v.body:sub(1, i - 1) .. string.char((v.body:byte(i) + 1) % 256) .. v.body:sub(i + 1)
        assert.is_false(rsa.verify(cert, h["Wechatpay-Timestamp"] .. "\n" .. h["Wechatpay-Nonce"] .. "\n" .. body .. "\n", sig))
      end
      local ts = tostring(tonumber(h["Wechatpay-Timestamp"]) + 1)
      assert.is_false(rsa.verify(cert, ts .. "\n" .. h["Wechatpay-Nonce"] .. "\n" .. v.body .. "\n", sig))
      assert.is_false(rsa.verify(cert, message:sub(1, -2), sig))   -- the final newline is signed too
      assert.is_false(rsa.verify(cert, message, "WECHATPAY/SIGNTEST/" .. sig))
    end)

    it("the resource decrypts (16-byte APIv3 key, allow_short_key) to JSON that cjson parses", function()
      assert.equal(16, #v.apiv3_key)
      local body = cjson.decode(v.body)
      local plaintext = assert(aes.decrypt_resource(v.apiv3_key, body.resource, { allow_short_key = true }))
      local resource = cjson.decode(plaintext)
      assert.equal("table", type(resource))
      assert.equal(v.resource_plaintext, plaintext)
      local expected = cjson.decode(v.resource_plaintext)
      assert.equal(expected.mchid, resource.mchid)
      assert.equal(expected.out_contract_code, resource.out_contract_code)
    end)
  end)
end)
