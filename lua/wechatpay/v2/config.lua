--- The APIv2 options of wechatpay.new: `apiv2_key` (the 32-character
-- signing key) and `merchant_cert` (apiclient_cert.pem, presented with the
-- merchant private key on endpoints that need mutual TLS).  What passes
-- comes back as the client's settings.v2; secrets are held in closures so
-- no dump of the settings shows them, and no message echoes them.
local core = require("wechatpay.core")
local key = require("wechatpay.key")

local v2config = {}

local function read_source(source, what, fail)
  local path = source:match("^file://(.+)$")
  if not path then return source end
  local data, reason = core.read_file(path, key.MAX_FILE_BYTES + 1)
  if not data then fail(("%s: cannot read %s: %s"):format(what, path, tostring(reason))) end
  if #data > key.MAX_FILE_BYTES or data == "" then
    fail(("%s: %s is empty or larger than %d bytes"):format(what, path, key.MAX_FILE_BYTES))
  end
  return data
end

-- The private key's bytes for curl (CURLOPT_SSLKEY_BLOB) and its type.
local function private_key_bytes(source, fail)
  if type(source) ~= "string" then
    fail("merchant_cert needs private_key given as \"file:///path\" or PEM text: a loaded key object "
      .. "cannot be handed to the TLS library")
  end
  local form, b64 = source:match("^(private%.pkcs[18])://(.*)$")
  if form then
    local der = core.base64_decode((b64:gsub("%s", "")))
    if not der then fail("private_key: " .. form .. ":// key is not valid base64") end
    return der, "DER"
  end
  local data = read_source(source, "private_key", fail)
  return data, data:find("-----BEGIN ", 1, true) and "PEM" or "DER"
end

--- check(opts, private_key, fail) -> settings.v2 | nil (no APIv2 option given).
-- private_key: the loaded merchant key; fail(message) raises.
function v2config.check(opts, private_key, fail)
  local apiv2_key, merchant_cert = opts.apiv2_key, opts.merchant_cert
  if apiv2_key == nil and merchant_cert == nil then return nil end
  local v2 = {}
  if apiv2_key ~= nil then
    if type(apiv2_key) ~= "string" then fail("apiv2_key must be the 32-character APIv2 key, a string") end
    if #apiv2_key ~= 32 or apiv2_key:find("[^%w]") then
      -- its length only: a key pasted into the wrong option must not be printed
      fail(("apiv2_key must be the 32-character APIv2 key (letters and digits), got %d bytes%s")
        :format(#apiv2_key, apiv2_key:find("[^%w]") and " holding other characters" or ""))
    end
    if apiv2_key == opts.apiv3_key then
      fail("apiv2_key is the same as apiv3_key: they are two different keys set in the merchant platform")
    end
    v2.apiv2_key = function() return apiv2_key end
  end
  if merchant_cert ~= nil then
    if type(merchant_cert) ~= "string" or merchant_cert == "" then
      fail("merchant_cert must be \"file:///path/to/apiclient_cert.pem\" or PEM text")
    end
    local pem = read_source(merchant_cert, "merchant_cert", fail)
    if not pem:find("-----BEGIN CERTIFICATE-----", 1, true) then
      fail("merchant_cert must be a PEM certificate (-----BEGIN CERTIFICATE-----), the apiclient_cert.pem "
        .. "of the merchant platform")
    end
    local cert, err = key.public(pem)
    if not cert or not cert:certificate() then fail("merchant_cert: " .. tostring(err or "not a certificate")) end
    local probe = core.rsa_sign(private_key, "wechatpay-lua merchant_cert probe")
    if not core.rsa_verify(cert, "wechatpay-lua merchant_cert probe", probe) then
      fail(("merchant_cert (serial %s) does not match private_key: mutual TLS presents both, so they must "
        .. "be the certificate and key of one merchant API certificate"):format(cert:certificate().serial))
    end
    local key_bytes, key_type = private_key_bytes(opts.private_key, fail)
    local passphrase = opts.passphrase
    v2.merchant_cert_serial = cert:certificate().serial
    v2.tls = function()
      return { cert = pem, key = key_bytes, key_type = key_type, passphrase = passphrase, private_key = private_key }
    end
  end
  return v2
end

return v2config
