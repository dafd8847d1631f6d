-- GET /v3/certificates (worker side): the two platform certificates in
-- service, each sealed with the APIv3 key (AEAD_AES_256_GCM, associated
-- data "certificate"), the response signed by the newer of them.  A
-- public-key-only mock answers as WeChat Pay does a merchant without
-- certificates: 404 NOT_FOUND "无可用的平台证书".
local gcm = require("wechatpay.mock.gcm")
local response = require("wechatpay.mock.response")
local state = require("wechatpay.mock.state")

local certs = {}

local function iso8601(t)
  return os.date("!%Y-%m-%dT%H:%M:%S+00:00", t)
end

local function entry(cert, effective, expire)
  local nonce = response.random_alnum(12)
  local sealed = gcm.encrypt(state.config.apiv3_key, nonce, "certificate", cert.pem)
  return {
    serial_no = cert.serial,
    effective_time = iso8601(effective),
    expire_time = iso8601(expire),
    encrypt_certificate = {
      algorithm = "AEAD_AES_256_GCM", nonce = nonce, associated_data = "certificate",
      ciphertext = ngx.encode_base64(sealed),
    },
  }
end

function certs.download()
  state.dicts().stats:incr("certificate_downloads", 1, 0)
  if state.config.public_key_only then
    return response.error(404, "NOT_FOUND", "无可用的平台证书")
  end
  local current, previous = state.current_certificates()
  local now = ngx.time()
  local data = { entry(current, now - 86400, now + 5 * 365 * 86400) }
  if previous then table.insert(data, 1, entry(previous, now - 2 * 365 * 86400, now + 3 * 365 * 86400)) end
  local resp = response.ok({ data = data })
  resp.signer = { key = current.key, serial = current.serial }
  return resp
end

return certs
