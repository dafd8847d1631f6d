/*
 * core.json_decode: Lua values from json.c's tokens, for every JSON body
 * WeChat Pay sends (responses, callbacks, certificate downloads).  Unlike
 * lua-cjson it keeps integers integers on Lua 5.4 (amounts are in fen) and
 * refuses what RFC 8259 refuses.  wp_push_json is also what
 * core.open_notification decodes a callback's resource with.
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

/* A container's members wait on the Lua stack until its end, so its table
 * is made once at its final size instead of growing (and rehashing) member
 * by member; past PENDING_MAX members it is made then and filled directly. */
#define PENDING_MAX 64

typedef struct {
  int start;    /* stack index of its first pending item, or of its table once made */
  int n;        /* members so far */
  int made;     /* the table exists (at start) */
} container;

/* Makes the table of container c (array or object) from its pending items
 * and leaves it at c->start, the top. */
static void make_table(lua_State *L, container *c, int is_array) {
  int i, t;
  lua_createtable(L, is_array ? c->n : 0, is_array ? 0 : c->n);
  t = lua_gettop(L);
  for (i = 0; i < c->n; i++) {
    if (is_array) {
      lua_pushvalue(L, c->start + i);
      lua_rawseti(L, t, i + 1);
    } else {
      lua_pushvalue(L, c->start + 2 * i);
      lua_pushvalue(L, c->start + 2 * i + 1);
      lua_rawset(L, t);
    }
  }
  if (t != c->start) {   /* an empty container's table is already in its place */
    lua_replace(L, c->start);
    lua_settop(L, c->start);
  }
  c->made = 1;
}

/* Pushes the value of the JSON text and returns 1, or leaves the stack as
 * it was and returns 0 with err (WP_JSON_ERRLEN bytes) set. */
int wp_push_json(lua_State *L, const char *text, size_t len, char *err) {
  int base = lua_gettop(L);       /* before the scratch, which may go on the stack */
  char small[4096];
  char *buf = len <= sizeof small ? small : (char *)wp_scratch(L, len);
  container open[WP_JSON_MAX_DEPTH];
  wp_json j;
  wp_json_token t;
  wp_json_init(&j, text, len, buf);
  for (;;) {
    container *c;
    int is_array;
    /* members wait on the stack: LuaJIT's is 8000 slots, which deep
     * nesting of wide objects can fill within WP_JSON_MAX_DEPTH (the text
     * may not have been verified yet: an answer, never a raise) */
    if (!lua_checkstack(L, 3)) {
      lua_settop(L, base);
      snprintf(err, WP_JSON_ERRLEN, "JSON nested too deeply for the Lua stack at offset %lu",
               (unsigned long)(j.p - j.start));
      return 0;
    }
    switch (wp_json_next(&j, &t, err)) {
      case WP_JSON_ERROR:
        lua_settop(L, base);
        return 0;
      case WP_JSON_DONE:
        if (buf != small) lua_remove(L, base + 1);   /* the scratch, below the value */
        return 1;
      case WP_JSON_OBJECT:
      case WP_JSON_ARRAY:
        c = &open[j.depth - 1];
        c->start = lua_gettop(L) + 1;
        c->n = 0;
        c->made = 0;
        continue;             /* its members follow */
      case WP_JSON_KEY:
        lua_pushlstring(L, t.str, t.len);
        continue;             /* the value follows */
      case WP_JSON_END:
        c = &open[j.depth];   /* the container just closed */
        if (!c->made) make_table(L, c, j.stack[j.depth] == '[');
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
    /* a complete value on top: a member of its container, if it has one */
    if (j.depth == 0) continue;
    c = &open[j.depth - 1];
    is_array = j.stack[j.depth - 1] == '[';
    c->n++;
    if (c->made) {
      if (is_array) lua_rawseti(L, c->start, c->n);
      else lua_rawset(L, c->start);
    } else if (c->n == PENDING_MAX) {
      make_table(L, c, is_array);
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
