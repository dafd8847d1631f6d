/* RSA, AES, digests, base64 and randomness for Lua: bytes in, bytes out. */
#include <stdio.h>
#include <string.h>

#include "wechatpay.h"
#include "base64.h"

static int push_error(lua_State *L, const char *err) {
  lua_pushnil(L);
  lua_pushstring(L, err);
  return 2;
}

static void push_base64(lua_State *L, const unsigned char *in, size_t len) {
  size_t outlen = WP_BASE64_ENCODED_LEN(len);
  char stackbuf[1024];
  char *out = outlen <= sizeof stackbuf ? stackbuf : (char *)wp_scratch(L, outlen);
  wp_base64_encode(in, len, out);
  lua_pushlstring(L, out, outlen);
  if (out != stackbuf) lua_remove(L, -2);   /* the scratch */
}

/* Decodes into scratch pushed on the stack; returns NULL when not base64. */
static unsigned char *decode_base64(lua_State *L, const char *in, size_t len, long *outlen) {
  unsigned char *out = (unsigned char *)wp_scratch(L, WP_BASE64_DECODED_MAX(len));
  *outlen = wp_base64_decode(in, len, out);
  return *outlen < 0 ? NULL : out;
}

static void push_hex(lua_State *L, const unsigned char *in, size_t len) {
  static const char digits[] = "0123456789abcdef";
  char out[128];
  size_t i;
  for (i = 0; i < len; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  lua_pushlstring(L, out, 2 * len);
}

/* ---- RSA ---------------------------------------------------------------- */

/* core.rsa_sign(private_key, message) -> base64 SHA256withRSA signature */
static int l_rsa_sign(lua_State *L) {
  wp_key *key = wp_check_key(L, 1);
  size_t len, siglen;
  const char *msg = luaL_checklstring(L, 2, &len);
  unsigned char sig[WP_RSA_MAX_BYTES];
  char err[WP_ERRLEN];
  if (!wp_key_is_private(key))
    return luaL_argerror(L, 1, "signing needs a private key, not a public key or certificate");
  if (wp_rsa_sign_sha256(key, (const unsigned char *)msg, len, sig, &siglen, err) != 0)
    return push_error(L, err);
  push_base64(L, sig, siglen);
  return 1;
}

/* core.rsa_verify(key, message, base64_signature) -> boolean
 * Anything that is not a valid signature, malformed base64 and WeChat Pay's
 * WECHATPAY/SIGNTEST/ probes included, is simply false. */
static int l_rsa_verify(lua_State *L) {
  wp_key *key = wp_check_key(L, 1);
  size_t len, b64len;
  const char *msg = luaL_checklstring(L, 2, &len);
  const char *b64 = luaL_checklstring(L, 3, &b64len);
  unsigned char sig[WP_RSA_B64_DECODED_MAX];
  long siglen;
  if (b64len > WP_BASE64_ENCODED_LEN(WP_RSA_MAX_BYTES) ||
      (siglen = wp_base64_decode(b64, b64len, sig)) <= 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushboolean(L, wp_rsa_verify_sha256(key, (const unsigned char *)msg, len, sig, (size_t)siglen));
  return 1;
}

/* core.rsa_encrypt(key, plaintext) -> base64 RSAES-OAEP(SHA-1) | nil, err */
static int l_rsa_encrypt(lua_State *L) {
  wp_key *key = wp_check_key(L, 1);
  size_t len, outlen;
  const char *in = luaL_checklstring(L, 2, &len);
  unsigned char out[WP_RSA_MAX_BYTES];
  char err[WP_ERRLEN];
  if (wp_rsa_oaep_encrypt(key, (const unsigned char *)in, len, out, &outlen, err) != 0)
    return push_error(L, err);
  push_base64(L, out, outlen);
  return 1;
}

/* core.rsa_decrypt(private_key, base64) -> plaintext | nil, err */
static int l_rsa_decrypt(lua_State *L) {
  wp_key *key = wp_check_key(L, 1);
  size_t b64len, outlen;
  const char *b64 = luaL_checklstring(L, 2, &b64len);
  unsigned char ct[WP_RSA_B64_DECODED_MAX], out[WP_RSA_MAX_BYTES];
  char err[WP_ERRLEN];
  long ctlen;
  int rc;
  if (!wp_key_is_private(key))
    return luaL_argerror(L, 1, "decryption needs a private key, not a public key or certificate");
  if (b64len > WP_BASE64_ENCODED_LEN(WP_RSA_MAX_BYTES) ||
      (ctlen = wp_base64_decode(b64, b64len, ct)) < 0)
    return push_error(L, "RSA ciphertext is not valid base64");
  rc = wp_rsa_oaep_decrypt(key, ct, (size_t)ctlen, out, &outlen, err);
  /* Only a memory error in this push skips the wipe below, leaving the
   * plaintext in this dead stack frame; as in wp_push_gcm_plaintext, that
   * is accepted: the string pushed holds the same bytes, unwiped, anyway. */
  if (rc == 0) lua_pushlstring(L, (const char *)out, outlen);
  wp_wipe(out, sizeof out);
  return rc == 0 ? 1 : push_error(L, err);
}

/* ---- AES ---------------------------------------------------------------- */

/* core.aes_gcm_encrypt(key, nonce, aad, plaintext) -> base64(ciphertext .. tag) | nil, err */
static int l_aes_gcm_encrypt(lua_State *L) {
  size_t keylen, ivlen, aadlen, len;
  const char *key = luaL_checklstring(L, 1, &keylen);
  const char *iv = luaL_checklstring(L, 2, &ivlen);
  const char *aad = luaL_optlstring(L, 3, "", &aadlen);
  const char *in = luaL_checklstring(L, 4, &len);
  unsigned char *out = (unsigned char *)wp_scratch(L, len + 16);
  char err[WP_ERRLEN];
  if (wp_aes_gcm_encrypt((const unsigned char *)key, keylen, (const unsigned char *)iv, ivlen,
                         (const unsigned char *)aad, aadlen, (const unsigned char *)in, len,
                         out, out + len, err) != 0)
    return push_error(L, err);
  push_base64(L, out, len + 16);
  return 1;
}

/* Callback resources are about 1 KiB: those up to this size are decoded
 * and decrypted on the C stack, with no scratch memory for the GC. */
#define GCM_STACK_BYTES 4096

int wp_push_gcm_plaintext(lua_State *L, const char *key, size_t keylen, const char *iv, size_t ivlen,
                          const char *aad, size_t aadlen, const char *b64, size_t b64len, char *err) {
  unsigned char ctbuf[GCM_STACK_BYTES], outbuf[GCM_STACK_BYTES], *ct, *out;
  long ctlen;
  int top = lua_gettop(L), on_stack = WP_BASE64_DECODED_MAX(b64len) <= GCM_STACK_BYTES, opened;
  if (keylen != 16 && keylen != 24 && keylen != 32) {   /* before any work on the input */
    snprintf(err, WP_ERRLEN, "AES key must be 16, 24 or 32 bytes, got %d", (int)keylen);
    return 0;
  }
  ct = on_stack ? ctbuf : (unsigned char *)wp_scratch(L, WP_BASE64_DECODED_MAX(b64len));
  ctlen = wp_base64_decode(b64, b64len, ct);
  if (ctlen < 16) {
    lua_settop(L, top);
    snprintf(err, WP_ERRLEN, "%s", ctlen < 0 ? "AES-GCM ciphertext is not valid base64"
                                             : "AES-GCM ciphertext is shorter than its 16-byte tag");
    return -1;
  }
  out = on_stack ? outbuf : (unsigned char *)wp_scratch(L, (size_t)ctlen - 16);
  opened = wp_aes_gcm_decrypt((const unsigned char *)key, keylen, (const unsigned char *)iv, ivlen,
                              (const unsigned char *)aad, aadlen, ct, (size_t)ctlen - 16,
                              ct + ctlen - 16, out, err) == 0;
  /* the plaintext becomes a Lua string anyway; the copies here are wiped
   * unless that push fails for memory */
  if (opened) lua_pushlstring(L, (const char *)out, (size_t)ctlen - 16);
  wp_wipe(out, (size_t)ctlen - 16);
  if (!opened) {
    lua_settop(L, top);
    return 0;
  }
  if (!on_stack) {
    lua_replace(L, top + 1);   /* the plaintext in place of the scratch */
    lua_settop(L, top + 1);
  }
  return 1;
}

/* core.aes_gcm_decrypt(key, nonce, aad, base64(ciphertext .. tag)) -> plaintext | nil, err, why
 * why: "decrypt" when the key is not an AES key (its size) or does not open
 * the input (another key, altered bytes), "malformed" when the input cannot
 * be a sealed message (base64, shorter than the tag): the error kinds
 * core.open_notification gives. */
static int l_aes_gcm_decrypt(lua_State *L) {
  size_t keylen, ivlen, aadlen, b64len;
  const char *key = luaL_checklstring(L, 1, &keylen);
  const char *iv = luaL_checklstring(L, 2, &ivlen);
  const char *aad = luaL_optlstring(L, 3, "", &aadlen);
  const char *b64 = luaL_checklstring(L, 4, &b64len);
  char err[WP_ERRLEN];
  int rc = wp_push_gcm_plaintext(L, key, keylen, iv, ivlen, aad, aadlen, b64, b64len, err);
  if (rc == 1) return 1;
  push_error(L, err);
  if (rc == 0) lua_pushliteral(L, "decrypt");
  else lua_pushliteral(L, "malformed");
  return 3;
}

/* core.aes_ecb_encrypt(key, plaintext) -> base64 (PKCS#7 padded) | nil, err */
static int l_aes_ecb_encrypt(lua_State *L) {
  size_t keylen, len, outlen;
  const char *key = luaL_checklstring(L, 1, &keylen);
  const char *in = luaL_checklstring(L, 2, &len);
  unsigned char *out = (unsigned char *)wp_scratch(L, len + 16);
  char err[WP_ERRLEN];
  if (wp_aes_ecb_encrypt((const unsigned char *)key, keylen, (const unsigned char *)in, len,
                         out, &outlen, err) != 0)
    return push_error(L, err);
  push_base64(L, out, outlen);
  return 1;
}

/* core.aes_ecb_decrypt(key, base64) -> plaintext | nil, err */
static int l_aes_ecb_decrypt(lua_State *L) {
  size_t keylen, b64len, outlen;
  const char *key = luaL_checklstring(L, 1, &keylen);
  const char *b64 = luaL_checklstring(L, 2, &b64len);
  unsigned char *ct, *out;
  char err[WP_ERRLEN];
  long ctlen;
  ct = decode_base64(L, b64, b64len, &ctlen);
  if (!ct) return push_error(L, "AES-ECB ciphertext is not valid base64");
  out = (unsigned char *)wp_scratch(L, (size_t)ctlen);
  if (wp_aes_ecb_decrypt((const unsigned char *)key, keylen, ct, (size_t)ctlen, out, &outlen, err) != 0) {
    wp_wipe(out, (size_t)ctlen);   /* the blocks before the bad padding were decrypted into it */
    return push_error(L, err);
  }
  lua_pushlstring(L, (const char *)out, outlen);
  wp_wipe(out, (size_t)ctlen);
  return 1;
}

/* ---- digests, encoding, randomness -------------------------------------- */

static int push_digest(lua_State *L, wp_md md) {
  size_t len;
  const char *in = luaL_checklstring(L, 1, &len);
  unsigned char out[64];
  if (wp_digest(md, (const unsigned char *)in, len, out) != 0)
    return luaL_error(L, "digest failed");
  push_hex(L, out, wp_md_size(md));
  return 1;
}

/* core.sha256(s) / core.sha1(s) / core.md5(s) -> lower-case hex */
static int l_sha256(lua_State *L) { return push_digest(L, WP_MD_SHA256); }
static int l_sha1(lua_State *L) { return push_digest(L, WP_MD_SHA1); }
static int l_md5(lua_State *L) { return push_digest(L, WP_MD_MD5); }

/* core.hmac_sha256(key, s) -> lower-case hex */
static int l_hmac_sha256(lua_State *L) {
  size_t keylen, len;
  const char *key = luaL_checklstring(L, 1, &keylen);
  const char *in = luaL_checklstring(L, 2, &len);
  unsigned char out[32];
  if (wp_hmac_sha256((const unsigned char *)key, keylen, (const unsigned char *)in, len, out) != 0)
    return luaL_error(L, "HMAC-SHA256 failed");
  push_hex(L, out, sizeof out);
  return 1;
}

/* core.base64_encode(s) -> string */
static int l_base64_encode(lua_State *L) {
  size_t len;
  const char *in = luaL_checklstring(L, 1, &len);
  push_base64(L, (const unsigned char *)in, len);
  return 1;
}

/* core.base64_decode(s) -> bytes | nil, err */
static int l_base64_decode(lua_State *L) {
  size_t len;
  const char *in = luaL_checklstring(L, 1, &len);
  long outlen;
  unsigned char *out = decode_base64(L, in, len, &outlen);
  if (!out) return push_error(L, "invalid base64");
  lua_pushlstring(L, (const char *)out, (size_t)outlen);
  return 1;
}

/* core.equals(a, b) -> boolean, in time independent of where they differ */
static int l_equals(lua_State *L) {
  size_t alen, blen, i;
  const unsigned char *a = (const unsigned char *)luaL_checklstring(L, 1, &alen);
  const unsigned char *b = (const unsigned char *)luaL_checklstring(L, 2, &blen);
  unsigned char diff = alen != blen;
  for (i = 0; i < alen && i < blen; i++) diff |= a[i] ^ b[i];
  lua_pushboolean(L, diff == 0);
  return 1;
}

/* core.random_bytes(n) -> n bytes from the CSPRNG */
static int l_random_bytes(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  unsigned char *out;
  char err[WP_ERRLEN];
  luaL_argcheck(L, n >= 0 && n <= 1 << 20, 1, "must be between 0 and 1048576");
  out = (unsigned char *)wp_scratch(L, (size_t)n);
  if (wp_random(out, (size_t)n, err) != 0) return luaL_error(L, "%s", err);
  lua_pushlstring(L, (const char *)out, (size_t)n);
  return 1;
}

int wp_nonce(char *out, size_t n, char *err) {
  static const char chars[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  unsigned char raw[256];
  size_t have = 0, used = sizeof raw;
  while (have < n) {
    if (used == sizeof raw) {
      if (wp_random(raw, sizeof raw, err) != 0) return -1;
      used = 0;
    }
    /* 248 = 4 * 62: rejecting the rest keeps every character equally likely */
    if (raw[used] < 248) out[have++] = chars[raw[used] % 62];
    used++;
  }
  return 0;
}

/* core.nonce([n = 32]) -> n characters of [0-9A-Za-z] from the CSPRNG */
static int l_nonce(lua_State *L) {
  lua_Integer n = luaL_optinteger(L, 1, 32);
  char out[128];
  char err[WP_ERRLEN];
  luaL_argcheck(L, n >= 1 && n <= (lua_Integer)sizeof out, 1, "must be between 1 and 128");
  if (wp_nonce(out, (size_t)n, err) != 0) return luaL_error(L, "%s", err);
  lua_pushlstring(L, out, (size_t)n);
  return 1;
}

void wp_open_crypto(lua_State *L) {
  static const luaL_Reg functions[] = {
    {"rsa_sign", l_rsa_sign},
    {"rsa_verify", l_rsa_verify},
    {"rsa_encrypt", l_rsa_encrypt},
    {"rsa_decrypt", l_rsa_decrypt},
    {"aes_gcm_encrypt", l_aes_gcm_encrypt},
    {"aes_gcm_decrypt", l_aes_gcm_decrypt},
    {"aes_ecb_encrypt", l_aes_ecb_encrypt},
    {"aes_ecb_decrypt", l_aes_ecb_decrypt},
    {"sha256", l_sha256},
    {"sha1", l_sha1},
    {"md5", l_md5},
    {"hmac_sha256", l_hmac_sha256},
    {"base64_encode", l_base64_encode},
    {"base64_decode", l_base64_decode},
    {"equals", l_equals},
    {"random_bytes", l_random_bytes},
    {"nonce", l_nonce},
    {NULL, NULL}
  };
  luaL_setfuncs(L, functions, 0);
  lua_pushstring(L, wp_crypto_backend());
  lua_setfield(L, -2, "crypto_backend");
}
