/*
 * Shared by the Lua bindings of wechatpay.core: Lua version shims, class
 * names and the prototypes each binding file exports to core.c.
 */
#ifndef WECHATPAY_H
#define WECHATPAY_H

#include <lua.h>
#include <lauxlib.h>

#include "crypto.h"
#include "base64.h"

/* Room for whatever base64 the RSA length check lets through: up to
 * WP_BASE64_ENCODED_LEN(WP_RSA_MAX_BYTES) characters decode to a little more
 * than WP_RSA_MAX_BYTES when unpadded, and that input comes from the network. */
#define WP_RSA_B64_DECODED_MAX WP_BASE64_DECODED_MAX(WP_BASE64_ENCODED_LEN(WP_RSA_MAX_BYTES))

/* ---- Lua 5.1 / LuaJIT 2.1 shims (LuaJIT already has luaL_setfuncs,
 * luaL_testudata and luaL_newlib) ---------------------------------------- */
#if LUA_VERSION_NUM < 502
#ifndef luaL_newlib
#define luaL_newlib(L, l) (lua_newtable(L), luaL_setfuncs(L, l, 0))
#endif
#define lua_rawlen(L, i) lua_objlen(L, (i))
#endif

/* Userdata classes (lclass.c), each keyed by the address of a static tag
 * of its own file: another build's objects are refused, never misread. */
void wp_new_class(lua_State *L, const char *tag, const char *name, const luaL_Reg *metamethods,
                  const luaL_Reg *methods);
/* Sets the class's metatable on the userdata on top of the stack. */
void wp_set_class(lua_State *L, const char *tag);
/* The userdata at idx if it is of this class (of this build), else raises. */
void *wp_check_class(lua_State *L, int idx, const char *tag, const char *name);

#define WP_KEY_CLASS "wechatpay.key"

/* A key object: box first (ptr NULL), then acquire, so __gc always frees. */
typedef struct {
  wp_key *key;
} wp_lkey;

wp_key *wp_check_key(lua_State *L, int idx);
/* Pushes a Lua string made by `fill`, through GC-owned scratch memory so a
 * memory error in Lua can never leak what C allocated. */
void *wp_scratch(lua_State *L, size_t size);

/* n characters of [0-9A-Za-z], unbiased, from the CSPRNG; -1 with err set on failure */
int wp_nonce(char *out, size_t n, char *err);

/* AEAD_AES_256_GCM as WeChat Pay uses it (tag appended, base64): pushes the
 * plaintext and returns 1; or, with err (WP_ERRLEN) set and the stack as it
 * was, returns -1 when the input cannot be a sealed message (base64, length)
 * and 0 when it does not open with this key (not an AES key's size, another
 * key, altered data).
 * Whatever was decrypted is wiped from scratch memory. */
int wp_push_gcm_plaintext(lua_State *L, const char *key, size_t keylen, const char *iv, size_t ivlen,
                          const char *aad, size_t aadlen, const char *b64, size_t b64len, char *err);
/* Pushes the value of a JSON text (json.h's rules) and returns 1, or
 * returns 0 with err (WP_JSON_ERRLEN bytes) set and nothing pushed. */
int wp_push_json(lua_State *L, const char *text, size_t len, char *err);

void wp_open_keys(lua_State *L);     /* adds key functions to the table on top */
void wp_open_crypto(lua_State *L);   /* rsa, aes, digests, base64, random */
void wp_open_protocol(lua_State *L); /* the v3 signature scheme */
void wp_open_http(lua_State *L);     /* the libcurl transport */
void wp_open_stream(lua_State *L);   /* gzip inflater and incremental digests (downloads) */
void wp_open_json(lua_State *L);     /* the strict JSON decoder (what WeChat Pay sends) */
void wp_open_fs(lua_State *L);       /* fsync, directory listing, temporary files; no subprocess */

#endif
