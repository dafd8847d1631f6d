-- Digests, HMAC and base64 checked against the openssl command line.
local hash = require("wechatpay.hash")
local base64 = require("wechatpay.base64")
local ossl = require("support.openssl")

local hex = ossl.hex

describe("wechatpay.hash and wechatpay.base64 against openssl", function()
  local dir
  local q = ossl.quote
  local function tmp(name) return dir .. "/" .. name end

  local function random_bytes(n, name) return ossl.random_file(tmp(name or "rand.bin"), n) end

  -- `openssl dgst -r` prints "<hex> *<file>"
  local function dgst(options, path)
    local out = ossl.run("openssl dgst " .. options .. " -r " .. q(path))
    return assert(out:match("^(%x+)"), out)
  end

  setup(function()
    dir = ossl.tmpdir()
    random_bytes(65537, "blob.bin")
  end)

  teardown(function() ossl.remove(dir) end)

  local inputs = {
    { "the empty string", "" },
    { "abc", "abc" },
    { "a string to sign", "GET\n/v3/certificates\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n" },
    { "Chinese UTF-8", "微信支付" },
    { "binary bytes with NUL", "\0\255\0\1\2\128\0" },
    { "exactly one 64-byte block", ("x"):rep(64) },
    { "55 bytes (the padding boundary)", ("y"):rep(55) },
    { "56 bytes", ("z"):rep(56) },
  }

  describe("digests equal openssl dgst", function()
    for _, input in ipairs(inputs) do
      it(input[1], function()
        local path = ossl.write(tmp("in.bin"), input[2])
        assert.equal(dgst("-sha256", path), hash.sha256(input[2]))
        assert.equal(dgst("-sha1", path), hash.sha1(input[2]))
        assert.equal(dgst("-md5", path), hash.md5(input[2]))
      end)
    end

    it("64 KiB of random bytes", function()
      local path = tmp("blob.bin")
      local data = ossl.read(path)
      assert.equal(dgst("-sha256", path), hash.sha256(data))
      assert.equal(dgst("-sha1", path), hash.sha1(data))
      assert.equal(dgst("-md5", path), hash.md5(data))
    end)

    it("are lower-case hex of the right length", function()
      assert.matches("^[0-9a-f]+$", hash.sha256("x"))
      assert.equal(64, #hash.sha256("x"))
      assert.equal(40, #hash.sha1("x"))
      assert.equal(32, #hash.md5("x"))
    end)
  end)

  describe("hmac_sha256 equals openssl", function()
    local keys = {
      { "a text key", "192006250b4c09247ec02edce69f6a2d" },
      { "a one-byte key", "k" },
      { "a key longer than the 64-byte block", ("long key "):rep(10) },
    }
    for _, k in ipairs(keys) do
      it("dgst -sha256 -hmac with " .. k[1], function()
        for _, input in ipairs(inputs) do
          local path = ossl.write(tmp("in.bin"), input[2])
          assert.equal(dgst("-sha256 -hmac " .. q(k[2]), path), hash.hmac_sha256(k[2], input[2]), input[1])
        end
      end)
    end

    it("-mac HMAC -macopt hexkey: with binary keys", function()
      for _, n in ipairs{ 1, 16, 32, 64, 65, 200 } do
        local _, key = random_bytes(n, "key.bin")
        key = "\0" .. key .. "\0"    -- NULs at both ends
        local path = tmp("blob.bin")
        local expected = dgst("-sha256 -mac HMAC -macopt hexkey:" .. hex(key), path)
        assert.equal(expected, hash.hmac_sha256(key, ossl.read(path)), "key of " .. #key .. " bytes")
      end
    end)

    it("depends on the key and on the message", function()
      local path = ossl.write(tmp("in.bin"), "message")
      assert.are_not.equal(dgst("-sha256 -hmac " .. q("key2"), path), hash.hmac_sha256("key1", "message"))
      assert.are_not.equal(hash.hmac_sha256("key", "message"), hash.hmac_sha256("key", "message "))
    end)
  end)

  describe("base64", function()
    it("encode equals openssl base64 -A for 0..20 random bytes, and decodes openssl's output", function()
      for n = 0, 20 do
        local path, data = random_bytes(n)
        local theirs = ossl.base64_file(path)
        assert.equal(theirs, base64.encode(data), n .. " bytes")
        assert.equal(data, base64.decode(theirs), n .. " bytes")
      end
    end)

    it("encode equals openssl for a 100 KB blob, and decode round-trips openssl's output", function()
      local path, data = random_bytes(100000, "100k.bin")
      local theirs = ossl.base64_file(path)
      assert.equal(theirs, base64.encode(data))
      assert.equal(data, base64.decode(theirs))
    end)

    it("decode gives what openssl base64 -d gives", function()
      for _, text in ipairs{ "QUJD", "QUI=", "QQ==", "", "+/+/", "AAECAwQFBgcICQ==" } do
        local path = ossl.write(tmp("b64.txt"), text .. "\n")
        local out = tmp("b64.bin")
        ossl.run("openssl base64 -d -A -in " .. q(path) .. " -out " .. q(out))
        assert.equal(ossl.read(out), base64.decode(text), text)
      end
    end)

    it("decode returns nil, err for malformed input", function()
      local bad = {
        "QUJ!",          -- a character outside the alphabet
        "QU-D",          -- base64url, not standard
        "QU_D",
        "QUJ",           -- wrong length
        "QUJDR",
        "Q",
        "=",
        "QUJDRA=",       -- padding, wrong length
        "QQ==QUJD",      -- padding in the middle
        "QU=D",
        "Q=JD",
        "====",
        "Q===",
        "QUJD\n",        -- whitespace
        "QUJD REVG",
        " QUJD",
        "QUJD\r\nREVG",
        "QU\tJD",
        "QUJD\0",        -- a NUL
        "QR==",          -- non-zero bits under the padding: "QQ==" is the one encoding of "A"
        "QUF=",          -- likewise for two bytes: "QUE=" is "AA", "QUF=" must not decode
      }
      for _, text in ipairs(bad) do
        local out, err = base64.decode(text)
        assert.is_nil(out, ("%q"):format(text))
        assert.is_string(err)
      end
    end)

    it("encode of binary data with NUL round-trips", function()
      local data = "\0\0\0\255\254\0"
      local path = ossl.write(tmp("nul.bin"), data)
      assert.equal(ossl.base64_file(path), base64.encode(data))
      assert.equal(data, base64.decode(base64.encode(data)))
    end)
  end)

  describe("equals", function()
    it("is true for equal strings", function()
      assert.is_true(hash.equals("", ""))
      assert.is_true(hash.equals("abc", "abc"))
      assert.is_true(hash.equals("a\0b", "a\0b"))
      local long = ("s"):rep(10000)
      assert.is_true(hash.equals(long, ("s"):rep(10000)))
    end)

    it("is false for different strings of one length, wherever they differ", function()
      assert.is_false(hash.equals("abc", "abd"))
      assert.is_false(hash.equals("abc", "bbc"))
      assert.is_false(hash.equals("a\0b", "a\0c"))
      assert.is_false(hash.equals("\0", "\1"))
      assert.is_false(hash.equals("\128", "\0"))
    end)

    it("is false for different lengths, a prefix included", function()
      assert.is_false(hash.equals("abc", "abcd"))
      assert.is_false(hash.equals("abcd", "abc"))
      assert.is_false(hash.equals("", "a"))
      assert.is_false(hash.equals("a", ""))
      assert.is_false(hash.equals("abc", "abc\0"))
    end)

    it("compares hex digests as a signature check would", function()
      local path = ossl.write(tmp("in.bin"), "payload")
      local theirs = dgst("-sha256 -hmac " .. q("secret"), path)
      assert.is_true(hash.equals(theirs, hash.hmac_sha256("secret", "payload")))
      assert.is_false(hash.equals(theirs, hash.hmac_sha256("secret", "payload!")))
      assert.is_false(hash.equals(theirs:upper(), hash.hmac_sha256("secret", "payload")))
    end)
  end)
end)
