/*
 * Userdata classes (keys, sessions, hashers, inflaters) whose metatable is
 * registered under the address of a tag variable of this build, not under
 * a name: two builds of the module (OpenSSL's and mbedTLS's, as
 * spec/backends_spec.lua loads them) may share a Lua state, and neither
 * may hand its objects to the other's C code, whose structs differ.
 */
#include "wechatpay.h"

static void push_metatable(lua_State *L, const char *tag) {
  lua_pushlightuserdata(L, (void *)tag);
  lua_rawget(L, LUA_REGISTRYINDEX);
}

void wp_new_class(lua_State *L, const char *tag, const char *name, const luaL_Reg *metamethods,
                  const luaL_Reg *methods) {
  push_metatable(L, tag);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    luaL_setfuncs(L, metamethods, 0);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushstring(L, name);   /* what tostring, key.is_key and error messages read */
    lua_setfield(L, -2, "__name");
    lua_pushlightuserdata(L, (void *)tag);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
  }
  lua_pop(L, 1);
}

void wp_set_class(lua_State *L, const char *tag) {
  push_metatable(L, tag);
  lua_setmetatable(L, -2);
}

void *wp_check_class(lua_State *L, int idx, const char *tag, const char *name) {
  void *box = lua_touserdata(L, idx);
  if (box && lua_getmetatable(L, idx)) {
    int ours;
    push_metatable(L, tag);
    ours = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (ours) return box;
  }
  luaL_argerror(L, idx, lua_pushfstring(L, "%s (%s) expected, got %s", name, wp_crypto_backend(),
                                        box ? "another build's or type's userdata" : luaL_typename(L, idx)));
  return NULL;
}
