--- Test support: a merchant (key, certificate) and WeChat Pay platform keys,
-- made fresh by the openssl command line once per busted run.
local ossl = require("support.openssl")

local M = {}
local made

function M.make()
  if made then return made end
  local dir = ossl.tmpdir()
  local function q(name) return ossl.quote(dir .. "/" .. name) end
  for _, cmd in ipairs{
    "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. q("merchant_key.pem"),
    "openssl req -x509 -key " .. q("merchant_key.pem") .. " -subj /CN=1900000001 -days 30 -out " .. q("merchant_cert.pem"),
    "openssl x509 -in " .. q("merchant_cert.pem") .. " -pubkey -noout -out " .. q("merchant_pub.pem"),
    "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. q("platform_key.pem"),
    "openssl pkey -in " .. q("platform_key.pem") .. " -pubout -out " .. q("platform_pub.pem"),
    "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. q("platform_cert_key.pem"),
    "openssl req -x509 -key " .. q("platform_cert_key.pem") .. " -subj /CN=Tenpay -days 30 -out " .. q("platform_cert.pem"),
    "openssl req -x509 -key " .. q("platform_cert_key.pem") .. " -subj /CN=Tenpay -days 60 -out " .. q("platform_cert_later.pem"),
  } do ossl.run(cmd) end
  local function serial(file)
    return ossl.run("openssl x509 -noout -serial -in " .. q(file)):match("serial=(%x+)"):upper()
  end
  made = {
    dir = dir,
    mchid = "1900000001",
    merchant_key = dir .. "/merchant_key.pem",
    merchant_cert = dir .. "/merchant_cert.pem",
    merchant_pub = dir .. "/merchant_pub.pem",
    merchant_serial = serial("merchant_cert.pem"),
    platform_key = dir .. "/platform_key.pem",
    platform_pub = dir .. "/platform_pub.pem",
    platform_key_id = "PUB_KEY_ID_0114232134912410000000000000",
    platform_cert = dir .. "/platform_cert.pem",
    platform_cert_serial = serial("platform_cert.pem"),
    platform_cert_later = dir .. "/platform_cert_later.pem",
    platform_cert_later_serial = serial("platform_cert_later.pem"),
  }
  return made
end

--- Options for wechatpay.new with this merchant and the public key id.
function M.options(extra)
  local m = M.make()
  local opts = {
    mchid = m.mchid,
    serial = m.merchant_serial,
    private_key = "file://" .. m.merchant_key,
    certs = { [m.platform_key_id] = "file://" .. m.platform_pub },
  }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return opts
end

--- A transport that records requests and answers with `reply(request)`.
function M.recording_transport(reply)
  local t = { requests = {} }
  function t:request(request)
    self.requests[#self.requests + 1] = request
    if reply then return reply(request) end
    return { status = 400, headers = {}, body = '{"code":"RECORDED","message":"recorded, not sent"}' }
  end
  return t
end

--- Verifies an Authorization header with openssl: returns the parsed pairs
-- and whether openssl accepts the signature over the given string to sign.
function M.check_authorization(header, method, target, body)
  local m = M.make()
  local scheme, rest = header:match("^(%S+) (.*)$")
  local fields = {}
  for k, v in rest:gmatch('([%w_]+)="([^"]*)"') do fields[k] = v end
  local message = method .. "\n" .. target .. "\n" .. fields.timestamp .. "\n" .. fields.nonce_str .. "\n" .. body .. "\n"
  local dir = m.dir
  ossl.write(dir .. "/msg.bin", message)
  ossl.write(dir .. "/sig.b64", fields.signature)
  ossl.run("openssl base64 -d -A -in " .. ossl.quote(dir .. "/sig.b64") .. " -out " .. ossl.quote(dir .. "/sig.bin"))
  local ok = pcall(ossl.run, "openssl dgst -sha256 -verify " .. ossl.quote(m.merchant_pub) .. " -signature " .. ossl.quote(dir .. "/sig.bin") .. " " .. ossl.quote(dir .. "/msg.bin"))
  return scheme, fields, ok
end

return M
