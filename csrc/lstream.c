/*
 * Streaming helpers for downloads that never sit whole in memory: a gzip
 * inflater with a bounded output per call, and an incremental digest over
 * crypto.h (so it works with either crypto backend).
 *
 *   local inf = core.inflater([max_output = 262144])
 *   local out, next_pos, more = inf:update(data [, pos = 1])   -- | nil, err
 *   local ok, err = inf:finish()   -- true once the stream ended cleanly
 *   local h = core.hasher("sha1" | "sha256")
 *   h:update(data); local hex = h:final()
 */
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "wechatpay.h"

#define WP_INFLATER_CLASS "wechatpay.inflater"
#define WP_HASHER_CLASS "wechatpay.hasher"
static const char inflater_class_tag = 0, hasher_class_tag = 0;
#define WP_INFLATE_OUT_DEFAULT (256 * 1024)
#define WP_INFLATE_OUT_MAX (64 * 1024 * 1024)

/* ---- the inflater ------------------------------------------------------- */

typedef struct {
  z_stream z;
  int ready;          /* inflateInit2 succeeded: inflateEnd is owed */
  int ended;          /* the last member's trailer was read */
  int padded;         /* zero bytes followed it: nothing else may now */
  int failed;         /* a corrupt stream: every later call fails too */
  unsigned char *out;
  size_t out_size;
} inflater;

static void inflater_destroy(inflater *inf) {
  if (inf->ready) inflateEnd(&inf->z);
  inf->ready = 0;
  free(inf->out);
  inf->out = NULL;
}

static inflater *check_inflater(lua_State *L) {
  inflater *inf = (inflater *)wp_check_class(L, 1, &inflater_class_tag, WP_INFLATER_CLASS);
  if (!inf->ready) luaL_argerror(L, 1, "inflater has been closed");
  return inf;
}

/* core.inflater([max_output]) -> inflater of a gzip stream (one member or
 * several back to back, as `gzip` writes them, perhaps padded with zero
 * bytes at the end), at most max_output bytes
 * of output per update. */
static int l_inflater(lua_State *L) {
  lua_Integer max_out = luaL_optinteger(L, 1, WP_INFLATE_OUT_DEFAULT);
  inflater *inf;
  luaL_argcheck(L, max_out >= 1 && max_out <= WP_INFLATE_OUT_MAX, 1,
                "max_output must be from 1 to 67108864 bytes");
  inf = (inflater *)lua_newuserdata(L, sizeof *inf);   /* box first ... */
  memset(inf, 0, sizeof *inf);
  wp_set_class(L, &inflater_class_tag);
  inf->out = (unsigned char *)malloc((size_t)max_out);   /* ... then acquire */
  if (!inf->out) return luaL_error(L, "out of memory for an inflater");
  inf->out_size = (size_t)max_out;
  /* 16 + MAX_WBITS: a gzip wrapper, never raw deflate or zlib */
  if (inflateInit2(&inf->z, 16 + MAX_WBITS) != Z_OK) return luaL_error(L, "cannot initialise zlib");
  inf->ready = 1;
  return 1;
}

/* inf:update(data [, pos]) -> output, next_pos, more | nil, err
 * Inflates data from byte pos until max_output bytes came out or the input
 * is used up.  more: the output filled up, so call again (with next_pos,
 * which may be past the end) before giving more input. */
static int l_inflater_update(lua_State *L) {
  inflater *inf = check_inflater(L);
  size_t len, pos, produced;
  const char *data = luaL_checklstring(L, 2, &len);
  lua_Integer start = luaL_optinteger(L, 3, 1);
  int rc = Z_OK;
  const char *why = NULL;
  luaL_argcheck(L, start >= 1 && (size_t)start <= len + 1, 3, "position out of the data's range");
  if (inf->failed) { lua_pushnil(L); lua_pushliteral(L, "corrupt gzip stream"); return 2; }
  pos = (size_t)start - 1;
  inf->z.next_out = inf->out;
  inf->z.avail_out = (uInt)inf->out_size;
  while (inf->z.avail_out > 0) {
    size_t left = len - pos;
    if (inf->ended) {
      if (left == 0) break;
      /* zeros after a member pad the file to a block (tape archives,
       * some servers); gzip -d ignores them, and so does this, but only
       * at the end: nothing else may follow them */
      if (inf->padded || data[pos] == 0) {
        while (pos < len && data[pos] == 0) pos++;
        inf->padded = 1;
        if (pos == len) break;
        rc = Z_DATA_ERROR;
        why = "bytes after its zero padding";
        break;
      }
      /* another member follows (gzip writes concatenated files this way) */
      if (inflateReset(&inf->z) != Z_OK) { rc = Z_STREAM_ERROR; break; }
      inf->ended = 0;
    }
    inf->z.next_in = (Bytef *)(data + pos);
    inf->z.avail_in = (uInt)(left > 0x40000000u ? 0x40000000u : left);
    {
      uInt before = inf->z.avail_in;
      rc = inflate(&inf->z, Z_NO_FLUSH);
      pos += before - inf->z.avail_in;
    }
    if (rc == Z_STREAM_END) { inf->ended = 1; rc = Z_OK; continue; }
    if (rc == Z_BUF_ERROR) { rc = Z_OK; break; }   /* no progress possible: needs input */
    if (rc != Z_OK) break;
    if (pos == len && inf->z.avail_out > 0) break;
  }
  inf->z.next_in = NULL;
  inf->z.avail_in = 0;
  if (rc != Z_OK) {
    inf->failed = 1;
    lua_pushnil(L);
    lua_pushfstring(L, "corrupt gzip stream (%s)", why ? why : inf->z.msg ? inf->z.msg : "zlib error");
    return 2;
  }
  produced = inf->out_size - inf->z.avail_out;
  lua_pushlstring(L, (const char *)inf->out, produced);
  lua_pushinteger(L, (lua_Integer)pos + 1);
  lua_pushboolean(L, inf->z.avail_out == 0);
  return 3;
}

/* inf:finish() -> true | nil, err: whether the stream ended cleanly (a
 * complete last member, its CRC and length checked by zlib). */
static int l_inflater_finish(lua_State *L) {
  inflater *inf = check_inflater(L);
  if (inf->failed) {
    lua_pushnil(L);
    lua_pushliteral(L, "corrupt gzip stream");
    return 2;
  }
  if (!inf->ended) {
    lua_pushnil(L);
    lua_pushliteral(L, "truncated gzip stream: it ends before its last member's trailer");
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* inf:close(); also __gc and __close */
static int l_inflater_close(lua_State *L) {
  inflater_destroy((inflater *)wp_check_class(L, 1, &inflater_class_tag, WP_INFLATER_CLASS));
  return 0;
}

static int l_inflater_tostring(lua_State *L) {
  inflater *inf = (inflater *)wp_check_class(L, 1, &inflater_class_tag, WP_INFLATER_CLASS);
  lua_pushstring(L, inf->ready ? "wechatpay.inflater" : "wechatpay.inflater (closed)");
  return 1;
}

/* ---- the hasher --------------------------------------------------------- */

typedef struct {
  wp_md_ctx *ctx;
  wp_md md;
  int done;
} hasher;

static hasher *check_hasher(lua_State *L) {
  hasher *h = (hasher *)wp_check_class(L, 1, &hasher_class_tag, WP_HASHER_CLASS);
  if (!h->ctx) luaL_argerror(L, 1, "hasher has been closed");
  if (h->done) luaL_argerror(L, 1, "hasher already gave its digest (final is called once)");
  return h;
}

/* core.hasher("sha1" | "sha256") -> hasher */
static int l_hasher(lua_State *L) {
  static const char *const names[] = { "sha1", "sha256", NULL };
  int which = luaL_checkoption(L, 1, NULL, names);
  hasher *h = (hasher *)lua_newuserdata(L, sizeof *h);   /* box first ... */
  memset(h, 0, sizeof *h);
  wp_set_class(L, &hasher_class_tag);
  h->md = which == 0 ? WP_MD_SHA1 : WP_MD_SHA256;
  h->ctx = wp_md_new(h->md);                             /* ... then acquire */
  if (!h->ctx) return luaL_error(L, "cannot start a digest");
  return 1;
}

/* h:update(data) -> h */
static int l_hasher_update(lua_State *L) {
  hasher *h = check_hasher(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  if (wp_md_update(h->ctx, (const unsigned char *)data, len) != 0) return luaL_error(L, "digest update failed");
  lua_settop(L, 1);
  return 1;
}

/* h:final() -> lower-case hex digest; the hasher takes nothing more */
static int l_hasher_final(lua_State *L) {
  static const char hexdigits[] = "0123456789abcdef";
  hasher *h = check_hasher(L);
  unsigned char raw[64];
  char hex[128];
  size_t n = wp_md_size(h->md), i;
  if (wp_md_final(h->ctx, raw) != 0) return luaL_error(L, "digest failed");
  h->done = 1;
  for (i = 0; i < n; i++) {
    hex[2 * i] = hexdigits[raw[i] >> 4];
    hex[2 * i + 1] = hexdigits[raw[i] & 15];
  }
  lua_pushlstring(L, hex, 2 * n);
  return 1;
}

/* h:close(); also __gc and __close */
static int l_hasher_close(lua_State *L) {
  hasher *h = (hasher *)wp_check_class(L, 1, &hasher_class_tag, WP_HASHER_CLASS);
  wp_md_free(h->ctx);
  h->ctx = NULL;
  return 0;
}

static int l_hasher_tostring(lua_State *L) {
  hasher *h = (hasher *)wp_check_class(L, 1, &hasher_class_tag, WP_HASHER_CLASS);
  lua_pushfstring(L, "wechatpay.hasher (%s%s)", h->md == WP_MD_SHA1 ? "sha1" : "sha256",
                  h->ctx ? "" : ", closed");
  return 1;
}

void wp_open_stream(lua_State *L) {
  static const luaL_Reg inflater_methods[] = {
    {"update", l_inflater_update},
    {"finish", l_inflater_finish},
    {"close", l_inflater_close},
    {NULL, NULL}
  };
  static const luaL_Reg hasher_methods[] = {
    {"update", l_hasher_update},
    {"final", l_hasher_final},
    {"close", l_hasher_close},
    {NULL, NULL}
  };
  static const luaL_Reg inflater_metamethods[] = {
    {"__gc", l_inflater_close},
    {"__close", l_inflater_close},
    {"__tostring", l_inflater_tostring},
    {NULL, NULL}
  };
  static const luaL_Reg hasher_metamethods[] = {
    {"__gc", l_hasher_close},
    {"__close", l_hasher_close},
    {"__tostring", l_hasher_tostring},
    {NULL, NULL}
  };
  wp_new_class(L, &inflater_class_tag, WP_INFLATER_CLASS, inflater_metamethods, inflater_methods);
  wp_new_class(L, &hasher_class_tag, WP_HASHER_CLASS, hasher_metamethods, hasher_methods);
  lua_pushcfunction(L, l_inflater);
  lua_setfield(L, -2, "inflater");
  lua_pushcfunction(L, l_hasher);
  lua_setfield(L, -2, "hasher");
  lua_pushstring(L, zlibVersion());
  lua_setfield(L, -2, "zlib_version");
}
