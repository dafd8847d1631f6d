-- Inputs the fuzzers (scripts/fuzz.sh) saved in spec/fixtures/fuzz/, and
-- hand-made nasty ones, through the Lua API: each must end in a value or in
-- nil plus a message, never in a crash, and keep the harness's round trips.
-- A file is decoded as its harness decodes it (csrc/fuzz_<harness>.c).
local key = require("wechatpay.key")
local base64 = require("wechatpay.base64")
local aes = require("wechatpay.aes")
local rsa = require("wechatpay.rsa")
local verify = require("wechatpay.verify")
local ossl = require("support.openssl")

local FIXTURES = "spec/fixtures/fuzz"
local MESSAGE = "GET\n/v3/certificates\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n"

local function refused(value, err)
  assert.is_nil(value)
  assert.is_string(err)
  assert.is_true(#err > 0)
end

-- Either a value, or nil and a message.
local function answered(value, err)
  if value == nil then refused(value, err) end
  return value
end

local function fixture_files()
  local names = {}
  local pipe = io.popen("ls -1 " .. FIXTURES .. " 2>/dev/null")
  if pipe then
    for name in pipe:lines() do
      local harness = name:match("^(%w+)%-")
      if harness then names[#names + 1] = { name = name, harness = harness } end
    end
    pipe:close()
  end
  return names
end

local function pem_of(label, der)
  local b64, lines = base64.encode(der), {}
  for i = 1, #b64, 64 do lines[#lines + 1] = b64:sub(i, i + 63) end
  return "-----BEGIN " .. label .. "-----\n" .. table.concat(lines, "\n") .. (#b64 > 0 and "\n" or "")
    .. "-----END " .. label .. "-----\n"
end

-- What a client does with a key; what signs must verify.
local function exercise(k)
  assert.is_true(key.is_key(k))
  assert.is_string(tostring(k))
  local bits = k:bits()
  assert.is_true(bits > 0 and bits <= 8192)
  -- a signature of the right length that does not verify
  assert.is_false(rsa.verify(k, MESSAGE, base64.encode(string.rep("Z", math.floor((bits + 7) / 8)))))
  answered(rsa.encrypt(k, "a name of 20 bytes..:"))
  if k:kind() == "private" and bits <= 1024 then
    local sig = answered(rsa.sign(k, MESSAGE))
    if sig then assert.is_true(rsa.verify(k, MESSAGE, sig)) end
  end
end

local DER_FORMS = { "private.pkcs8", "private.pkcs1", "public.pkcs1", "public.spki" }

-- Every way a DER blob reaches the C parser from Lua: each wechatpay-php
-- form, and a file:// path (which tries them all).
local function load_der_every_way(der, tmpdir)
  local loaded = {}
  for _, form in ipairs(DER_FORMS) do
    loaded[#loaded + 1] = answered(key.load(form .. "://" .. base64.encode(der))) or nil
  end
  local path = ossl.write(tmpdir .. "/der", der)
  loaded[#loaded + 1] = answered(key.load("file://" .. path)) or nil
  return loaded
end

-- ---- the harnesses' input formats ----------------------------------------

local PEM_LABELS = {
  [1] = "PRIVATE KEY", [2] = "RSA PRIVATE KEY", [3] = "ENCRYPTED PRIVATE KEY",
  [4] = "PUBLIC KEY", [5] = "RSA PUBLIC KEY", [6] = "CERTIFICATE",
}

local function replay_pem(data, tmpdir)
  if #data < 1 then return end
  local sel, rest = data:byte(1), data:sub(2)
  local mode, pass = sel % 4, nil
  if mode == 1 then
    pass = "s3cret"
  elseif mode == 2 then
    pass = ""
  elseif mode == 3 then
    if #rest < 1 then return end
    local n = math.min(rest:byte(1) % 33, #rest - 1)
    pass, rest = rest:sub(2, 1 + n), rest:sub(2 + n)
  end
  local label = PEM_LABELS[math.floor(sel / 4) % 8]
  local pem = label and pem_of(label, rest) or rest
  -- key.load reads "file://" and "form://" sources itself; those are not PEM
  if not pem:find("^file://") and not pem:find("^%a+%.%w+://") then
    local k = answered(key.load(pem, pass))
    if k then exercise(k) end
  end
  for _, k in ipairs(load_der_every_way(rest, tmpdir)) do exercise(k) end
end

local function replay_base64(data)
  local decoded, err = base64.decode(data)
  if decoded then
    assert.equal(data, base64.encode(decoded))   -- one encoding per byte string
  else
    refused(decoded, err)
  end
  assert.equal(data, base64.decode(base64.encode(data)))
end

-- A signature or RSA ciphertext as it arrives in a header or a response
-- (a Lua-level finding; no C harness makes these).
local function replay_signature(data, tmpdir, keys)
  assert.is_false(rsa.verify(keys.public, MESSAGE, data))
  refused(rsa.decrypt(keys.private, data))
  local serial = "PUB_KEY_ID_0114232134912410000000000000"
  refused(verify.signed({ [serial] = keys.public }, {
    ["wechatpay-timestamp"] = tostring(os.time()), ["wechatpay-nonce"] = "593BEC0C930BF1AFEB40B4A08C8FB242",
    ["wechatpay-serial"] = serial, ["wechatpay-signature"] = data,
  }, '{"id":"EV-2018022511223320873"}'))
end

local function replay_gcm(data)
  if #data < 3 then return end
  local sel, ivlen, aadlen = data:byte(1, 3)
  local keylen = ({ 16, 24, 32 })[sel % 4 + 1] or math.floor(sel / 4) % 40
  ivlen = ivlen % 64
  local pos = 4
  local function take(n)
    local s = data:sub(pos, pos + n - 1)
    pos = pos + n
    return s .. string.rep("\0", n - #s)
  end
  local k, iv, aad = take(keylen), take(ivlen), take(aadlen)
  local plain = data:sub(pos)
  local opts = { allow_short_key = true }
  answered(aes.gcm_decrypt(k, iv, aad, base64.encode(plain), opts))
  local sealed = answered(aes.gcm_encrypt(k, iv, aad, plain, opts))
  if sealed then assert.equal(plain, aes.gcm_decrypt(k, iv, aad, sealed, opts)) end
  answered(aes.ecb_decrypt(k, base64.encode(plain)))
  local ecb = answered(aes.ecb_encrypt(k, plain))
  if ecb then assert.equal(plain, aes.ecb_decrypt(k, ecb)) end
end

-- A fresh 2048-bit key pair, made by openssl.
local function make_keys(tmpdir)
  local q = ossl.quote(tmpdir .. "/k.pem")
  ossl.run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. q)
  ossl.run("openssl pkcs8 -topk8 -nocrypt -in " .. q .. " -outform DER -out " .. ossl.quote(tmpdir .. "/k.der"))
  local pem = ossl.read(tmpdir .. "/k.pem")
  return {
    pem = pem,
    der = ossl.read(tmpdir .. "/k.der"),
    private = assert(key.private(pem)),
    public = assert(key.public(ossl.run("openssl pkey -pubout -in " .. q))),
  }
end

describe("fuzz regressions", function()
  local tmpdir, keys
  setup(function()
    tmpdir = ossl.tmpdir()
    keys = make_keys(tmpdir)
  end)
  teardown(function() ossl.remove(tmpdir) end)

  local replay = { pem = replay_pem, base64 = replay_base64, gcm = replay_gcm, signature = replay_signature }
  for _, file in ipairs(fixture_files()) do
    it("replays " .. file.name, function()
      local fn = replay[file.harness]
      assert.is_function(fn, "no replay for harness " .. file.harness)
      fn(ossl.read(FIXTURES .. "/" .. file.name), tmpdir, keys)
    end)
  end
end)

describe("hand-made nasty inputs", function()
  local tmpdir, pem, der, private_key, public_key
  local KEY32 = string.rep("k", 32)

  setup(function()
    tmpdir = ossl.tmpdir()
    local keys = make_keys(tmpdir)
    pem, der, private_key, public_key = keys.pem, keys.der, keys.private, keys.public
  end)

  teardown(function() ossl.remove(tmpdir) end)

  describe("PEM", function()
    it("truncated anywhere is refused", function()
      for _, n in ipairs({ 11, 27, 28, 40, 100, math.floor(#pem / 2), #pem - 30, #pem - 26, #pem - 2 }) do
        refused(key.load(pem:sub(1, n)))
      end
    end)

    it("without its END line, or with the END line of another label, is refused", function()
      local body = pem:gsub("%-%-%-%-%-END [^\n]*\n?$", "")
      refused(key.load(body))
      refused(key.load(body .. "-----END PUBLIC KEY-----\n"))
    end)

    it("with 4 MiB of base64 is refused", function()
      local huge = string.rep(string.rep("A", 64) .. "\n", 65536)
      refused(key.load("-----BEGIN PRIVATE KEY-----\n" .. huge .. "-----END PRIVATE KEY-----\n"))
      refused(key.load("-----BEGIN PUBLIC KEY-----\n" .. huge .. "-----END PUBLIC KEY-----\n"))
      refused(key.load("-----BEGIN CERTIFICATE-----\n" .. huge .. "-----END CERTIFICATE-----\n"))
      refused(key.load("-----BEGIN ENCRYPTED PRIVATE KEY-----\n" .. huge
        .. "-----END ENCRYPTED PRIVATE KEY-----\n", "s3cret"))
    end)

    it("with a DER header claiming 4 GiB inside is refused", function()
      local bogus = "\48\132\255\255\255\255\2\1\0" .. string.rep("\0", 64)
      for _, label in pairs(PEM_LABELS) do
        refused(key.load(pem_of(label, bogus), "s3cret"))
        refused(key.load(pem_of(label, bogus)))
      end
    end)

    it("with a NUL in the middle is refused", function()
      refused(key.load(pem:sub(1, 200) .. "\0" .. pem:sub(202)))
    end)
  end)

  describe("DER", function()
    local bogus = {
      ["4 GiB length"] = "\48\132\255\255\255\255\2\1\0",
      ["length past the end"] = "\48\130\255\255\2\1\0",
      ["indefinite length"] = "\48\128\2\1\0\0\0",
      ["inner longer than outer"] = "\48\3\2\5\0",
      ["length of length 0x89"] = "\48\137\1\2\3\4\5\6\7\8\9",
      ["empty"] = "",
      ["one byte"] = "\48",
    }
    for name, blob in pairs(bogus) do
      it("with a " .. name .. " is refused in every form", function()
        for _, form in ipairs(DER_FORMS) do refused(key.load(form .. "://" .. base64.encode(blob))) end
        refused(key.load("file://" .. ossl.write(tmpdir .. "/bogus.der", blob)))
      end)
    end

    it("a real key with its outer length off by one is refused", function()
      local b2, b3 = der:byte(3, 4)   -- 30 82 hi lo
      local len = b2 * 256 + b3
      for _, delta in ipairs({ -1, 1, 256 }) do
        local n = len + delta
        local bad = der:sub(1, 2) .. string.char(math.floor(n / 256) % 256, n % 256) .. der:sub(5)
        for _, form in ipairs(DER_FORMS) do refused(key.load(form .. "://" .. base64.encode(bad))) end
      end
    end)

    it("an RSA public key over 8192 bits is refused, not overflowing a 1024-byte buffer", function()
      -- RSAPublicKey { n INTEGER (1100 bytes), e INTEGER 65537 }
      local n = "\0\255" .. string.rep("\171", 1098) .. "\1"
      local int = "\2\130" .. string.char(math.floor(#n / 256), #n % 256) .. n
      local body = int .. "\2\3\1\0\1"
      local blob = "\48\130" .. string.char(math.floor(#body / 256), #body % 256) .. body
      local k, err = key.load("public.pkcs1://" .. base64.encode(blob))
      if k then exercise(k) else refused(k, err) end
    end)
  end)

  describe("base64", function()
    it("with '=' in the middle is refused", function()
      for _, s in ipairs({ "QU=JQkND", "AB==CD==", "Zg==Zg==", "Z===", "====", "=", "Zm9v=", "Zm=v" }) do
        refused(base64.decode(s))
        refused(key.load("private.pkcs8://" .. s))
        refused(aes.gcm_decrypt(KEY32, "nonce", "", s))
        refused(aes.ecb_decrypt(KEY32, s))
        assert.is_false(rsa.verify(public_key, MESSAGE, s))
      end
    end)

    it("with whitespace, a bad length or bytes outside the alphabet is refused", function()
      for _, s in ipairs({ "Zm9v\n", " Zm9v", "Zm9", "Zm9v-_==", "Zm9v\0\0\0\0", "\255\255\255\255" }) do
        refused(base64.decode(s))
      end
    end)

    -- 1368 characters without padding decode to 1026 bytes, two more than
    -- the 1024-byte signature buffer of the C verify and decrypt.
    it("a 1366-1372 character signature is false, and as RSA ciphertext refused", function()
      for _, n in ipairs({ 1364, 1366, 1367, 1368, 1372 }) do
        for _, tail in ipairs({ "", "=", "==" }) do
          local s = string.rep("A", n - #tail) .. tail
          assert.is_false(rsa.verify(public_key, MESSAGE, s))
          refused(rsa.decrypt(private_key, s))
        end
      end
    end)

    it("the same signatures on a callback or response are refused by verify.signed", function()
      local serial = "PUB_KEY_ID_0114232134912410000000000000"
      for _, n in ipairs({ 1364, 1367, 1368, 1372 }) do
        local headers = {
          ["wechatpay-timestamp"] = tostring(os.time()), ["wechatpay-nonce"] = "593BEC0C930BF1AFEB40B4A08C8FB242",
          ["wechatpay-serial"] = serial, ["wechatpay-signature"] = string.rep("A", n),
        }
        refused(verify.signed({ [serial] = public_key }, headers, '{"id":"EV-2018022511223320873"}'))
      end
    end)
  end)

  describe("AES", function()
    it("a 1-byte GCM ciphertext is refused, as is anything shorter than the tag", function()
      for _, ct in ipairs({ "x", "", string.rep("x", 15) }) do
        local plain, err = aes.gcm_decrypt(KEY32, "123456789012", "certificate", base64.encode(ct))
        refused(plain, err)
      end
      refused(aes.decrypt_resource(KEY32, { nonce = "123456789012", ciphertext = base64.encode("x") }))
    end)

    it("a bare 16-byte tag with a wrong value is refused", function()
      refused(aes.gcm_decrypt(KEY32, "123456789012", "", base64.encode(string.rep("\0", 16))))
    end)

    it("an empty nonce or a bad key length is refused", function()
      refused(aes.gcm_decrypt(KEY32, "", "", base64.encode(string.rep("\0", 32))))
      refused(aes.gcm_encrypt(KEY32, "", "", "plain"))
      refused(aes.gcm_decrypt(string.rep("k", 31), "123456789012", "", base64.encode(string.rep("\0", 32))))
      refused(aes.gcm_decrypt(string.rep("k", 17), "123456789012", "", base64.encode(string.rep("\0", 32)),
        { allow_short_key = true }))
    end)

    it("an ECB ciphertext that is not whole blocks, or badly padded, is refused", function()
      for _, ct in ipairs({ "", "x", string.rep("x", 15), string.rep("x", 17), string.rep("\0", 16) }) do
        refused(aes.ecb_decrypt(KEY32, base64.encode(ct)))
      end
    end)
  end)

  describe("keys", function()
    it("an encrypted key with a wrong, empty or missing passphrase is refused", function()
      local q = ossl.quote(tmpdir .. "/k.pem")
      local enc = ossl.run("openssl pkcs8 -topk8 -v2 aes256 -iter 1 -passout pass:s3cret -in " .. q)
      assert.equal("private", assert(key.load(enc, "s3cret")):kind())
      refused(key.load(enc, "wrong"))
      refused(key.load(enc, ""))
      refused(key.load(enc))
    end)
  end)
end)
