/*
 * core.json_decode: Lua values from json.c's tokens.  Used where the bytes
 * come from WeChat Pay and speed matters (callbacks: the envelope, then
 * the decrypted resource).  Unlike lua-cjson it keeps integers integers on
 * Lua 5.4 (amounts are in fen) and refuses what RFC 8259 refuses.
 */
#include <stdio.h>

#include "wechatpay.h"
#include "json.h"

/* Big integers and numbers with a fraction or exponent: Lua's own
 * conversion, which is exact and does not depend on the C locale.  A
 * number beyond a double's range (1e400) is refused, not made infinite. */
static int push_number(lua_State *L, const char *text, size_t len) {
  int ok;
  lua_Number n;
  lua_pushlstring(L, text, len);
  n = lua_tonumberx(L, -1, &ok);
  lua_pop(L, 1);
  if (!ok || n - n != 0) return 0;   /* not a number, or out of range (inf) */
  lua_pushnumber(L, n);
  return 1;
}

/* Pushes the value of the JSON text and returns 1, or leaves the stack as
 * it was and returns 0 with err (WP_JSON_ERRLEN bytes) set. */
int wp_push_json(lua_State *L, const char *text, size_t len, char *err) {
  int base = lua_gettop(L);       /* before the scratch, which may go on the stack */
  char small[4096];
  char *buf = len <= sizeof small ? small : (char *)wp_scratch(L, len);
  int count[WP_JSON_MAX_DEPTH];   /* items so far in each open array */
  wp_json j;
  wp_json_token t;
  wp_json_init(&j, text, len, buf);
  for (;;) {
    switch (wp_json_next(&j, &t, err)) {
      case WP_JSON_ERROR:
        lua_settop(L, base);
        return 0;
      case WP_JSON_DONE:
        if (buf != small) lua_remove(L, base + 1);   /* the scratch, below the value */
        return 1;
      case WP_JSON_OBJECT:
      case WP_JSON_ARRAY:
        luaL_checkstack(L, 4, "JSON nesting");
        lua_newtable(L);
        count[j.depth - 1] = 0;
        continue;             /* stored in its parent at its END */
      case WP_JSON_KEY:
        lua_pushlstring(L, t.str, t.len);
        continue;             /* the value follows */
      case WP_JSON_END:
        break;
      case WP_JSON_STRING:
        lua_pushlstring(L, t.str, t.len);
        break;
      case WP_JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)t.integer);
        break;
      case WP_JSON_NUMBER:
        if (!push_number(L, t.str, t.len)) {
          lua_settop(L, base);
          snprintf(err, WP_JSON_ERRLEN, "invalid JSON: a number Lua cannot represent at offset %lu",
                   (unsigned long)(t.str - text));
          return 0;
        }
        break;
      case WP_JSON_NULL:
        lua_pushlightuserdata(L, NULL);
        break;
      case WP_JSON_TRUE:
      case WP_JSON_FALSE:
        lua_pushboolean(L, t.type == WP_JSON_TRUE);
        break;
    }
    /* a complete value on top: into its container, if it has one */
    if (j.depth > 0) {
      if (j.stack[j.depth - 1] == '[') lua_rawseti(L, -2, ++count[j.depth - 1]);
      else lua_rawset(L, -3);
    }
  }
}

/* core.json_decode(text) -> value | nil, err
 * Objects and arrays become tables, null becomes lightuserdata NULL (the
 * value of cjson.null), integers that fit stay integers.  err names what is
 * wrong and its byte offset, never the text. */
static int l_json_decode(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  char err[WP_JSON_ERRLEN];
  if (wp_push_json(L, text, len, err)) return 1;
  lua_pushnil(L);
  lua_pushstring(L, err);
  return 2;
}

void wp_open_json(lua_State *L) {
  static const luaL_Reg functions[] = {
    {"json_decode", l_json_decode},
    {NULL, NULL}
  };
  luaL_setfuncs(L, functions, 0);
}
