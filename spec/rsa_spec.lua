-- SHA256withRSA signatures and RSAES-OAEP (SHA-1) checked against the
-- openssl command line: every expected value comes from openssl, never
-- from our own code.
local key = require("wechatpay.key")
local rsa = require("wechatpay.rsa")
local base64 = require("wechatpay.base64")
local ossl = require("support.openssl")

describe("wechatpay.rsa against openssl", function()
  local dir, k, private, public, cert, other_private

  local q = ossl.quote
  local function tmp(name) return dir .. "/" .. name end

  -- openssl's binary signature of the file at `path`, as base64
  local function openssl_sign(key_path, path)
    local sig = tmp("openssl.sig")
    ossl.run("openssl dgst -sha256 -sign " .. q(key_path) .. " -out " .. q(sig) .. " " .. q(path))
    return ossl.base64_file(sig)
  end

  -- true when openssl accepts `b64` as a signature of the file at `path`
  local function openssl_verifies(pub_path, path, b64)
    local sig = ossl.write(tmp("ours.sig"), assert(base64.decode(b64)))
    local ok, out = pcall(ossl.run, "openssl dgst -sha256 -verify " .. q(pub_path)
      .. " -signature " .. q(sig) .. " " .. q(path))
    return ok and out:find("Verified OK", 1, true) ~= nil
  end

  local function openssl_oaep_decrypt(b64, md)
    local ct = ossl.write(tmp("ct.bin"), assert(base64.decode(b64)))
    local out = tmp("pt.bin")
    os.remove(out)
    ossl.run("openssl pkeyutl -decrypt -inkey " .. q(k["pkcs8.pem"])
      .. " -pkeyopt rsa_padding_mode:oaep" .. (md and (" -pkeyopt rsa_oaep_md:" .. md) or "")
      .. " -in " .. q(ct) .. " -out " .. q(out))
    return ossl.read(out)
  end

  local function openssl_oaep_encrypt(pub_path, plaintext, md)
    local pt = ossl.write(tmp("pt_in.bin"), plaintext)
    local out = tmp("ct_out.bin")
    ossl.run("openssl pkeyutl -encrypt -pubin -inkey " .. q(pub_path)
      .. " -pkeyopt rsa_padding_mode:oaep" .. (md and (" -pkeyopt rsa_oaep_md:" .. md) or "")
      .. " -in " .. q(pt) .. " -out " .. q(out))
    return ossl.base64_file(out)
  end

  setup(function()
    dir = ossl.tmpdir()
    k = ossl.make_keys(dir)
    ossl.run("openssl pkey -in " .. q(k["other.pem"]) .. " -pubout -out " .. q(tmp("other_spki.pem")))
    private = assert(key.load("file://" .. k["pkcs8.pem"]))
    public = assert(key.load("file://" .. k["spki.pem"]))
    cert = assert(key.load("file://" .. k["cert.pem"]))
    other_private = assert(key.load("file://" .. k["other.pem"]))
    -- 10 MB of random bytes, made by openssl and read back
    ossl.run("openssl rand -out " .. q(tmp("big.bin")) .. " 10485760")
  end)

  teardown(function() ossl.remove(dir) end)

  local messages = {
    { "the empty message", "" },
    { "ASCII", "hello, WeChat Pay" },
    { "a request's string to sign",
      "POST\n/v3/pay/transactions/jsapi\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n{\"appid\":\"wxd678efh567hg6787\"}\n" },
    { "Chinese UTF-8 text", "微信支付：签名测试，金额 ¥100.00\n" },
    { "binary bytes with NUL", "\0\1\2\3\255\254\0abc\0\128\0" },
  }

  describe("signatures", function()
    for _, m in ipairs(messages) do
      it("equal openssl dgst -sha256 -sign byte for byte: " .. m[1], function()
        local path = ossl.write(tmp("msg.bin"), m[2])
        local ours = rsa.sign(private, m[2])
        assert.equal(openssl_sign(k["pkcs8.pem"], path), ours)
        assert.equal(344, #ours)
        assert.is_true(openssl_verifies(k["spki.pem"], path, ours))
      end)
    end

    it("equal openssl's for a 10 MB message, and openssl verifies them", function()
      local path = tmp("big.bin")
      local data = ossl.read(path)
      assert.equal(10485760, #data)
      local ours = rsa.sign(private, data)
      assert.equal(openssl_sign(k["pkcs8.pem"], path), ours)
      assert.is_true(openssl_verifies(k["spki.pem"], path, ours))
    end)

    it("core.authorization takes a given nonce of letters and digits only: it is quoted in the header", function()
      local core = require("wechatpay.core")
      local header = core.authorization(private, "1900000001", "AB12", "GET", "/v3/x", "", 1700000000, "Abc123")
      assert.matches('nonce_str="Abc123",', header, 1, true)
      for _, bad in ipairs{ 'a",x="1', "ab\0cd", "a b", "a\nb" } do
        local ok, err = pcall(core.authorization, private, "1900000001", "AB12", "GET", "/v3/x", "", 1700000000, bad)
        assert.is_false(ok)
        assert.matches("nonce must be letters and digits only", err, 1, true)
      end
      -- mchid and serial are quoted too: no quote, no CR or LF, no other control character
      for _, bad in ipairs{ '19"00', "1900\r\n", "19\t00", "19\0000", "19\127" } do
        local ok, err = pcall(core.authorization, private, bad, "AB12", "GET", "/v3/x", "", 1700000000)
        assert.is_false(ok)
        assert.matches("mchid holds a quote or a control character", err, 1, true)
        ok, err = pcall(core.authorization, private, "1900000001", bad, "GET", "/v3/x", "", 1700000000)
        assert.is_false(ok)
        assert.matches("serial holds a quote or a control character", err, 1, true)
      end
    end)

    it("from a PKCS#1 key equal openssl's from the same key", function()
      local path = ossl.write(tmp("msg.bin"), "pkcs1")
      local pkcs1 = assert(key.load("file://" .. k["pkcs1.pem"]))
      assert.equal(openssl_sign(k["pkcs1.pem"], path), rsa.sign(pkcs1, "pkcs1"))
    end)

    it("openssl's signatures verify with our public key and with the certificate's key", function()
      for _, m in ipairs(messages) do
        local path = ossl.write(tmp("msg.bin"), m[2])
        local sig = openssl_sign(k["pkcs8.pem"], path)
        assert.is_true(rsa.verify(public, m[2], sig), m[1])
        assert.is_true(rsa.verify(cert, m[2], sig), m[1])
        -- a source string works as well as a loaded key
        assert.is_true(rsa.verify("file://" .. k["pkcs1_public.pem"], m[2], sig), m[1])
      end
    end)

    it("openssl's signature of 10 MB verifies with ours", function()
      local data = ossl.read(tmp("big.bin"))
      local sig = openssl_sign(k["pkcs8.pem"], tmp("big.bin"))
      assert.is_true(rsa.verify(public, data, sig))
      assert.is_false(rsa.verify(public, data .. "x", sig))
    end)

    describe("verify is false, never an error, for", function()
      local msg = "{\"amount\":100}"
      local good

      before_each(function()
        good = openssl_sign(k["pkcs8.pem"], ossl.write(tmp("msg.bin"), msg))
        assert.is_true(rsa.verify(public, msg, good))   -- the control
      end)

      local function refused(signature, message)
        local ok, result = pcall(rsa.verify, public, message or msg, signature)
        assert.is_true(ok, tostring(result))
        assert.is_false(result)
      end

      it("a tampered message", function()
        refused(good, "{\"amount\":101}")
        refused(good, msg .. "\n")
        refused(good, "")
      end)

      it("a signature from another key", function()
        local sig = openssl_sign(k["other.pem"], ossl.write(tmp("msg.bin"), msg))
        assert.equal(344, #sig)
        refused(sig)
        -- and it is a good signature for the other key
        assert.is_true(rsa.verify(assert(key.load("file://" .. tmp("other_spki.pem"))), msg, sig))
      end)

      it("a tampered signature", function()
        local raw = assert(base64.decode(good))
        local flipped = raw:sub(1, 100) .. string.char((raw:byte(101) + 1) % 256) .. raw:sub(102)
        refused(base64.encode(flipped))
      end)

      it("malformed base64", function()
        refused("!!!!" .. good:sub(5))
        refused(good:sub(1, 343))
        refused(good .. "=")
        refused("not base64 at all")
        refused(good:sub(1, 100) .. "\n" .. good:sub(101))
      end)

      it("an empty string", function()
        refused("")
      end)

      it("a truncated signature", function()
        local raw = assert(base64.decode(good))
        refused(base64.encode(raw:sub(1, 255)))
        refused(base64.encode(raw:sub(2)))
        refused(base64.encode(raw:sub(1, 128)))
        refused(base64.encode(raw .. "\0"))
      end)

      it("a WECHATPAY/SIGNTEST/ probe", function()
        refused("WECHATPAY/SIGNTEST/" .. good)
        refused("WECHATPAY/SIGNTEST/")
        refused("WECHATPAY/SIGNTEST/abcdefghijklmnopqrstuvwxyz0123456789")
      end)

      it("a signature that is not a string", function()
        refused(nil)
        refused(42)
        refused({})
        refused(true)
      end)

      it("a signature of another length made of valid base64", function()
        refused(("A"):rep(344))
        refused(base64.encode(("\255"):rep(256)))
        refused(("QUFB"):rep(2000))
      end)
    end)

    it("signing with a public key or a certificate raises, naming the private key", function()
      for _, source in ipairs{ public, cert, "file://" .. k["spki.pem"], "file://" .. k["cert.pem"] } do
        local ok, err = pcall(rsa.sign, source, "x")
        assert.is_false(ok)
        assert.matches("private key", tostring(err))
      end
    end)
  end)

  describe("RSAES-OAEP with SHA-1", function()
    local texts = {
      { "ASCII", "plaintext" },
      { "a Chinese name", "张三" },
      { "an ID number", "110101199003071234" },
      { "binary with NUL", "\0\1\0\255\0" },
      { "a single byte", "x" },
    }

    for _, t in ipairs(texts) do
      it("our ciphertext decrypts with openssl pkeyutl (SHA-1 explicit and by default): " .. t[1], function()
        local ct = assert(rsa.encrypt(public, t[2]))
        assert.equal(344, #ct)
        assert.equal(t[2], openssl_oaep_decrypt(ct, "sha1"))
        assert.equal(t[2], openssl_oaep_decrypt(ct, nil))
      end)
    end

    it("ciphertext for the certificate's key decrypts with openssl", function()
      local ct = assert(rsa.encrypt(cert, "via the certificate"))
      assert.equal("via the certificate", openssl_oaep_decrypt(ct, "sha1"))
    end)

    it("the empty plaintext round-trips through openssl", function()
      local ct = assert(rsa.encrypt(public, ""))
      assert.equal(344, #ct)
      assert.equal("", openssl_oaep_decrypt(ct, "sha1"))
    end)

    for _, t in ipairs(texts) do
      it("openssl's ciphertext decrypts with ours: " .. t[1], function()
        local ct = openssl_oaep_encrypt(k["spki.pem"], t[2], nil)
        assert.equal(t[2], assert(rsa.decrypt(private, ct)))
        ct = openssl_oaep_encrypt(k["spki.pem"], t[2], "sha1")
        assert.equal(t[2], assert(rsa.decrypt(private, ct)))
      end)
    end

    it("openssl's OAEP-SHA256 ciphertext does not decrypt with ours", function()
      local ct = openssl_oaep_encrypt(k["spki.pem"], "sha256 padding", "sha256")
      local pt, err = rsa.decrypt(private, ct)
      assert.is_nil(pt)
      assert.is_string(err)
    end)

    it("openssl's PKCS#1 v1.5 ciphertext does not decrypt with ours", function()
      local pt_path = ossl.write(tmp("v15_in.bin"), "v1.5 padding")
      ossl.run("openssl pkeyutl -encrypt -pubin -inkey " .. q(k["spki.pem"])
        .. " -pkeyopt rsa_padding_mode:pkcs1 -in " .. q(pt_path) .. " -out " .. q(tmp("v15.bin")))
      local pt, err = rsa.decrypt(private, ossl.base64_file(tmp("v15.bin")))
      assert.is_nil(pt)
      assert.is_string(err)
    end)

    it("214 bytes encrypt (and openssl decrypts them); 215 give nil and an error naming the limit", function()
      local path = tmp("rand215.bin")
      ossl.run("openssl rand -out " .. q(path) .. " 215")
      local bytes = ossl.read(path)
      local ct = assert(rsa.encrypt(public, bytes:sub(1, 214)))
      assert.equal(bytes:sub(1, 214), openssl_oaep_decrypt(ct, "sha1"))
      local none, err = rsa.encrypt(public, bytes)
      assert.is_nil(none)
      assert.matches("214", err)
      assert.matches("215", err)
      -- openssl agrees that 215 is too many
      assert.has_error(function() openssl_oaep_encrypt(k["spki.pem"], bytes, "sha1") end)
    end)

    it("a ciphertext made for another key gives nil, err", function()
      local ct = openssl_oaep_encrypt(tmp("other_spki.pem"), "for the other key", "sha1")
      local pt, err = rsa.decrypt(private, ct)
      assert.is_nil(pt)
      assert.is_string(err)
      assert.equal("for the other key", assert(rsa.decrypt(other_private, ct)))
    end)

    it("a tampered or truncated ciphertext gives nil, err", function()
      local raw = assert(base64.decode(assert(rsa.encrypt(public, "secret"))))
      local flipped = raw:sub(1, 200) .. string.char((raw:byte(201) + 1) % 256) .. raw:sub(202)
      for _, bad in ipairs{ flipped, raw:sub(1, 255), raw .. "\0", "" } do
        local pt, err = rsa.decrypt(private, base64.encode(bad))
        assert.is_nil(pt)
        assert.is_string(err)
      end
    end)

    it("invalid base64 gives nil, err", function()
      local good = assert(rsa.encrypt(public, "secret"))
      for _, bad in ipairs{ "!!!!" .. good:sub(5), good:sub(1, 343), "@@@", good .. good .. good .. good } do
        local pt, err = rsa.decrypt(private, bad)
        assert.is_nil(pt)
        assert.is_string(err)
      end
    end)

    it("encrypting twice gives different ciphertexts that both decrypt", function()
      local a = assert(rsa.encrypt(public, "same"))
      local b = assert(rsa.encrypt(public, "same"))
      assert.are_not.equal(a, b)
      assert.equal("same", openssl_oaep_decrypt(a, "sha1"))
      assert.equal("same", openssl_oaep_decrypt(b, "sha1"))
    end)

    it("decrypting with a public key or a certificate raises, naming the private key", function()
      local ct = openssl_oaep_encrypt(k["spki.pem"], "x", "sha1")
      for _, source in ipairs{ public, cert, "file://" .. k["spki.pem"], "file://" .. k["cert.pem"] } do
        local ok, err = pcall(rsa.decrypt, source, ct)
        assert.is_false(ok)
        assert.matches("private key", tostring(err))
      end
    end)
  end)
end)
