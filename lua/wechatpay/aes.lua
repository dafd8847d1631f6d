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

--- gcm_decrypt(key, nonce, associated_data, ciphertext [, opts]) -> plaintext | nil, err, why
-- nonce and ciphertext must be non-empty strings, associated_data a string
-- or nil; anything else is nil, err, as all three come from the network.
-- why: "decrypt" when the key is not one (wrong size) or does not open the
-- ciphertext, "malformed" when the input cannot be a sealed message.
function aes.gcm_decrypt(apiv3_key, nonce, associated_data, ciphertext, opts)
  local ok, err = check_key(apiv3_key, opts)
  if not ok then return nil, err, "decrypt" end
  ok, err = received("gcm_decrypt", "nonce", nonce)
  if not ok then return nil, err, "malformed" end
  if associated_data ~= nil and type(associated_data) ~= "string" then
    return nil, "aes.gcm_decrypt: associated_data must be a string, got " .. type(associated_data), "malformed"
  end
  ok, err = received("gcm_decrypt", "ciphertext", ciphertext)
  if not ok then return nil, err, "malformed" end
  return core.aes_gcm_decrypt(apiv3_key, nonce, associated_data or "", ciphertext)
end

-- what a resource's field is when it is not a non-empty string
local function shape(value)
  if value == "" then return "empty" end
  if value == nil then return "missing" end
  if value == cjson.null then return "null" end
  return type(value)
end

--- decrypt_resource(key, resource [, opts]) -> plaintext | nil, err, why
-- A resource object of a callback or certificate download:
-- { algorithm = "AEAD_AES_256_GCM", nonce, associated_data, ciphertext }.
-- The rules and the why of core.open_notification (which reads a
-- callback's resource straight from its bytes): "malformed" for another
-- algorithm, a missing or empty nonce or ciphertext, associated_data not a
-- string (absent or JSON null reads as ""), bad base64; "decrypt" when the
-- key does not open it.
function aes.decrypt_resource(apiv3_key, resource, opts)
  if type(resource) ~= "table" then
    return nil, "resource must be a table with nonce, associated_data and ciphertext", "malformed"
  end
  if resource.algorithm ~= nil and resource.algorithm ~= "AEAD_AES_256_GCM" then
    return nil, "unsupported resource algorithm (AEAD_AES_256_GCM expected)", "malformed"
  end
  for _, name in ipairs{ "ciphertext", "nonce" } do
    local value = resource[name]
    if type(value) ~= "string" or value == "" then
      return nil, ("the resource's %s is %s"):format(name, shape(value)), "malformed"
    end
  end
  local associated_data = resource.associated_data
  if associated_data == nil or associated_data == cjson.null then
    associated_data = ""
  elseif type(associated_data) ~= "string" then
    return nil, "the resource's associated_data must be a string, got " .. shape(associated_data), "malformed"
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
