/*
 * The WeChat Pay v3 signature scheme on the hot path of every call: the
 * request's string to sign and Authorization header, and the response's
 * signed message.  Building them here saves copying the body through Lua
 * string concatenation twice per call.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "wechatpay.h"
#include "base64.h"

#define NONCE_LEN 32

/* Adds `parts` joined by "\n", each followed by "\n", to the buffer. */
static void add_lines(luaL_Buffer *b, const char *const *parts, const size_t *lens, int n) {
  int i;
  for (i = 0; i < n; i++) {
    luaL_addlstring(b, parts[i], lens[i]);
    luaL_addchar(b, '\n');
  }
}

/* core.authorization(private_key, mchid, serial, method, target, body [, timestamp, nonce])
 *   -> Authorization header value, timestamp, nonce
 * timestamp and nonce are made here unless given (tests pin them). */
static int l_authorization(lua_State *L) {
  wp_key *key = wp_check_key(L, 1);
  size_t lens[5], mchid_len, serial_len, siglen, i;
  const char *mchid = luaL_checklstring(L, 2, &mchid_len);
  const char *serial = luaL_checklstring(L, 3, &serial_len);
  const char *parts[5];
  char ts[24], nonce[NONCE_LEN + 1];
  unsigned char sig[WP_RSA_MAX_BYTES];
  char sig64[WP_BASE64_ENCODED_LEN(WP_RSA_MAX_BYTES)];
  char err[WP_ERRLEN];
  luaL_Buffer b;

  if (!wp_key_is_private(key))
    return luaL_argerror(L, 1, "signing needs a private key, not a public key or certificate");
  parts[0] = luaL_checklstring(L, 4, &lens[0]);
  parts[1] = luaL_checklstring(L, 5, &lens[1]);
  parts[4] = luaL_optlstring(L, 6, "", &lens[4]);
  if (lua_isnoneornil(L, 7)) {
    snprintf(ts, sizeof ts, "%lld", (long long)time(NULL));
  } else {
    snprintf(ts, sizeof ts, "%lld", (long long)luaL_checkinteger(L, 7));
  }
  if (lua_isnoneornil(L, 8)) {
    if (wp_nonce(nonce, NONCE_LEN, err) != 0) return luaL_error(L, "%s", err);
    nonce[NONCE_LEN] = '\0';
  } else {
    size_t n;
    const char *given = luaL_checklstring(L, 8, &n);
    luaL_argcheck(L, n >= 1 && n <= NONCE_LEN, 8, "nonce must be 1 to 32 characters");
    memcpy(nonce, given, n);
    nonce[n] = '\0';
  }
  parts[2] = ts; lens[2] = strlen(ts);
  parts[3] = nonce; lens[3] = strlen(nonce);
  /* Refuse what would break the header's quoting rather than send it. */
  for (i = 0; i < mchid_len; i++)
    luaL_argcheck(L, mchid[i] != '"' && mchid[i] != '\n', 2, "mchid holds a quote or newline");
  for (i = 0; i < serial_len; i++)
    luaL_argcheck(L, serial[i] != '"' && serial[i] != '\n', 3, "serial holds a quote or newline");

  luaL_buffinit(L, &b);
  add_lines(&b, parts, lens, 5);
  luaL_pushresult(&b);   /* the string to sign */
  {
    size_t msglen;
    const char *msg = lua_tolstring(L, -1, &msglen);
    if (wp_rsa_sign_sha256(key, (const unsigned char *)msg, msglen, sig, &siglen, err) != 0)
      return luaL_error(L, "%s", err);
  }
  lua_pop(L, 1);
  wp_base64_encode(sig, siglen, sig64);

  luaL_buffinit(L, &b);
  luaL_addstring(&b, "WECHATPAY2-SHA256-RSA2048 mchid=\"");
  luaL_addlstring(&b, mchid, mchid_len);
  luaL_addstring(&b, "\",nonce_str=\"");
  luaL_addstring(&b, nonce);
  luaL_addstring(&b, "\",signature=\"");
  luaL_addlstring(&b, sig64, WP_BASE64_ENCODED_LEN(siglen));
  luaL_addstring(&b, "\",timestamp=\"");
  luaL_addstring(&b, ts);
  luaL_addstring(&b, "\",serial_no=\"");
  luaL_addlstring(&b, serial, serial_len);
  luaL_addchar(&b, '"');
  luaL_pushresult(&b);
  lua_pushstring(L, ts);
  lua_pushstring(L, nonce);
  return 3;
}

/* core.verify_message(public_key, timestamp, nonce, body, signature) -> boolean
 * Verifies a response or callback: SHA256withRSA over "TIMESTAMP\nNONCE\nBODY\n". */
static int l_verify_message(lua_State *L) {
  wp_key *key = wp_check_key(L, 1);
  const char *parts[3];
  size_t lens[3], siglen_b64;
  const char *sig64;
  unsigned char sig[WP_RSA_B64_DECODED_MAX];
  long siglen;
  luaL_Buffer b;
  int ok;
  parts[0] = luaL_checklstring(L, 2, &lens[0]);
  parts[1] = luaL_checklstring(L, 3, &lens[1]);
  parts[2] = luaL_checklstring(L, 4, &lens[2]);
  sig64 = luaL_checklstring(L, 5, &siglen_b64);
  /* A WECHATPAY/SIGNTEST/ probe or anything else not base64 is just "no". */
  if (siglen_b64 > WP_BASE64_ENCODED_LEN(WP_RSA_MAX_BYTES) ||
      (siglen = wp_base64_decode(sig64, siglen_b64, sig)) <= 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  luaL_buffinit(L, &b);
  add_lines(&b, parts, lens, 3);
  luaL_pushresult(&b);
  {
    size_t msglen;
    const char *msg = lua_tolstring(L, -1, &msglen);
    ok = wp_rsa_verify_sha256(key, (const unsigned char *)msg, msglen, sig, (size_t)siglen);
  }
  lua_pushboolean(L, ok);
  return 1;
}

void wp_open_protocol(lua_State *L) {
  static const luaL_Reg functions[] = {
    {"authorization", l_authorization},
    {"verify_message", l_verify_message},
    {NULL, NULL}
  };
  luaL_setfuncs(L, functions, 0);
}
