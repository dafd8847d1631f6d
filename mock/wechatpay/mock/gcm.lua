-- AES-256-GCM with associated data, worker side (LuaJIT inside nginx).
--
-- luaossl has no way to pass associated data, which WeChat Pay's resources
-- carry ("certificate", "transaction"), so this calls OpenSSL's EVP
-- interface through the FFI: still OpenSSL, never wechatpay.core.
local ffi = require("ffi")

ffi.cdef[[
typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;
typedef struct evp_cipher_st EVP_CIPHER;
typedef struct engine_st ENGINE;
EVP_CIPHER_CTX *EVP_CIPHER_CTX_new(void);
void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx);
const EVP_CIPHER *EVP_aes_256_gcm(void);
int EVP_EncryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, ENGINE *impl,
                       const unsigned char *key, const unsigned char *iv);
int EVP_EncryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl, const unsigned char *in, int inl);
int EVP_EncryptFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl);
int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr);
]]

local EVP_CTRL_GCM_SET_IVLEN = 0x9
local EVP_CTRL_GCM_GET_TAG = 0x10

-- nginx is linked with libcrypto; a LuaJIT outside nginx loads it by name.
local function library()
  if pcall(function() return ffi.C.EVP_aes_256_gcm end) then return ffi.C end
  for _, name in ipairs({ "crypto", "libcrypto.so.3", "libcrypto.so.1.1" }) do
    local ok, lib = pcall(ffi.load, name)
    if ok then return lib end
  end
  error("wechatpay.mock.gcm: libcrypto not found")
end

local C

local gcm = {}

--- encrypt(key, nonce, aad, plaintext) -> ciphertext .. 16-byte tag
function gcm.encrypt(key, nonce, aad, plaintext)
  C = C or library()
  assert(#key == 32, "AES-256 key must be 32 bytes")
  local ctx = C.EVP_CIPHER_CTX_new()
  assert(ctx ~= nil, "EVP_CIPHER_CTX_new failed")
  local out = ffi.new("unsigned char[?]", #plaintext + 16)
  local tag = ffi.new("unsigned char[16]")
  local len = ffi.new("int[1]")
  local ok, err = pcall(function()
    assert(C.EVP_EncryptInit_ex(ctx, C.EVP_aes_256_gcm(), nil, nil, nil) == 1)
    assert(C.EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, #nonce, nil) == 1)
    assert(C.EVP_EncryptInit_ex(ctx, nil, nil, key, nonce) == 1)
    if #aad > 0 then assert(C.EVP_EncryptUpdate(ctx, nil, len, aad, #aad) == 1) end
    assert(C.EVP_EncryptUpdate(ctx, out, len, plaintext, #plaintext) == 1)
    local n = len[0]
    assert(C.EVP_EncryptFinal_ex(ctx, out + n, len) == 1)
    n = n + len[0]
    assert(C.EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1)
    return n
  end)
  C.EVP_CIPHER_CTX_free(ctx)
  if not ok then error("wechatpay.mock.gcm: " .. tostring(err)) end
  return ffi.string(out, err) .. ffi.string(tag, 16)
end

return gcm
