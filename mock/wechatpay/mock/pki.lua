-- Throwaway key material for one mock server, generated with luaossl in the
-- launcher's process (never with wechatpay.core: both sides of a test must not
-- share the same crypto code, or a shared mistake would go unnoticed).
--
-- Produces, as PEM files in the server's temp dir:
--   ca.pem                      CA that signs every certificate below
--   server.pem / server.key     TLS certificate for 127.0.0.1 + localhost
--   merchant_key.pem            merchant API private key, PKCS#8 (the client signs with it)
--   merchant_cert.pem           merchant API certificate (its serial is serial_no)
--   platform_public_key.pem     WeChat Pay public key (SPKI), id PUB_KEY_ID_...
--   platform_private_key.pem    its private key (the mock signs and decrypts with it)
--   platform_cert.pem / platform_cert_key.pem   a platform certificate with a second key pair
--   platform_cert_old.pem / _key.pem   an older platform certificate, overlapping it
--   platform_cert_next.pem / _key.pem  the one server:rotate_certificates() moves to
local pkey = require("openssl.pkey")
local x509 = require("openssl.x509")
local x509_name = require("openssl.x509.name")
local x509_altname = require("openssl.x509.altname")
local x509_extension = require("openssl.x509.extension")
local bignum = require("openssl.bignum")
local rand = require("openssl.rand")
local util = require("wechatpay.mock.util")
local write_file = util.write_file

local pki = {}

local VALIDITY = 5 * 365 * 86400

local function new_rsa_key()
  return pkey.new({ type = "RSA", bits = 2048 })
end

-- 20 random bytes with the top bit clear (positive DER integer) and a non-zero
-- high nibble, so the hex form is always 40 digits like real WeChat serials.
local function random_serial()
  local bytes = rand.bytes(20)
  local first = bytes:byte(1) % 0x70 + 0x10
  return bignum.fromBinary(string.char(first) .. bytes:sub(2))
end

local function make_name(fields)
  local name = x509_name.new()
  for _, field in ipairs(fields) do
    name:add(field[1], field[2])
  end
  return name
end

-- fields: subject list, key, issuer_cert/issuer_key (nil = self-signed),
-- ca (bool), server (bool: TLS server usage + SAN)
local function make_cert(fields)
  local cert = x509.new()
  cert:setVersion(3)
  cert:setSerial(random_serial())
  local subject = make_name(fields.subject)
  cert:setSubject(subject)
  cert:setIssuer(fields.issuer_cert and fields.issuer_cert:getSubject() or subject)
  -- Back-date by a day so a client whose clock lags a little still accepts it.
  -- age: seconds further back (an older certificate of an overlapping pair)
  local now = os.time() - (fields.age or 0)
  cert:setLifetime(now - 86400, now + VALIDITY)
  cert:setPublicKey(fields.key)
  if fields.ca then
    cert:setBasicConstraints({ CA = true })
    cert:setBasicConstraintsCritical(true)
    cert:addExtension(x509_extension.new("keyUsage", "critical,keyCertSign,cRLSign"))
  else
    cert:setBasicConstraints({ CA = false })
    cert:addExtension(x509_extension.new("keyUsage",
      "critical,digitalSignature,keyEncipherment"))
  end
  if fields.server then
    local alt = x509_altname.new()
    alt:add("IP", "127.0.0.1")
    alt:add("DNS", "localhost")
    cert:setSubjectAlt(alt)
    cert:addExtension(x509_extension.new("extendedKeyUsage", "serverAuth"))
  end
  cert:addExtension(x509_extension.new("subjectKeyIdentifier", "hash", { subject = cert }))
  if fields.issuer_cert then
    cert:addExtension(x509_extension.new("authorityKeyIdentifier", "keyid:always",
      { issuer = fields.issuer_cert }))
  end
  cert:sign(fields.issuer_key or fields.key, "sha256")
  return cert
end

-- "PUB_KEY_ID_" followed by 28 digits, the shape WeChat Pay uses.
local function public_key_id()
  local bytes = rand.bytes(26)
  local digits = { "01" }
  for i = 1, #bytes do
    digits[#digits + 1] = tostring(bytes:byte(i) % 10)
  end
  return "PUB_KEY_ID_" .. table.concat(digits)
end

local function serial_hex(cert)
  return cert:getSerial():toHex():upper()
end

-- Generates everything into dir; returns a table of file names and ids, or nil, err.
function pki.generate(dir, mchid)
  local ca_key = new_rsa_key()
  local ca = make_cert({
    subject = { { "C", "CN" }, { "O", "wechatpay-lua mock" }, { "CN", "wechatpay-lua mock CA" } },
    key = ca_key, ca = true,
  })

  local server_key = new_rsa_key()
  local server_cert = make_cert({
    subject = { { "O", "wechatpay-lua mock" }, { "CN", "127.0.0.1" } },
    key = server_key, issuer_cert = ca, issuer_key = ca_key, server = true,
  })

  local merchant_key = new_rsa_key()
  local merchant_cert = make_cert({
    subject = { { "C", "CN" }, { "L", "ShenZhen" }, { "O", "wechatpay-lua mock merchant" },
                { "OU", "Tenpay.com" }, { "CN", mchid } },
    key = merchant_key, issuer_cert = ca, issuer_key = ca_key,
  })

  local platform_key = new_rsa_key()

  local platform_cert_key = new_rsa_key()
  local platform_cert = make_cert({
    subject = { { "C", "CN" }, { "L", "ShenZhen" }, { "O", "Tenpay.com" },
                { "OU", "Tenpay.com CA Center" }, { "CN", "Tenpay.com Root CA (mock)" } },
    key = platform_cert_key, issuer_cert = ca, issuer_key = ca_key,
  })

  -- Platform certificates overlap as WeChat Pay rotates them: an older one,
  -- the current one, and the next one that a rotation switches to.
  local platform_subject = { { "C", "CN" }, { "L", "ShenZhen" }, { "O", "Tenpay.com" },
    { "OU", "Tenpay.com CA Center" }, { "CN", "Tenpay.com Root CA (mock)" } }
  local old_key, next_key = new_rsa_key(), new_rsa_key()
  local old_cert = make_cert({ subject = platform_subject, key = old_key, issuer_cert = ca, issuer_key = ca_key,
    age = 2 * 365 * 86400 })
  local next_cert = make_cert({ subject = platform_subject, key = next_key, issuer_cert = ca, issuer_key = ca_key })

  local files = {
    ca = dir .. "/ca.pem",
    server_cert = dir .. "/server.pem",
    server_key = dir .. "/server.key",
    merchant_key = dir .. "/merchant_key.pem",
    merchant_cert = dir .. "/merchant_cert.pem",
    platform_public_key = dir .. "/platform_public_key.pem",
    platform_private_key = dir .. "/platform_private_key.pem",
    platform_cert = dir .. "/platform_cert.pem",
    platform_cert_key = dir .. "/platform_cert_key.pem",
    platform_cert_old = dir .. "/platform_cert_old.pem",
    platform_cert_old_key = dir .. "/platform_cert_old_key.pem",
    platform_cert_next = dir .. "/platform_cert_next.pem",
    platform_cert_next_key = dir .. "/platform_cert_next_key.pem",
  }
  local contents = {
    ca = ca:toPEM(),
    server_cert = server_cert:toPEM(),
    server_key = server_key:toPEM("PrivateKey"),
    merchant_key = merchant_key:toPEM("PrivateKey"),
    merchant_cert = merchant_cert:toPEM(),
    platform_public_key = platform_key:toPEM("PublicKey"),
    platform_private_key = platform_key:toPEM("PrivateKey"),
    platform_cert = platform_cert:toPEM(),
    platform_cert_key = platform_cert_key:toPEM("PrivateKey"),
    platform_cert_old = old_cert:toPEM(),
    platform_cert_old_key = old_key:toPEM("PrivateKey"),
    platform_cert_next = next_cert:toPEM(),
    platform_cert_next_key = next_key:toPEM("PrivateKey"),
  }
  for what, path in pairs(files) do
    local ok, err = write_file(path, contents[what])
    if not ok then
      return nil, "cannot write " .. what .. ": " .. tostring(err)
    end
  end

  return {
    files = files,
    merchant_serial = serial_hex(merchant_cert),
    platform_key_id = public_key_id(),
    platform_cert_serial = serial_hex(platform_cert),
    platform_cert_old_serial = serial_hex(old_cert),
    platform_cert_next_serial = serial_hex(next_cert),
  }
end

return pki
