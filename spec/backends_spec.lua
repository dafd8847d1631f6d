-- The two crypto backends side by side: OpenSSL's and mbedTLS's core.so,
-- loaded by path into this one interpreter (package.loadlib), must agree
-- with each other and with the openssl command line: one's signatures
-- verify under the other, one's OAEP ciphertexts decrypt with the other,
-- and the same bad input gets the same kind of error from both.
--
-- The builds come from WECHATPAY_BUILDS (scripts/test.sh sets it to every
-- folder of the run: "./build ./build/mbedtls", or DEV=1's under build/dev);
-- by default ./build and ./build/mbedtls.  When run by `make test`, a
-- missing build fails; run alone, it is pending.
local ossl = require("support.openssl")

local runtime = jit and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))

local function load_cores()
  local listed = os.getenv("WECHATPAY_BUILDS")
  local dirs = {}
  for dir in (listed or "./build ./build/mbedtls"):gmatch("%S+") do dirs[#dirs + 1] = dir end
  local cores, missing = {}, {}
  for _, dir in ipairs(dirs) do
    local path = ossl.repo_root() .. "/" .. dir:gsub("^%./", "") .. "/" .. runtime .. "/wechatpay/core.so"
    local open = ossl.exists(path) and package.loadlib(path, "luaopen_wechatpay_core")
    if open then
      local core = open()
      core.path = path
      cores[#cores + 1] = core
    else
      missing[#missing + 1] = path
    end
  end
  return cores, missing, listed ~= nil
end

local cores, missing, required = load_cores()

describe("crypto backends", function()
  if #cores < 2 or #missing > 0 then
    if required then
      it("are all built", function()
        error("cannot load " .. table.concat(missing, ", ") .. " (make backends)")
      end)
    else
      pending("needs ./build and ./build/mbedtls (make backends): " .. table.concat(missing, ", "))
    end
    return
  end

  local dir, k
  local q = ossl.quote

  setup(function()
    dir = ossl.tmpdir()
    k = ossl.make_keys(dir)
  end)

  teardown(function() ossl.remove(dir) end)

  local function load_pem(core, name, pass)
    return core.key_from_pem(ossl.read(k[name]), pass)
  end

  -- the part of a message that names its kind: mbedTLS adds its own reason
  -- in parentheses, OpenSSL's build adds ours
  local function kind(message)
    return (tostring(message):gsub(" %(.*$", ""))
  end

  it("are OpenSSL 3 and mbedTLS, named with their versions", function()
    local names = {}
    for _, core in ipairs(cores) do names[#names + 1] = core.crypto_backend end
    table.sort(names)
    assert.equal(2, #names)
    assert.matches("^OpenSSL 3%.%d+%.%d+$", names[1])
    assert.matches("^mbedTLS %d+%.%d+%.%d+$", names[2])
    -- the library the module runs on is the one `openssl` reports
    local version = ossl.run("openssl version"):match("^OpenSSL (%S+)")
    assert.equal("OpenSSL " .. version, names[1])
  end)

  it("make byte-identical signatures that verify under each other and under openssl", function()
    local message = "POST\n/v3/marketing/favor/users/o4GgauInH_RCEdvrrNGrntXDuXXX/coupons\n1554208460\n"
      .. "593BEC0C930BF1AFEB40B4A08C8FB242\n{\"stock_id\":\"9856000\"}\n"
    local msg_file = ossl.write(dir .. "/msg", message)
    local signatures = {}
    for i, core in ipairs(cores) do
      signatures[i] = assert(core.rsa_sign(assert(load_pem(core, "pkcs8.pem")), message))
    end
    -- PKCS#1 v1.5 is deterministic: the same key and message, the same bytes
    assert.equal(signatures[1], signatures[2])
    for i, sig in ipairs(signatures) do
      for _, core in ipairs(cores) do
        for _, public in ipairs{ "spki.pem", "pkcs1_public.pem", "cert.pem" } do
          assert.is_true(core.rsa_verify(assert(load_pem(core, public)), message, sig),
            ("%s's signature under %s with %s"):format(cores[i].crypto_backend, core.crypto_backend, public))
        end
        assert.is_false(core.rsa_verify(assert(load_pem(core, "spki.pem")), message .. "x", sig))
      end
      local sig_file = ossl.write(dir .. "/sig" .. i, assert(cores[1].base64_decode(sig)))
      assert.equal("Verified OK\n", ossl.run("openssl dgst -sha256 -verify " .. q(k["spki.pem"])
        .. " -signature " .. q(sig_file) .. " " .. q(msg_file)))
    end
  end)

  it("decrypt each other's OAEP-SHA1 ciphertexts, and openssl decrypts them", function()
    local plaintext = "张三 / 13800138000"
    for _, from in ipairs(cores) do
      local ct = assert(from.rsa_encrypt(assert(load_pem(from, "cert.pem")), plaintext))
      for _, to in ipairs(cores) do
        assert.equal(plaintext, to.rsa_decrypt(assert(load_pem(to, "pkcs1.pem")), ct),
          from.crypto_backend .. " -> " .. to.crypto_backend)
      end
      local ct_file = ossl.write(dir .. "/oaep.bin", assert(cores[1].base64_decode(ct)))
      assert.equal(plaintext, ossl.run("openssl pkeyutl -decrypt -inkey " .. q(k["pkcs8.pem"])
        .. " -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1 -in " .. q(ct_file)))
    end
  end)

  -- About 1 wrong passphrase in 256 decrypts to valid padding and garbage
  -- that fails to parse: it must still be called a wrong passphrase.  A
  -- 1-iteration PBKDF2 keeps 1,500 tries quick; the chance that none of
  -- them hits such a passphrase is (255/256)^1500, under 0.3%.
  it("call every wrong passphrase a wrong passphrase, also those that decrypt to valid padding", function()
    local enc = dir .. "/enc_des3_iter1.pem"
    ossl.run("openssl pkcs8 -topk8 -in " .. q(k["pkcs8.pem"]) .. " -v2 des3 -iter 1 -passout pass:s3cret -out " .. q(enc))
    local pem = ossl.read(enc)
    for _, core in ipairs(cores) do
      assert(core.key_from_pem(pem, "s3cret"), core.crypto_backend)
      for i = 1, 1500 do
        local loaded, err = core.key_from_pem(pem, "wrong-" .. i)
        assert.is_nil(loaded, "wrong-" .. i .. " opened the key under " .. core.crypto_backend)
        assert.matches("^wrong passphrase for the encrypted private key$", err, 1,
          "wrong-" .. i .. " under " .. core.crypto_backend)
      end
    end
  end)

  -- mbedTLS 2.28 runs neither scrypt nor ARIA nor Camellia; given the right
  -- passphrase for such a key it used to answer "wrong passphrase".
  it("name an encryption scheme mbedTLS cannot run, and never call the right passphrase wrong", function()
    local schemes = {
      { "scrypt.pem", "openssl pkcs8 -topk8 -scrypt -in %s -passout pass:s3cret -out %s" },
      { "aria.pem", "openssl pkcs8 -topk8 -v2 aria-256-cbc -in %s -passout pass:s3cret -out %s" },
      { "camellia.pem", "openssl pkcs8 -topk8 -v2 camellia-256-cbc -in %s -passout pass:s3cret -out %s" },
      { "legacy_camellia.pem", "openssl rsa -traditional -camellia128 -in %s -passout pass:s3cret -out %s" },
    }
    for _, scheme in ipairs(schemes) do
      local path = dir .. "/" .. scheme[1]
      ossl.run(scheme[2]:format(q(k["pkcs8.pem"]), q(path)))
      local pem = ossl.read(path)
      for _, core in ipairs(cores) do
        local what = scheme[1] .. " under " .. core.crypto_backend
        local right, right_err = core.key_from_pem(pem, "s3cret")
        local _, wrong_err = core.key_from_pem(pem, "nope")
        if core.crypto_backend:match("^OpenSSL") then
          assert(right, what .. ": " .. tostring(right_err))
          assert.equal("wrong passphrase for the encrypted private key", wrong_err, what)
        else
          assert.is_nil(right, what)
          assert.matches("^unsupported private key encryption", right_err, 1, what)
          assert.matches("^unsupported private key encryption", wrong_err, 1, what)
        end
      end
    end
    -- a scheme both run is still a wrong passphrase (PBKDF2 with HMAC-SHA512)
    local sha512 = dir .. "/aes_sha512.pem"
    ossl.run("openssl pkcs8 -topk8 -v2 aes-128-cbc -v2prf hmacWithSHA512 -in " .. q(k["pkcs8.pem"])
      .. " -passout pass:s3cret -out " .. q(sha512))
    for _, core in ipairs(cores) do
      assert(core.key_from_pem(ossl.read(sha512), "s3cret"), core.crypto_backend)
      local _, err = core.key_from_pem(ossl.read(sha512), "nope")
      assert.equal("wrong passphrase for the encrypted private key", err, core.crypto_backend)
    end
  end)

  it("read every key form the same: kind, bits, and a certificate's serial and validity", function()
    local serial = ossl.run("openssl x509 -in " .. q(k["cert.pem"]) .. " -noout -serial"):match("=(%x+)")
    local not_before = ossl.cert_date(k["cert.pem"], "-startdate")
    local not_after = ossl.cert_date(k["cert.pem"], "-enddate")
    local pem_forms = {
      { "pkcs8.pem", "private" }, { "pkcs1.pem", "private" }, { "spki.pem", "public" },
      { "pkcs1_public.pem", "public" }, { "cert.pem", "public" },
      { "enc_aes256.pem", "private", "s3cret" }, { "enc_des3.pem", "private", "s3cret" },
      { "genpkey_enc.pem", "private", "s3cret" },
    }
    local der_forms = {
      { "pkcs8.der", "private.pkcs8", "private" }, { "pkcs1.der", "private.pkcs1", "private" },
      { "spki.der", "public.spki", "public" }, { "pkcs1_public.der", "public.pkcs1", "public" },
      { "pkcs8.der", "auto", "private" }, { "spki.der", "auto", "public" },
    }
    for _, core in ipairs(cores) do
      for _, f in ipairs(pem_forms) do
        local loaded = assert(load_pem(core, f[1], f[3]), core.crypto_backend .. " " .. f[1])
        assert.equal(f[2], loaded:kind(), f[1])
        assert.equal(2048, loaded:bits(), f[1])
      end
      for _, f in ipairs(der_forms) do
        local loaded = assert(core.key_from_der(ossl.read(k[f[1]]), f[2]), core.crypto_backend .. " " .. f[1])
        assert.equal(f[3], loaded:kind(), f[1])
      end
      local cert = assert(load_pem(core, "cert.pem")):certificate()
      assert.equal(serial:upper(), cert.serial)
      assert.equal(not_before, cert.not_before)
      assert.equal(not_after, cert.not_after)
    end
  end)

  it("give the same kind of error for the same bad input, quoting none of the key", function()
    local pem = ossl.read(k["pkcs8.pem"])
    local head = "-----BEGIN PRIVATE KEY-----\n"
    local key_cases = {
      { "garbled PEM", function(core) return core.key_from_pem(pem:gsub("\n", "\n!", 3)) end,
        "^cannot parse the private key" },
      { "truncated PEM", function(core) return core.key_from_pem(pem:sub(1, #head + 65 * 10) .. "-----END PRIVATE KEY-----\n") end,
        "^cannot parse the private key" },
      { "PKCS#8 labelled RSA PRIVATE KEY", function(core) return core.key_from_pem((pem:gsub("PRIVATE KEY", "RSA PRIVATE KEY"))) end,
        "^cannot parse the private key" },
      { "a private key labelled PUBLIC KEY", function(core) return core.key_from_pem((pem:gsub("PRIVATE KEY", "PUBLIC KEY"))) end,
        "^cannot parse the public key" },
      { "wrong passphrase (AES-256 PKCS#8)", function(core) return load_pem(core, "enc_aes256.pem", "nope") end,
        "^wrong passphrase for the encrypted private key$" },
      { "wrong passphrase (3DES PKCS#8)", function(core) return load_pem(core, "enc_des3.pem", "nope") end,
        "^wrong passphrase for the encrypted private key$" },
      { "encrypted key without a passphrase", function(core) return load_pem(core, "enc_aes256.pem") end,
        "^the private key is encrypted: a passphrase is needed$" },
      { "encrypted key with an empty passphrase", function(core) return load_pem(core, "enc_aes256.pem", "") end,
        "^the private key is encrypted: a passphrase is needed$" },
      { "encrypted traditional PEM (Proc-Type) with an empty passphrase", function(core)
        local path = dir .. "/proc_type.pem"
        if not ossl.exists(path) then
          ossl.run("openssl rsa -in " .. q(k["pkcs8.pem"]) .. " -traditional -aes128 -passout pass:s3cret -out " .. q(path))
        end
        return core.key_from_pem(ossl.read(path), "")
      end, "^the private key is encrypted: a passphrase is needed$" },
      { "an EC key", function(core) return load_pem(core, "ec.pem") end, "^not an RSA key" },
      { "an EC key after its parameters (openssl ecparam -genkey)", function(core)
        local path = dir .. "/ecparam.pem"
        if not ossl.exists(path) then ossl.run("openssl ecparam -name prime256v1 -genkey -out " .. q(path)) end
        return core.key_from_pem(ossl.read(path))
      end, "^not an RSA key" },
      { "a label that holds no key", function(core) return core.key_from_pem("-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n") end,
        "^PEM holds no key or certificate" },
      { "no PEM at all", function(core) return core.key_from_pem("definitely not a key") end, "^not PEM" },
      { "PKCS#8 DER given as SPKI", function(core) return core.key_from_der(ossl.read(k["pkcs8.der"]), "public.spki") end,
        "^cannot parse the public key" },
      { "garbage DER", function(core) return core.key_from_der(("\48\130\1\1"):rep(8), "auto") end,
        "^DER holds no RSA key or certificate" },
    }
    local lines = {}
    for line in pem:gmatch("[^\n]+") do
      if not line:find("-----", 1, true) then lines[#lines + 1] = line end
    end
    for _, case in ipairs(key_cases) do
      local kinds = {}
      for i, core in ipairs(cores) do
        local loaded, err = case[2](core)
        assert.is_nil(loaded, case[1] .. " was accepted by " .. core.crypto_backend)
        assert.is_string(err)
        assert.matches(case[3], err, 1, case[1] .. " under " .. core.crypto_backend)
        for _, line in ipairs(lines) do
          for at = 1, #line - 15, 8 do
            assert.is_nil(err:find(line:sub(at, at + 15), 1, true), case[1] .. " quotes the key: " .. err)
          end
        end
        kinds[i] = kind(err)
      end
      assert.equal(kinds[1], kinds[2], case[1])
    end

    -- a certificate where a private key is needed: both read it as public
    for _, core in ipairs(cores) do
      local cert = assert(load_pem(core, "cert.pem"))
      assert.equal("public", cert:kind())
      assert.is_table(cert:certificate())
      assert.has_error(function() core.rsa_sign(cert, "x") end)
    end

    -- operations: the very same message from both
    local apiv3_key = ("0123456789abcdef"):rep(2)
    local op_cases = {
      { "a too-long OAEP plaintext", function(core) return core.rsa_encrypt(assert(load_pem(core, "spki.pem")), ("x"):rep(215)) end },
      { "an OAEP ciphertext for another key", function(core)
        local ct = assert(core.rsa_encrypt(assert(load_pem(core, "spki.pem")), "secret"))
        return core.rsa_decrypt(assert(load_pem(core, "other.pem")), ct) end },
      { "an OAEP ciphertext of the wrong length", function(core)
        return core.rsa_decrypt(assert(load_pem(core, "pkcs8.pem")), core.base64_encode(("\1"):rep(100))) end },
      { "a GCM tag mismatch", function(core)
        local sealed = assert(core.aes_gcm_encrypt(apiv3_key, "uluk4a9R25RW", "certificate", "body"))
        return core.aes_gcm_decrypt(apiv3_key, "uluk4a9R25RW", "transaction", sealed) end },
      { "bad base64 for GCM", function(core) return core.aes_gcm_decrypt(apiv3_key, "uluk4a9R25RW", "", "@@@@") end },
      { "a short GCM key", function(core) return core.aes_gcm_encrypt("short", "uluk4a9R25RW", "", "x") end },
      { "an empty GCM nonce", function(core) return core.aes_gcm_encrypt(apiv3_key, "", "", "x") end },
      { "bad ECB padding", function(core)
        return core.aes_ecb_decrypt(("k"):rep(32), core.base64_encode(("\0"):rep(32))) end },
      { "a ragged ECB ciphertext", function(core) return core.aes_ecb_decrypt(("k"):rep(32), core.base64_encode("abc")) end },
      { "bad base64", function(core) return core.base64_decode("QU=JQkND") end },
    }
    for _, case in ipairs(op_cases) do
      local messages = {}
      for i, core in ipairs(cores) do
        local value, err = case[2](core)
        assert.is_nil(value, case[1] .. " succeeded under " .. core.crypto_backend)
        assert.is_string(err)
        messages[i] = err
      end
      assert.equal(messages[1], messages[2], case[1])
    end
  end)

  it("do not carry one failure's error into the next call", function()
    for _, core in ipairs(cores) do
      local _, first = load_pem(core, "enc_aes256.pem", "nope")
      local ok = assert(load_pem(core, "pkcs8.pem"))
      assert.is_true(core.rsa_verify(ok, "m", assert(core.rsa_sign(ok, "m"))))
      local _, second = load_pem(core, "enc_aes256.pem", "nope")
      assert.equal(first, second)
      local _, garbled = core.key_from_pem(ossl.read(k["pkcs8.pem"]):gsub("\n", "\n!", 3))
      local _, again = core.key_from_pem(ossl.read(k["pkcs8.pem"]):gsub("\n", "\n!", 3))
      assert.equal(garbled, again)
    end
  end)

  -- k's PKCS#1 key with one of its numbers replaced (asn1parse -genconf writes
  -- the DER as given: openssl checks nothing on the way)
  local function damaged(field, change)
    local names = { "version", "n", "e", "d", "p", "q", "dp", "dq", "qinv" }
    local values, i = {}, 0
    for hex in ossl.run("openssl asn1parse -in " .. q(k["pkcs1.pem"])):gmatch("INTEGER%s*:(%x+)") do
      i = i + 1
      values[names[i]] = hex
    end
    values[field] = change(values[field])
    local conf = { "asn1=SEQUENCE:rsa_key", "[rsa_key]" }
    for _, name in ipairs(names) do conf[#conf + 1] = ("%s=INTEGER:0x%s"):format(name, values[name]) end
    local path = dir .. "/damaged_" .. field
    ossl.write(path .. ".conf", table.concat(conf, "\n") .. "\n")
    ossl.run("openssl asn1parse -genconf " .. q(path .. ".conf") .. " -out " .. q(path .. ".der") .. " -noout")
    return ossl.read(path .. ".der")
  end

  it("refuse a private key whose CRT numbers or d are damaged, though OpenSSL could sign with it", function()
    -- the last hex digit moved by one (kept odd or even as it was: still a valid INTEGER)
    local function bump(hex)
      local last = tonumber(hex:sub(-1), 16)
      return hex:sub(1, -2) .. ("%X"):format((last + 2) % 16)
    end
    for _, field in ipairs{ "dp", "dq", "qinv", "d" } do
      local der = damaged(field, bump)
      for _, core in ipairs(cores) do
        local key, err = core.key_from_der(der, "auto")
        assert.is_nil(key, field .. " under " .. core.crypto_backend)
        assert.matches("its RSA numbers do not belong together", err)
      end
    end
    -- the same numbers untouched load in both
    local der = damaged("dp", function(hex) return hex end)
    for _, core in ipairs(cores) do assert(core.key_from_der(der, "auto")) end
  end)

  it("agree on the edges: a GCM nonce over 128 bytes, a passphrase over 1024, an odd key size", function()
    local key = ("k"):rep(32)
    local sealed = {}
    for i, core in ipairs(cores) do
      local ct, err = core.aes_gcm_encrypt(key, ("n"):rep(129), "", "text")
      assert.is_nil(ct, core.crypto_backend)
      assert.equal("AES-GCM nonce is longer than 128 bytes", err)
      sealed[i] = assert(core.aes_gcm_encrypt(key, ("n"):rep(128), "", "text"))
    end
    for i, core in ipairs(cores) do
      assert.equal("text", core.aes_gcm_decrypt(key, ("n"):rep(128), "", sealed[#cores + 1 - i]))
    end

    local long = dir .. "/long_pass.pem"
    for _, n in ipairs{ 1024, 1025 } do
      -- pass: rather than file:, which openssl cuts at 1023 characters
      ossl.run("openssl pkcs8 -topk8 -in " .. q(k["pkcs8.pem"]) .. " -v2 aes256 -passout pass:"
        .. ("p"):rep(n) .. " -out " .. q(long))
      for _, core in ipairs(cores) do
        local loaded, err = core.key_from_pem(ossl.read(long), ("p"):rep(n))
        if n == 1024 then
          assert(loaded, core.crypto_backend .. ": " .. tostring(err))
        else
          assert.is_nil(loaded, core.crypto_backend)
          assert.equal("the passphrase is longer than 1024 bytes", err)
        end
      end
    end
    -- a key that asks for none takes any
    for _, core in ipairs(cores) do assert(core.key_from_pem(ossl.read(k["pkcs8.pem"]), ("p"):rep(1025))) end

    local odd = dir .. "/rsa2047.pem"
    ossl.run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2047 -out " .. q(odd))
    for _, core in ipairs(cores) do
      local loaded = assert(core.key_from_pem(ossl.read(odd)))
      assert.equal(2047, loaded:bits(), core.crypto_backend)
      assert.equal("wechatpay.key (private RSA-2047)", tostring(loaded))
    end
  end)

  it("read the first of several PEM blocks, both of them", function()
    local small = dir .. "/rsa1024.pem"
    ossl.run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out " .. q(small))
    ossl.run("openssl rsa -in " .. q(small) .. " -RSAPublicKey_out -out " .. q(small .. ".pub"))
    local broken = "-----BEGIN CERTIFICATE-----\nMIIBroken\n-----END CERTIFICATE-----\n"
    local cases = {
      { ossl.read(small) .. ossl.read(k["pkcs1.pem"]), 1024, "private" },
      { ossl.read(k["spki.pem"]) .. ossl.read(small .. ".pub"), 2048, "public" },
      { ossl.read(k["cert.pem"]) .. broken, 2048, "public" },
    }
    for i, case in ipairs(cases) do
      for _, core in ipairs(cores) do
        local loaded, err = core.key_from_pem(case[1])
        assert(loaded, ("case %d under %s: %s"):format(i, core.crypto_backend, tostring(err)))
        assert.equal(case[2], loaded:bits())
        assert.equal(case[3], loaded:kind())
      end
    end
  end)

  -- A key pasted into a config file or a Lua long string comes indented,
  -- with trailing tabs or a stray blank line: OpenSSL and mbedTLS each
  -- tolerated a different subset of these.  Both must read every one, and
  -- read the same key: its signature is the one `openssl dgst -sign` makes.
  it("read the same key from PEM with indented lines, trailing tabs, blank lines and CRLF", function()
    local legacy = dir .. "/legacy_aes128.pem"
    if not ossl.exists(legacy) then
      ossl.run("openssl rsa -in " .. q(k["pkcs8.pem"]) .. " -traditional -aes128 -passout pass:s3cret -out " .. q(legacy))
    end
    local message = "GET\n/v3/certificates\n1554208460\nnonce\n\n"
    local msg_file = ossl.write(dir .. "/pem_msg", message)
    local expected = cores[1].base64_encode(ossl.run("openssl dgst -sha256 -sign " .. q(k["pkcs8.pem"]) .. " " .. q(msg_file)))
    local function lines_of(text)
      local t = {}
      for line in text:gmatch("[^\n]+") do t[#t + 1] = line end
      return t
    end
    local variants = {
      { "indented by spaces", function(t) return "    " .. table.concat(lines_of(t), "\n    ") .. "\n" end },
      { "indented by tabs", function(t) return "\t\t" .. table.concat(lines_of(t), "\n\t\t") .. "\n" end },
      { "trailing tabs and spaces", function(t) return table.concat(lines_of(t), " \t\n") .. "\t\n" end },
      { "blank lines inside the base64", function(t)
        local l = lines_of(t)
        return table.concat(l, "\n", 1, #l - 3) .. "\n\n  \n" .. table.concat(l, "\n", #l - 2) .. "\n"
      end },
      { "CRLF and indented", function(t) return "  " .. table.concat(lines_of(t), "\r\n  ") .. "\r\n" end },
      { "a Lua long string's first newline and indentation", function(t)
        return "\n      " .. table.concat(lines_of(t), "\n      ") .. "\n    " end },
    }
    local forms = {
      { "pkcs8.pem", "private" }, { "pkcs1.pem", "private" }, { "enc_aes256.pem", "private", "s3cret" },
      { legacy, "private", "s3cret" }, { "spki.pem", "public" }, { "pkcs1_public.pem", "public" },
      { "cert.pem", "public" },
    }
    for _, form in ipairs(forms) do
      local text = ossl.read(form[1]:sub(1, 1) == "/" and form[1] or k[form[1]])
      for _, variant in ipairs(variants) do
        local pem = variant[2](text)
        for _, core in ipairs(cores) do
          local what = ("%s %s under %s"):format(form[1], variant[1], core.crypto_backend)
          local loaded, err = core.key_from_pem(pem, form[3])
          assert(loaded, what .. ": " .. tostring(err))
          assert.equal(form[2], loaded:kind(), what)
          assert.equal(2048, loaded:bits(), what)
          if form[2] == "private" then
            assert.equal(expected, core.rsa_sign(loaded, message), what)
          else
            assert.is_true(core.rsa_verify(loaded, message, expected), what)
          end
        end
      end
    end
    -- the headers of legacy encryption stay headers: with a wrong passphrase
    -- it is a wrong passphrase, not a key that cannot be parsed
    for _, core in ipairs(cores) do
      local _, err = core.key_from_pem(variants[1][2](ossl.read(legacy)), "nope")
      assert.equal("wrong passphrase for the encrypted private key", err)
    end
  end)

  -- OpenSSL's decoders stopped at the end of the structure and ignored what
  -- followed; mbedTLS refused it after a public key only.  Bytes after the
  -- key or certificate are refused by both, as DER and inside PEM.
  it("refuse bytes after the DER structure of every key form and a certificate", function()
    local cert_der = dir .. "/cert.der"
    ossl.run("openssl x509 -in " .. q(k["cert.pem"]) .. " -outform DER -out " .. q(cert_der))
    local forms = {
      { "spki.der", "public.spki", "PUBLIC KEY" }, { "pkcs1_public.der", "public.pkcs1", "RSA PUBLIC KEY" },
      { "pkcs8.der", "private.pkcs8", "PRIVATE KEY" }, { "pkcs1.der", "private.pkcs1", "RSA PRIVATE KEY" },
      { cert_der, "auto", "CERTIFICATE" },
    }
    local function pem(label, der)
      return "-----BEGIN " .. label .. "-----\n" .. cores[1].base64_encode(der):gsub(("."):rep(64), "%0\n")
        .. "\n-----END " .. label .. "-----\n"
    end
    for _, form in ipairs(forms) do
      local der = ossl.read(form[1]:sub(1, 1) == "/" and form[1] or k[form[1]])
      for _, core in ipairs(cores) do
        local what = form[1] .. " under " .. core.crypto_backend
        assert(core.key_from_der(der, form[2]), what)
        assert(core.key_from_pem(pem(form[3], der)), what)
        for _, junk in ipairs{ "\0", "JUNK", der } do
          for _, how in ipairs{ form[2], "auto" } do
            local loaded, err = core.key_from_der(der .. junk, how)
            assert.is_nil(loaded, what .. " as " .. how .. " with " .. #junk .. " bytes more")
            assert.equal(("trailing data after the DER structure (%d bytes)"):format(#junk), err)
          end
          local loaded, err = core.key_from_pem(pem(form[3], der .. junk))
          assert.is_nil(loaded, what .. " in PEM with " .. #junk .. " bytes more")
          assert.equal(("trailing data after the DER structure in the PEM block (%d bytes)"):format(#junk), err)
        end
      end
    end
  end)

  -- mbedTLS cannot read a private key with a third prime; OpenSSL loaded
  -- it, so a key would work on one build and not the other.
  it("refuse a multi-prime RSA private key, and read its public half", function()
    local three = dir .. "/rsa3p.pem"
    ossl.run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -pkeyopt rsa_keygen_primes:3 -out " .. q(three))
    ossl.run("openssl rsa -in " .. q(three) .. " -traditional -out " .. q(three .. ".pkcs1"))
    ossl.run("openssl pkey -in " .. q(three) .. " -outform DER -out " .. q(three .. ".der"))
    ossl.run("openssl pkey -in " .. q(three) .. " -pubout -out " .. q(three .. ".pub"))
    local msg_file = ossl.write(dir .. "/rsa3p_msg", "message")
    local sig = cores[1].base64_encode(ossl.run("openssl dgst -sha256 -sign " .. q(three) .. " " .. q(msg_file)))
    for _, core in ipairs(cores) do
      local loads = {
        { "PKCS#8 PEM", function() return core.key_from_pem(ossl.read(three)) end },
        { "PKCS#1 PEM", function() return core.key_from_pem(ossl.read(three .. ".pkcs1")) end },
        { "PKCS#8 DER", function() return core.key_from_der(ossl.read(three .. ".der"), "private.pkcs8") end },
        { "DER, auto", function() return core.key_from_der(ossl.read(three .. ".der"), "auto") end },
      }
      for _, load in ipairs(loads) do
        local loaded, err = load[2]()
        assert.is_nil(loaded, load[1] .. " under " .. core.crypto_backend)
        assert.matches("^unsupported private key: multi%-prime RSA %(more than two primes%)", err, 1,
          load[1] .. " under " .. core.crypto_backend)
      end
      assert.is_true(core.rsa_verify(assert(core.key_from_pem(ossl.read(three .. ".pub"))), "message", sig))
    end
  end)

  -- OpenSSL computes with no public exponent over 64 bits once the modulus
  -- is over 3072 bits: such a key loaded and then failed every operation
  -- there, while mbedTLS used it.  Both refuse it at load.
  it("refuse a public exponent over 64 bits with a modulus over 3072 bits, at load", function()
    local function make(name, bits, e)
      local path = dir .. "/" .. name
      ossl.run(("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:%d -pkeyopt rsa_keygen_pubexp:%s -out %s")
        :format(bits, e, q(path)))
      ossl.run("openssl pkey -in " .. q(path) .. " -pubout -out " .. q(path .. ".pub"))
      ossl.run("openssl req -x509 -key " .. q(path) .. " -subj /CN=big-e -days 30 -out " .. q(path .. ".crt"))
      return path
    end
    local e127 = "170141183460469231731687303715884105727"   -- 2^127 - 1
    local refused = make("rsa4096_e127.pem", 4096, e127)
    for _, core in ipairs(cores) do
      for _, name in ipairs{ refused, refused .. ".pub", refused .. ".crt" } do
        local loaded, err = core.key_from_pem(ossl.read(name))
        assert.is_nil(loaded, name .. " under " .. core.crypto_backend)
        assert.equal("unsupported RSA key: a public exponent over 64 bits with a modulus over 3072 bits", err)
      end
    end
    -- either limit alone is fine: a 64-bit exponent at 4096 bits, a 127-bit one at 2048
    local msg_file = ossl.write(dir .. "/big_e_msg", "message")
    for _, path in ipairs{ make("rsa4096_e64.pem", 4096, "18446744073709551557"), make("rsa2048_e127.pem", 2048, e127) } do
      for _, core in ipairs(cores) do
        local what = path .. " under " .. core.crypto_backend
        local sig = assert(core.rsa_sign(assert(core.key_from_pem(ossl.read(path)), what), "message"))
        local sig_file = ossl.write(dir .. "/big_e_sig", assert(core.base64_decode(sig)))
        assert.equal("Verified OK\n", ossl.run("openssl dgst -sha256 -verify " .. q(path .. ".pub")
          .. " -signature " .. q(sig_file) .. " " .. q(msg_file)), what)
        local ct = assert(core.rsa_encrypt(assert(core.key_from_pem(ossl.read(path .. ".crt"))), "secret"), what)
        local ct_file = ossl.write(dir .. "/big_e_ct", assert(core.base64_decode(ct)))
        assert.equal("secret", ossl.run("openssl pkeyutl -decrypt -inkey " .. q(path)
          .. " -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1 -in " .. q(ct_file)), what)
      end
    end
  end)

  it("refuse each other's key objects instead of misreading them", function()
    local a = assert(load_pem(cores[1], "pkcs8.pem"))
    local b = assert(load_pem(cores[2], "pkcs8.pem"))
    assert.has_error(function() cores[1].rsa_sign(b, "m") end)
    assert.has_error(function() cores[2].rsa_sign(a, "m") end)
    assert.equal("wechatpay.key (private RSA-2048)", tostring(a))
    assert.equal("wechatpay.key (private RSA-2048)", tostring(b))
  end)

  it("each run their own hashers, inflaters and sessions, and refuse the other's", function()
    -- sha256("abc"), FIPS 180-2's example
    local abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    local hashers, inflaters, sessions = {}, {}, {}
    for i, core in ipairs(cores) do
      hashers[i] = core.hasher("sha256")
      assert.equal(abc, hashers[i]:update("ab"):update("c"):final())
      inflaters[i] = core.inflater()
      sessions[i] = core.http_session()
      assert.matches("^wechatpay%.http_session", tostring(sessions[i]))
    end
    local other = { hashers[2], inflaters[2], sessions[2] }
    for i, object in ipairs{ hashers[1], inflaters[1], sessions[1] } do
      local methods = getmetatable(object).__index
      assert.are_not.equal(methods, getmetatable(other[i]).__index)
      local err = select(2, pcall(methods.close, other[i]))
      assert.matches("another build's or type's userdata", tostring(err), 1, true)
    end
    for i = 1, #cores do
      hashers[i]:close()
      inflaters[i]:close()
      sessions[i]:close()
    end
  end)
end)
