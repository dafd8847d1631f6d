-- Loading keys in every format openssl writes and wechatpay-php accepts,
-- and refusing bad ones with a message that names the problem.
local key = require("wechatpay.key")
local ossl = require("support.openssl")

describe("wechatpay.key", function()
  local dir, k

  setup(function()
    dir = ossl.tmpdir()
    k = ossl.make_keys(dir)
  end)

  teardown(function() ossl.remove(dir) end)

  local function modulus_of(path, pubin)
    return ossl.run("openssl rsa " .. (pubin or "") .. " -in " .. ossl.quote(path) .. " -noout -modulus")
  end

  describe("loads what openssl writes", function()
    local private_forms = { "pkcs8.pem", "pkcs1.pem" }
    for _, name in ipairs(private_forms) do
      it("private " .. name .. " from a file:// path and from PEM text", function()
        local a = assert(key.load("file://" .. k[name]))
        local b = assert(key.load(ossl.read(k[name])))
        assert.equal("private", a:kind())
        assert.equal("private", b:kind())
        assert.equal(2048, a:bits())
        assert.is_nil(a:certificate())
      end)
    end

    it("encrypted PKCS#8 (PBES2, AES-256-CBC, openssl's default) with its passphrase", function()
      local loaded = assert(key.load("file://" .. k["enc_aes256.pem"], "s3cret"))
      assert.equal("private", loaded:kind())
    end)

    it("encrypted PKCS#8 (PBES2, 3DES) with its passphrase", function()
      assert.equal("private", assert(key.load(ossl.read(k["enc_des3.pem"]), "s3cret")):kind())
    end)

    it("an encrypted key from openssl genpkey -aes-128-cbc", function()
      assert.equal("private", assert(key.load("file://" .. k["genpkey_enc.pem"], "s3cret")):kind())
    end)

    it("SPKI and PKCS#1 public keys", function()
      for _, name in ipairs{ "spki.pem", "pkcs1_public.pem" } do
        local loaded = assert(key.load("file://" .. k[name]))
        assert.equal("public", loaded:kind())
        assert.equal(2048, loaded:bits())
      end
    end)

    it("an X.509 certificate: its serial equals openssl x509 -serial, its dates -startdate/-enddate", function()
      local loaded = assert(key.load("file://" .. k["cert.pem"]))
      assert.equal("public", loaded:kind())
      local cert = assert(loaded:certificate())
      local serial = ossl.run("openssl x509 -in " .. ossl.quote(k["cert.pem"]) .. " -noout -serial")
      assert.equal(serial:match("serial=(%x+)"):upper(), cert.serial)
      assert.equal(ossl.cert_date(k["cert.pem"], "-startdate"), cert.not_before)
      assert.equal(ossl.cert_date(k["cert.pem"], "-enddate"), cert.not_after)
    end)

    it("bare base64 DER in wechatpay-php's four forms", function()
      local forms = {
        { "private.pkcs8://", "pkcs8.der", "private" },
        { "private.pkcs1://", "pkcs1.der", "private" },
        { "public.spki://", "spki.der", "public" },
        { "public.pkcs1://", "pkcs1_public.der", "public" },
      }
      for _, f in ipairs(forms) do
        local loaded, err = key.load(f[1] .. ossl.base64_file(k[f[2]]))
        assert.is_truthy(loaded, f[1] .. " " .. tostring(err))
        assert.equal(f[3], loaded:kind())
      end
    end)

    it("DER files through file://", function()
      assert.equal("private", assert(key.load("file://" .. k["pkcs8.der"])):kind())
      assert.equal("public", assert(key.load("file://" .. k["spki.der"])):kind())
    end)

    it("every public form holds the private key's modulus (checked by signing)", function()
      local rsa = require("wechatpay.rsa")
      local private = assert(key.load("file://" .. k["pkcs8.pem"]))
      local sig = rsa.sign(private, "same key?")
      for _, name in ipairs{ "spki.pem", "pkcs1_public.pem", "cert.pem", "spki.der" } do
        assert.is_true(rsa.verify(assert(key.load("file://" .. k[name])), "same key?", sig), name)
      end
      assert.is_truthy(modulus_of(k["pkcs8.pem"]):match("Modulus="))
    end)
  end)

  describe("bad input gets an error naming the problem", function()
    local function refused(source, pattern, pass)
      local loaded, err = key.load(source, pass)
      assert.is_nil(loaded)
      assert.is_string(err)
      assert.matches(pattern, err)
      return err
    end

    it("empty, garbage and truncated PEM", function()
      refused("", "not a key")
      refused("definitely not a key", "not a key")
      local pem = ossl.read(k["pkcs8.pem"])
      refused(pem:sub(1, math.floor(#pem / 2)), "cannot parse")
      refused("-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n", "cannot parse")
      refused("-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n", "no key or certificate")
    end)

    it("never echoes the key in the message", function()
      local pem = ossl.read(k["pkcs8.pem"])
      local body = pem:match("\n(.-)\n")
      local err = refused(pem:sub(1, 300), "cannot parse")
      assert.is_nil(err:find(body:sub(1, 20), 1, true))
    end)

    it("a PEM bundle of the key and its certificate, as a private key: the key, in either order", function()
      local key_pem, cert_pem = ossl.read(k["pkcs8.pem"]), ossl.read(k["cert.pem"])
      for _, bundle in ipairs{ key_pem .. cert_pem, cert_pem .. key_pem } do
        local loaded = assert(key.private(bundle))
        assert.equal("private", loaded:kind())
        -- the certificate's own key: what it signs verifies with the certificate
        local sig = require("wechatpay.rsa").sign(loaded, "probe")
        assert.is_true(require("wechatpay.rsa").verify(assert(key.public(cert_pem)), "probe", sig))
        -- and as a public key the bundle is its certificate
        assert.truthy(assert(key.public(bundle)):certificate())
      end
    end)

    it("a certificate or public key where the private key is needed", function()
      local loaded, err = key.private("file://" .. k["cert.pem"])
      assert.is_nil(loaded)
      assert.matches("certificate was given where the merchant private key is needed", err)
      loaded, err = key.private("file://" .. k["spki.pem"])
      assert.is_nil(loaded)
      assert.matches("public key was given", err)
    end)

    it("a private key where a public key belongs", function()
      local loaded, err = key.public("file://" .. k["pkcs8.pem"])
      assert.is_nil(loaded)
      assert.matches("private key was given", err)
    end)

    it("a wrong or missing passphrase", function()
      refused("file://" .. k["enc_aes256.pem"], "wrong passphrase", "nope")
      refused("file://" .. k["enc_des3.pem"], "wrong passphrase", "nope")
      refused("file://" .. k["enc_aes256.pem"], "passphrase is needed")
    end)

    it("a non-RSA (EC) key", function()
      refused("file://" .. k["ec.pem"], "not an RSA key")
    end)

    it("a file:// path that does not exist", function()
      refused("file://" .. dir .. "/missing.pem", "cannot open key file .*missing.pem")
    end)

    it("key text behind file:// (a pasted key taken for a path) is described, never echoed", function()
      local pem = ossl.read(k["pkcs8.pem"])
      local err = refused("file://" .. pem, "cannot open key file %(%d+ bytes that look like key text, not a path%)")
      assert.is_nil(err:find(pem:match("\n(.-)\n"):sub(1, 20), 1, true))
    end)

    it("an encrypted DER key says to convert it to PEM", function()
      local der = dir .. "/enc.der"
      ossl.run("openssl pkcs8 -topk8 -v2 aes-256-cbc -passout pass:s3cret -outform DER -in "
        .. ossl.quote(k["pkcs8.pem"]) .. " -out " .. ossl.quote(der))
      refused("file://" .. der, "is DER, which is read unencrypted only: convert an encrypted key to PEM", "s3cret")
    end)

    it("a key file over 64 KB is refused naming the path and the limit, never its bytes", function()
      local pem = ossl.read(k["pkcs8.pem"])
      local body = pem:match("\n(.-)\n")
      -- a real key padded past the limit with PEM-legal trailing text
      local big = ossl.write(dir .. "/big.pem", pem .. ("#"):rep(64 * 1024 + 1 - #pem))
      local err = refused("file://" .. big, "key file .*big%.pem is larger than 65536 bytes")
      assert.is_nil(err:find(body, 1, true))
      -- exactly 64 KB is still read (and parsed as the key it holds)
      ossl.write(dir .. "/edge.pem", pem .. ("\n"):rep(64 * 1024 - #pem))
      assert.equal("private", assert(key.load("file://" .. dir .. "/edge.pem")):kind())
    end)

    it("/dev/zero is refused after at most 64 KB + 1 bytes, in a child with a time and memory limit", function()
      local out = ossl.run_lua([[
        local key = require("wechatpay.key")
        print(select(2, key.load("file:///dev/zero")))
      ]], { seconds = 20, memory_kb = 1024 * 1024 })
      assert.matches("^key file /dev/zero is larger than 65536 bytes", out)
    end)

    it("a directory or a FIFO is refused without blocking, naming the path", function()
      refused("file://" .. dir, "key file " .. dir:gsub("%p", "%%%0") .. " is a directory")
      local fifo = dir .. "/key.fifo"
      ossl.run("mkfifo " .. ossl.quote(fifo))
      -- in a child: opening a FIFO for reading blocks until a writer comes
      local out = ossl.run_lua(([[
        local key = require("wechatpay.key")
        print(select(2, key.load("file://" .. %q)))
      ]]):format(fifo), { seconds = 20 })
      assert.equal("key file " .. fifo .. " is a FIFO, not a regular file\n", out)
    end)

    it("an RSA key under 2048 bits, as merchant private key or as WeChat Pay public key", function()
      local short = dir .. "/rsa1024.pem"
      ossl.run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out " .. ossl.quote(short))
      ossl.run("openssl pkey -in " .. ossl.quote(short) .. " -pubout -out " .. ossl.quote(dir .. "/rsa1024_pub.pem"))
      ossl.run("openssl req -x509 -key " .. ossl.quote(short) .. " -subj /CN=short -days 30 -out "
        .. ossl.quote(dir .. "/rsa1024_cert.pem"))
      assert.equal(1024, assert(key.load("file://" .. short)):bits())   -- loading alone is no verdict
      local loaded, err = key.private("file://" .. short)
      assert.is_nil(loaded)
      assert.equal("RSA key of 1024 bits: WeChat Pay requires 2048", err)
      for _, name in ipairs{ "rsa1024_pub.pem", "rsa1024_cert.pem" } do
        loaded, err = key.public("file://" .. dir .. "/" .. name)
        assert.is_nil(loaded, name)
        assert.equal("RSA key of 1024 bits: WeChat Pay requires 2048", err)
      end
      -- 2048 bits passes both
      assert.equal(2048, assert(key.private("file://" .. k["pkcs8.pem"])):bits())
      assert.equal(2048, assert(key.public("file://" .. k["spki.pem"])):bits())
    end)

    it("no message quotes a line of the key: garbled, truncated, or a private key labelled PUBLIC", function()
      local pem = ossl.read(k["pkcs8.pem"])
      local lines = {}
      for line in pem:gmatch("[^\n]+") do
        if not line:find("-----", 1, true) then lines[#lines + 1] = line end
      end
      assert.is_true(#lines > 20)
      local function garble(text, at)
        return text:sub(1, at - 1) .. (text:sub(at, at) == "A" and "B" or "A") .. text:sub(at + 1)
      end
      local head = "-----BEGIN PRIVATE KEY-----\n"
      local bads = {
        pem:sub(1, 400),                                  -- truncated, no END line
        pem:sub(1, #head + 65 * 10) .. "-----END PRIVATE KEY-----\n",   -- truncated body, END kept
        garble(pem, #head + 5),                           -- one base64 character of the DER length changed
        pem:gsub("\n", "\n!", 3),                          -- characters outside base64
        (pem:gsub("PRIVATE KEY", "PUBLIC KEY")),          -- a private key given as a PUBLIC key
        (pem:gsub("PRIVATE KEY", "CERTIFICATE")),
        (pem:gsub("PRIVATE KEY", "RSA PRIVATE KEY")),
      }
      local file = dir .. "/bad.pem"
      for i, bad in ipairs(bads) do
        local messages = {}
        for _, load in ipairs{ key.load, key.private, key.public } do
          local loaded, err = load(bad)
          if loaded == nil then messages[#messages + 1] = err end
          loaded, err = load("file://" .. ossl.write(file, bad))
          if loaded == nil then messages[#messages + 1] = err end
        end
        assert.is_true(#messages >= 4, "bad key " .. i .. " was accepted")
        for _, err in ipairs(messages) do
          assert.is_string(err)
          for _, line in ipairs(lines) do
            -- not the line, nor any 16 characters of it
            for at = 1, #line - 15, 8 do
              assert.is_nil(err:find(line:sub(at, at + 15), 1, true), ("bad key %d: %q quotes the key"):format(i, err))
            end
          end
        end
      end
    end)

    it("invalid base64 in a DER form", function()
      refused("private.pkcs8://@@@@", "not valid base64")
      refused("public.spki://" .. ossl.base64_file(k["pkcs8.der"]), "cannot parse the public key")
    end)

    it("a wrong type is a programmer error and raises", function()
      assert.has_error(function() key.load(42) end, "bad key source: expected a key object or a string, got number")
      assert.has_error(function() key.load("x", {}) end, "bad passphrase: expected a string")
    end)
  end)

  it("tostring says what the key is and nothing of its material", function()
    local loaded = assert(key.load("file://" .. k["pkcs8.pem"]))
    assert.equal("wechatpay.key (private RSA-2048)", tostring(loaded))
    loaded:close()
    assert.equal("wechatpay.key (closed)", tostring(loaded))
    assert.has_error(function() loaded:bits() end)
  end)

  it("normalizes serials from openssl's output", function()
    assert.equal("5DEA10EF55877E3C", key.normalize_serial(" serial=5dea10ef55877e3c\n"))
  end)
end)
