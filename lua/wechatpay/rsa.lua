--- RSA as WeChat Pay uses it: SHA256withRSA (PKCS#1 v1.5) signatures and
-- RSAES-OAEP with SHA-1/MGF1-SHA-1 for sensitive fields.  Signatures and
-- ciphertexts are standard base64.
--
-- Keys should be loaded once with wechatpay.key; a source string works too
-- but is parsed on every call.
local core = require("wechatpay.core")
local key = require("wechatpay.key")

local rsa = {}

local function as_key(source, want_private, fn)
  if key.is_key(source) then return source end
  local loaded, err
  if want_private then loaded, err = key.private(source) else loaded, err = key.load(source, nil, "public") end
  if not loaded then error(fn .. ": " .. err, 3) end
  return loaded
end

local function check_string(value, what, fn)
  if type(value) ~= "string" then
    error(("%s: bad %s (string expected, got %s)"):format(fn, what, type(value)), 3)
  end
end

--- sign(private_key, message) -> base64 signature
function rsa.sign(private_key, message)
  check_string(message, "message", "rsa.sign")
  return core.rsa_sign(as_key(private_key, true, "rsa.sign"), message)
end

--- verify(public_key, message, signature) -> boolean; anything malformed is false
function rsa.verify(public_key, message, signature)
  check_string(message, "message", "rsa.verify")
  if type(signature) ~= "string" then return false end
  return core.rsa_verify(as_key(public_key, false, "rsa.verify"), message, signature)
end

--- encrypt(public_key, plaintext) -> base64 ciphertext | nil, err (e.g. too long)
function rsa.encrypt(public_key, plaintext)
  check_string(plaintext, "plaintext", "rsa.encrypt")
  return core.rsa_encrypt(as_key(public_key, false, "rsa.encrypt"), plaintext)
end

--- decrypt(private_key, ciphertext) -> plaintext | nil, err
function rsa.decrypt(private_key, ciphertext)
  check_string(ciphertext, "ciphertext", "rsa.decrypt")
  return core.rsa_decrypt(as_key(private_key, true, "rsa.decrypt"), ciphertext)
end

return rsa
