--- AES as WeChat Pay uses it.
--
-- AEAD_AES_256_GCM (callbacks, certificate downloads): the key is the 32
-- ASCII bytes of the APIv3 key, the IV the nonce's raw bytes, the tag is
-- appended to the ciphertext, and the whole is base64.
-- AES-256-ECB with PKCS#7 (APIv2 refund notifications): the key is the
-- lower-case hex MD5 of the APIv2 key.
local cjson = require("cjson")
local core = require("wechatpay.core")

local aes = {}

local function check_key(apiv3_key, opts)
  if type(apiv3_key) ~= "string" then
    return nil, ("AES key must be a string, got %s"):format(type(apiv3_key))
  end
  local allowed = #apiv3_key == 32 or (opts and opts.allow_short_key and (#apiv3_key == 16 or #apiv3_key == 24))
  if not allowed then
    return nil, ("AES-256 key must be 32 bytes (the APIv3 key), got %d"):format(#apiv3_key)
  end
  return true
end

-- What the caller encrypts is its own: a wrong type is a programmer error.
local function check_strings(fn, ...)
  local names = { "nonce", "associated_data", "data" }
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if type(v) ~= "string" then
      error(("aes.%s: bad %s (string expected, got %s)"):format(fn, names[i], type(v)), 3)
    end
  end
end

-- What is decrypted came from the network: a missing, empty or mistyped
-- field is bad data to report with nil, err, never a reason to raise.
local function received(fn, name, value)
  if type(value) ~= "string" then
    return nil, ("aes.%s: %s must be a string, got %s"):format(fn, name, type(value))
  end
  if value == "" then
    return nil, ("aes.%s: %s is empty"):format(fn, name)
  end
  return true
end

--- gcm_encrypt(key, nonce, associated_data, plaintext [, opts]) -> base64 | nil, err
-- opts.allow_short_key accepts 16/24-byte keys (test vectors only).
function aes.gcm_encrypt(apiv3_key, nonce, associated_data, plaintext, opts)
  local ok, err = check_key(apiv3_key, opts)
  if not ok then return nil, err end
  check_strings("gcm_encrypt", nonce, associated_data or "", plaintext)
  return core.aes_gcm_encrypt(apiv3_key, nonce, associated_data or "", plaintext)
end

--- gcm_decrypt(key, nonce, associated_data, ciphertext [, opts]) -> plaintext | nil, err
-- nonce and ciphertext must be non-empty strings, associated_data a string
-- or nil; anything else is nil, err, as all three come from the network.
function aes.gcm_decrypt(apiv3_key, nonce, associated_data, ciphertext, opts)
  local ok, err = check_key(apiv3_key, opts)
  if not ok then return nil, err end
  ok, err = received("gcm_decrypt", "nonce", nonce)
  if not ok then return nil, err end
  if associated_data ~= nil and type(associated_data) ~= "string" then
    return nil, "aes.gcm_decrypt: associated_data must be a string, got " .. type(associated_data)
  end
  ok, err = received("gcm_decrypt", "ciphertext", ciphertext)
  if not ok then return nil, err end
  return core.aes_gcm_decrypt(apiv3_key, nonce, associated_data or "", ciphertext)
end

--- Decrypts a resource object of a callback or certificate download:
-- { algorithm = "AEAD_AES_256_GCM", nonce, associated_data, ciphertext }.
function aes.decrypt_resource(apiv3_key, resource, opts)
  if type(resource) ~= "table" then
    return nil, "resource must be a table with nonce, associated_data and ciphertext"
  end
  if resource.algorithm and resource.algorithm ~= "AEAD_AES_256_GCM" then
    return nil, "unsupported resource algorithm " .. tostring(resource.algorithm)
  end
  if type(resource.nonce) ~= "string" or type(resource.ciphertext) ~= "string" then
    return nil, "resource lacks its nonce or ciphertext"
  end
  -- the resource comes from the network: a JSON null or a number here is
  -- bad data to report, not a programmer error to raise
  local associated_data = resource.associated_data
  if associated_data == nil or associated_data == false then
    associated_data = ""
  elseif type(associated_data) ~= "string" then
    if associated_data == cjson.null then
      associated_data = ""
    else
      return nil, "resource associated_data must be a string, got " .. type(associated_data)
    end
  end
  return aes.gcm_decrypt(apiv3_key, resource.nonce, associated_data, resource.ciphertext, opts)
end

--- ecb_encrypt(key, plaintext) -> base64 | nil, err
function aes.ecb_encrypt(key, plaintext)
  local ok, err = check_key(key)
  if not ok then return nil, err end
  check_strings("ecb_encrypt", "", "", plaintext)
  return core.aes_ecb_encrypt(key, plaintext)
end

--- ecb_decrypt(key, ciphertext) -> plaintext | nil, err
function aes.ecb_decrypt(key, ciphertext)
  local ok, err = check_key(key)
  if not ok then return nil, err end
  ok, err = received("ecb_decrypt", "ciphertext", ciphertext)
  if not ok then return nil, err end
  return core.aes_ecb_decrypt(key, ciphertext)
end

--- The req_info of an APIv2 refund notification, decrypted with the APIv2 key.
function aes.decrypt_refund_notification(apiv2_key, req_info)
  if type(apiv2_key) ~= "string" or apiv2_key == "" then
    return nil, "APIv2 key must be a non-empty string"
  end
  local ok, err = received("decrypt_refund_notification", "req_info", req_info)
  if not ok then return nil, err end
  return aes.ecb_decrypt(core.md5(apiv2_key), req_info)
end

return aes
