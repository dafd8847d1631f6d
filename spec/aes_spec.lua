-- AES as WeChat Pay uses it, checked against implementations that are not
-- ours: luaossl's openssl.cipher and Node's crypto (OpenSSL) for AES-GCM,
-- the openssl command line for AES-256-ECB with PKCS#7.
local aes = require("wechatpay.aes")
local base64 = require("wechatpay.base64")
local cipher = require("openssl.cipher")
local ossl = require("support.openssl")

local repo_root = ossl.repo_root
local hex = ossl.hex

describe("wechatpay.aes", function()
  local dir, node_script
  local q = ossl.quote
  local function tmp(name) return dir .. "/" .. name end

  local function random_bytes(n) return select(2, ossl.random_file(tmp("rand.bin"), n)) end

  -- luaossl: AES-GCM without associated data (it cannot set any)
  local function luaossl_gcm_encrypt(key, nonce, plaintext)
    local c = cipher.new("aes-" .. #key * 8 .. "-gcm"):encrypt(key, nonce)
    local ct = assert(c:update(plaintext)) .. assert(c:final())
    return ct .. c:getTag(16)
  end

  local function luaossl_gcm_decrypt(key, nonce, sealed)
    local c = cipher.new("aes-" .. #key * 8 .. "-gcm"):decrypt(key, nonce)
    c:setTag(sealed:sub(-16))
    local body = c:update(sealed:sub(1, -17))
    local last = c:final()
    if not body or not last then return nil end
    return body .. last
  end

  -- Node's crypto: AES-GCM with associated data
  local function node_gcm(mode, key, nonce, aad, input)
    local inp = ossl.write(tmp("node_in.bin"), input)
    local out = tmp("node_out.bin")
    os.remove(out)
    local ok = pcall(ossl.run, "node " .. q(node_script) .. " " .. mode .. " " .. q(hex(key)) .. " " .. q(hex(nonce))
      .. " " .. q(hex(aad)) .. " " .. q(inp) .. " " .. q(out))
    if not ok then return nil end
    return ossl.read(out)
  end

  local function openssl_ecb(key, data, decrypt, nopad)
    local inp = ossl.write(tmp("ecb_in.bin"), data)
    local out = tmp("ecb_out.bin")
    os.remove(out)
    ossl.run("openssl enc -aes-256-ecb" .. (decrypt and " -d" or "") .. (nopad and " -nopad" or "")
      .. " -K " .. hex(key) .. " -nosalt -in " .. q(inp) .. " -out " .. q(out))
    return ossl.read(out)
  end

  setup(function()
    dir = ossl.tmpdir()
    node_script = repo_root() .. "/spec/fixtures/gcm_node.js"
    assert(ossl.exists(node_script), node_script .. " is missing")
    -- node is the reference for AES-GCM with associated data: fail loudly when missing
    ossl.run("node --version")
  end)

  teardown(function() ossl.remove(dir) end)

  describe("AES-256-GCM", function()
    local apiv3_key = "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb"   -- 32 ASCII bytes, as an APIv3 key is
    local nonce = "uluk4a9R25RW"                         -- 12 ASCII bytes, as WeChat Pay sends

    local sizes = { 0, 1, 15, 16, 17, 1024, 1048576 }

    for _, n in ipairs(sizes) do
      it(("equals luaossl's aes-256-gcm without associated data, both ways, %d bytes"):format(n), function()
        local plaintext = random_bytes(n)
        local ours = assert(aes.gcm_encrypt(apiv3_key, nonce, "", plaintext))
        local theirs = luaossl_gcm_encrypt(apiv3_key, nonce, plaintext)
        assert.equal(#plaintext + 16, #theirs)
        assert.equal(base64.encode(theirs), ours)
        assert.equal(plaintext, aes.gcm_decrypt(apiv3_key, nonce, "", base64.encode(theirs)))
        assert.equal(plaintext, luaossl_gcm_decrypt(apiv3_key, nonce, assert(base64.decode(ours))))
      end)
    end

    it("with a random binary key and nonce, equals luaossl both ways", function()
      local key, iv, plaintext = random_bytes(32), random_bytes(12), random_bytes(1024)
      local ours = assert(aes.gcm_encrypt(key, iv, "", plaintext))
      assert.equal(base64.encode(luaossl_gcm_encrypt(key, iv, plaintext)), ours)
      assert.equal(plaintext, luaossl_gcm_decrypt(key, iv, assert(base64.decode(ours))))
    end)

    for _, n in ipairs{ 0, 1024, 1048576 } do
      for _, aad in ipairs{ "", "transaction", "certificate" } do
        it(("equals Node's aes-256-gcm with associated data %q, both ways, %d bytes"):format(aad, n), function()
          local plaintext = random_bytes(n)
          local ours = assert(aes.gcm_encrypt(apiv3_key, nonce, aad, plaintext))
          local theirs = assert(node_gcm("encrypt", apiv3_key, nonce, aad, plaintext))
          assert.equal(base64.encode(theirs), ours)
          assert.equal(plaintext, aes.gcm_decrypt(apiv3_key, nonce, aad, base64.encode(theirs)))
          assert.equal(plaintext, node_gcm("decrypt", apiv3_key, nonce, aad, assert(base64.decode(ours))))
        end)
      end
    end

    it("binary associated data and a random key equal Node's", function()
      local key, iv, aad, plaintext = random_bytes(32), random_bytes(12), random_bytes(77), random_bytes(100)
      local ours = assert(aes.gcm_encrypt(key, iv, aad, plaintext))
      assert.equal(base64.encode(assert(node_gcm("encrypt", key, iv, aad, plaintext))), ours)
    end)

    it("the associated data is really authenticated: Node refuses ours under another AAD", function()
      local ours = assert(aes.gcm_encrypt(apiv3_key, nonce, "transaction", "body"))
      assert.is_nil(node_gcm("decrypt", apiv3_key, nonce, "", assert(base64.decode(ours))))
      assert.equal("body", node_gcm("decrypt", apiv3_key, nonce, "transaction", assert(base64.decode(ours))))
    end)

    it("decrypt_resource decrypts a resource object sealed by Node", function()
      local plaintext = "{\"mchid\":\"1900000001\",\"trade_state\":\"SUCCESS\"}"
      local sealed = assert(node_gcm("encrypt", apiv3_key, nonce, "transaction", plaintext))
      local resource = {
        algorithm = "AEAD_AES_256_GCM", nonce = nonce, associated_data = "transaction",
        ciphertext = base64.encode(sealed), original_type = "transaction",
      }
      assert.equal(plaintext, aes.decrypt_resource(apiv3_key, resource))
      -- without associated_data the AAD is empty: Node's no-AAD ciphertext decrypts
      local bare = assert(node_gcm("encrypt", apiv3_key, nonce, "", plaintext))
      assert.equal(plaintext, aes.decrypt_resource(apiv3_key, { nonce = nonce, ciphertext = base64.encode(bare) }))
      local none, err, why = aes.decrypt_resource(apiv3_key, {
        algorithm = "AEAD_AES_128_CBC", nonce = nonce, ciphertext = base64.encode(sealed) })
      assert.is_nil(none)
      assert.matches("algorithm", err)
      assert.equal("malformed", why)
      -- fields from the network in the wrong type are reported, not raised
      local cjson = require("cjson")
      local from_null = cjson.decode(('{"nonce":"%s","associated_data":null,"ciphertext":"%s"}')
        :format(nonce, base64.encode(bare)))
      assert.equal(plaintext, aes.decrypt_resource(apiv3_key, from_null))
      none, err, why = aes.decrypt_resource(apiv3_key, { nonce = nonce, associated_data = 5, ciphertext = base64.encode(bare) })
      assert.is_nil(none)
      assert.equal("the resource's associated_data must be a string, got number", err)
      assert.equal("malformed", why)
    end)

    it("decrypt_resource says why it failed as core.open_notification does: malformed, or the key", function()
      local sealed = base64.encode(assert(node_gcm("encrypt", apiv3_key, nonce, "transaction", "{}")))
      local function resource(fields)
        local r = { algorithm = "AEAD_AES_256_GCM", nonce = nonce, associated_data = "transaction", ciphertext = sealed }
        for k, v in pairs(fields) do r[k] = v end
        return r
      end
      local cjson = require("cjson")
      for _, case in ipairs{
        { { nonce = "" }, "the resource's nonce is empty" },
        { { nonce = cjson.null }, "the resource's nonce is null" },
        { { ciphertext = 42 }, "the resource's ciphertext is number" },
        { { ciphertext = "%%%%" }, "not valid base64" },
        { { ciphertext = base64.encode("short") }, "shorter than its 16-byte tag" },
        { { associated_data = false }, "associated_data must be a string, got boolean" },
        { { algorithm = cjson.null }, "unsupported resource algorithm" },
      } do
        local none, err, why = aes.decrypt_resource(apiv3_key, resource(case[1]))
        assert.is_nil(none)
        assert.matches(case[2], err, 1, true)
        assert.equal("malformed", why, case[2])
      end
      local plaintext, err, why = aes.decrypt_resource(("k"):rep(32), resource{})
      assert.is_nil(plaintext)
      assert.is_string(err)
      assert.equal("decrypt", why)
      plaintext, err, why = aes.decrypt_resource("short", resource{})
      assert.is_nil(plaintext)
      assert.matches("32 bytes", err, 1, true)
      assert.equal("decrypt", why)
      plaintext, err, why = aes.decrypt_resource(apiv3_key, resource{ associated_data = "certificate" })
      assert.is_nil(plaintext)
      assert.equal("decrypt", why)   -- altered associated data: it does not open
      assert.equal("{}", aes.decrypt_resource(apiv3_key, resource{}))
      -- the core says the same without the Lua checks in front of it
      local core = require("wechatpay.core")
      assert.equal("decrypt", select(3, core.aes_gcm_decrypt("short", nonce, "", sealed)))
      assert.equal("decrypt", select(3, core.aes_gcm_decrypt(("k"):rep(32), nonce, "transaction", sealed)))
      assert.equal("malformed", select(3, core.aes_gcm_decrypt(apiv3_key, nonce, "transaction", "%%%%")))
    end)

    describe("refuses with nil and an error mentioning authentication", function()
      local aad, plaintext, sealed = "transaction", "{\"amount\":{\"total\":100}}", nil

      before_each(function()
        sealed = assert(node_gcm("encrypt", apiv3_key, nonce, aad, plaintext))
        -- the control: untouched, it decrypts
        assert.equal(plaintext, aes.gcm_decrypt(apiv3_key, nonce, aad, base64.encode(sealed)))
      end)

      local function flip(s, i)
        return s:sub(1, i - 1) .. string.char((s:byte(i) + 1) % 256) .. s:sub(i + 1)
      end

      local function refused(key, iv, ad, b64)
        local pt, err = aes.gcm_decrypt(key, iv, ad, b64)
        assert.is_nil(pt)
        assert.is_string(err)
        assert.matches("authentication", err)
      end

      it("a tampered ciphertext", function()
        refused(apiv3_key, nonce, aad, base64.encode(flip(sealed, 1)))
        refused(apiv3_key, nonce, aad, base64.encode(flip(sealed, #plaintext)))
      end)

      it("a tampered tag", function()
        refused(apiv3_key, nonce, aad, base64.encode(flip(sealed, #sealed)))
        refused(apiv3_key, nonce, aad, base64.encode(flip(sealed, #plaintext + 1)))
      end)

      it("a truncated ciphertext with its tag kept", function()
        refused(apiv3_key, nonce, aad, base64.encode(sealed:sub(2)))
      end)

      it("wrong associated data", function()
        refused(apiv3_key, nonce, "", base64.encode(sealed))
        refused(apiv3_key, nonce, "certificate", base64.encode(sealed))
        refused(apiv3_key, nonce, aad .. "\0", base64.encode(sealed))
      end)

      it("a wrong nonce", function()
        refused(apiv3_key, "uluk4a9R25RX", aad, base64.encode(sealed))
        refused(apiv3_key, nonce .. "0", aad, base64.encode(sealed))
      end)

      it("a wrong key", function()
        refused("b7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb", nonce, aad, base64.encode(sealed))
      end)
    end)

    it("a key of 31 or 33 bytes gives nil and an error naming 32 bytes", function()
      local sealed = base64.encode(luaossl_gcm_encrypt(apiv3_key, nonce, "x"))
      for _, bad in ipairs{ apiv3_key:sub(1, 31), apiv3_key .. "x", "", apiv3_key:sub(1, 16) } do
        local pt, err = aes.gcm_decrypt(bad, nonce, "", sealed)
        assert.is_nil(pt)
        assert.matches("32 bytes", err)
        local ct, err2 = aes.gcm_encrypt(bad, nonce, "", "x")
        assert.is_nil(ct)
        assert.matches("32 bytes", err2)
      end
    end)

    it("a 16-byte key with allow_short_key is AES-128-GCM as luaossl computes it", function()
      local key16 = "mockAPIv3Key1234"
      local ours = assert(aes.gcm_encrypt(key16, nonce, "", "short key", { allow_short_key = true }))
      assert.equal(base64.encode(luaossl_gcm_encrypt(key16, nonce, "short key")), ours)
      assert.equal("short key", aes.gcm_decrypt(key16, nonce, "", ours, { allow_short_key = true }))
    end)

    it("invalid base64 gives nil, err", function()
      local sealed = base64.encode(luaossl_gcm_encrypt(apiv3_key, nonce, "some plaintext"))
      for _, bad in ipairs{ "!!!!" .. sealed:sub(5), sealed:sub(1, -2), sealed .. "A", "@" } do
        local pt, err = aes.gcm_decrypt(apiv3_key, nonce, "", bad)
        assert.is_nil(pt)
        assert.is_string(err)
      end
    end)

    it("a ciphertext shorter than its 16-byte tag gives nil, err", function()
      for _, n in ipairs{ 0, 1, 15 } do
        local pt, err = aes.gcm_decrypt(apiv3_key, nonce, "", base64.encode(random_bytes(n)))
        assert.is_nil(pt)
        assert.is_string(err)
      end
    end)

    it("encryption is deterministic for a key and nonce, and differs with the nonce", function()
      local a = assert(aes.gcm_encrypt(apiv3_key, nonce, "", "same"))
      assert.equal(a, aes.gcm_encrypt(apiv3_key, nonce, "", "same"))
      assert.are_not.equal(a, aes.gcm_encrypt(apiv3_key, "uluk4a9R25RX", "", "same"))
    end)
  end)

  describe("AES-256-ECB with PKCS#7", function()
    local key = "0123456789abcdef0123456789abcdef"

    for _, n in ipairs{ 0, 1, 15, 16, 17, 1000 } do
      it(("equals openssl enc -aes-256-ecb both ways, %d bytes"):format(n), function()
        local plaintext = random_bytes(n)
        local theirs = openssl_ecb(key, plaintext)
        assert.equal((math.floor(n / 16) + 1) * 16, #theirs)
        local ours = assert(aes.ecb_encrypt(key, plaintext))
        assert.equal(base64.encode(theirs), ours)
        assert.equal(plaintext, aes.ecb_decrypt(key, base64.encode(theirs)))
        assert.equal(plaintext, openssl_ecb(key, assert(base64.decode(ours)), true))
      end)
    end

    it("with a random binary key equals openssl", function()
      local k2, plaintext = random_bytes(32), random_bytes(100)
      assert.equal(base64.encode(openssl_ecb(k2, plaintext)), aes.ecb_encrypt(k2, plaintext))
    end)

    it("bad padding gives nil, err (openssl refuses the same blocks)", function()
      local blocks = {
        ("A"):rep(15) .. "\0",            -- padding byte 0
        ("A"):rep(15) .. "\17",           -- padding longer than a block
        ("A"):rep(14) .. "\3\2",          -- inconsistent padding bytes
        ("A"):rep(13) .. "\3\4\3",        -- a wrong byte inside the padding
        ("A"):rep(16) .. ("\16"):rep(15) .. "\32",
      }
      for _, block in ipairs(blocks) do
        local ct = openssl_ecb(key, block, false, true)   -- raw blocks, no padding added
        assert.equal(#block, #ct)
        assert.has_error(function() openssl_ecb(key, ct, true) end)
        local pt, err = aes.ecb_decrypt(key, base64.encode(ct))
        assert.is_nil(pt)
        assert.matches("padding", err)
      end
    end)

    it("a wrong key gives what openssl gives: nil, err where openssl refuses", function()
      local plaintext = "<root><refund_status>SUCCESS</refund_status></root>"
      local ct = openssl_ecb(key, plaintext)
      local refusals = 0
      for i = 1, 8 do
        local wrong = key:sub(1, 31) .. string.char(string.byte("A") + i)
        local ok, theirs = pcall(openssl_ecb, wrong, ct, true)
        local pt, err = aes.ecb_decrypt(wrong, base64.encode(ct))
        if ok then
          assert.equal(theirs, pt)
        else
          refusals = refusals + 1
          assert.is_nil(pt)
          assert.is_string(err)
        end
      end
      assert.is_true(refusals > 0)
    end)

    it("a ciphertext that is not whole blocks, empty or invalid base64 gives nil, err", function()
      for _, bad in ipairs{ base64.encode(random_bytes(15)), base64.encode(random_bytes(17)), "", "!!!!" } do
        local pt, err = aes.ecb_decrypt(key, bad)
        assert.is_nil(pt)
        assert.is_string(err)
      end
    end)

    it("a key of 31 or 33 bytes gives nil, err naming 32 bytes", function()
      for _, bad in ipairs{ key:sub(1, 31), key .. "x" } do
        local ct, err = aes.ecb_encrypt(bad, "x")
        assert.is_nil(ct)
        assert.matches("32 bytes", err)
        local pt, err2 = aes.ecb_decrypt(bad, base64.encode(openssl_ecb(key, "x")))
        assert.is_nil(pt)
        assert.matches("32 bytes", err2)
      end
    end)

    it("network data that is missing, empty or not a string gives nil, err and never raises", function()
      local apiv2_key = "192006250b4c09247ec02edce69f6a2d"
      local function answered(label, fn, ...)
        local ok, pt, err = pcall(fn, ...)
        assert.is_true(ok, label .. " raised: " .. tostring(pt))
        assert.is_nil(pt, label)
        assert.is_string(err, label)
        return err
      end
      for _, bad in ipairs{ { "nil", nil }, { "false", false }, { "a number", 42 }, { "a table", {} }, { "empty", "" } } do
        local what, value = bad[1], bad[2]
        assert.matches("req_info", answered("refund req_info " .. what, aes.decrypt_refund_notification, apiv2_key, value))
        assert.matches("ciphertext", answered("ecb ciphertext " .. what, aes.ecb_decrypt, key, value))
        assert.matches("ciphertext", answered("gcm ciphertext " .. what, aes.gcm_decrypt, key, "uluk4a9R25RW", "", value))
        assert.matches("nonce", answered("gcm nonce " .. what, aes.gcm_decrypt, key, value, "", "AAAA"))
        answered("resource nonce " .. what, aes.decrypt_resource, key, { nonce = value, ciphertext = "AAAA" })
        answered("resource ciphertext " .. what, aes.decrypt_resource, key, { nonce = "uluk4a9R25RW", ciphertext = value })
        if value ~= nil and value ~= "" then
          assert.matches("associated_data",
            answered("gcm associated_data " .. what, aes.gcm_decrypt, key, "uluk4a9R25RW", value, "AAAA"))
        end
      end
    end)

    it("decrypt_refund_notification keys AES with the hex MD5 of the APIv2 key, as openssl computes it", function()
      local apiv2_key = "192006250b4c09247ec02edce69f6a2d"
      local md5 = ossl.run("printf %s " .. q(apiv2_key) .. " | openssl dgst -md5 -r"):match("^(%x+)")
      assert.equal(32, #md5)
      local req_info = "<root><out_refund_no><![CDATA[131811191610442717309]]></out_refund_no>"
        .. "<refund_status><![CDATA[SUCCESS]]></refund_status></root>"
      local ct = openssl_ecb(md5, req_info)     -- the key is the 32 ASCII hex digits
      assert.equal(req_info, aes.decrypt_refund_notification(apiv2_key, base64.encode(ct)))
      -- a raw-MD5 key (16 bytes) would be another cipher altogether: not what is used
      local pt = aes.decrypt_refund_notification(apiv2_key .. "x", base64.encode(ct))
      assert.are_not.equal(req_info, pt)
      local none, err = aes.decrypt_refund_notification("", base64.encode(ct))
      assert.is_nil(none)
      assert.is_string(err)
    end)
  end)
end)
