/*
 * A minimal Lua interpreter for the DEV=1 suite: `lua_host script.lua args...`.
 * Built with AddressSanitizer, it loads the sanitized wechatpay.core without
 * preloading ASan into the whole environment, where it would also reach
 * every program the specs start (openssl, curl, nginx) and change them.
 * Compiles against Lua 5.4 or LuaJIT.  On Lua 5.4 the script also gets
 * fail_allocation_after(n): the allocation after the next n fails, as when
 * memory runs out (nil: none fails), for the specs of what a memory error
 * must not lose; LuaJIT's 64-bit states take no allocator but their own.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

/* Ctrl-C raises "interrupted!" in the running script, as the stock
 * interpreters do, so the batch tool's interrupt handling is exercised. */
static lua_State *running;

static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

static void on_sigint(int sig) {
  signal(sig, SIG_DFL);
  lua_sethook(running, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

#if LUA_VERSION_NUM >= 504
static long allocation_budget = -1;   /* negative: no limit */

/* Only growth can fail: Lua counts on a block shrinking or freed in place. */
static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  if ((ptr == NULL || nsize > osize) && allocation_budget >= 0) {
    if (allocation_budget == 0) return NULL;
    allocation_budget--;
  }
  return realloc(ptr, nsize);
}

static int l_fail_allocation_after(lua_State *L) {
  allocation_budget = lua_isnoneornil(L, 1) ? -1 : (long)luaL_checkinteger(L, 1);
  return 0;
}
#endif

/* The error as lua.c shows it: a string, what __tostring makes of an
 * error object, or its type; never a NULL for printf. */
static const char *error_text(lua_State *L) {
  const char *text = lua_tostring(L, -1);
  int type = lua_type(L, -1);
  if (text) return text;
  if (luaL_callmeta(L, -1, "__tostring")) {
    if (lua_type(L, -1) == LUA_TSTRING) return lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  return lua_pushfstring(L, "(error object is a %s value)", lua_typename(L, type));
}

int main(int argc, char **argv) {
  lua_State *L;
  int i, status;
  if (argc < 2) {
    fprintf(stderr, "usage: %s script.lua [args...]\n", argv[0]);
    return 2;
  }
  L = luaL_newstate();   /* its panic and warning functions, then our allocator */
  if (!L) return 1;
#if LUA_VERSION_NUM >= 504
  lua_setallocf(L, limited_alloc, NULL);   /* both are malloc's: blocks move freely between them */
#endif
  luaL_openlibs(L);
#if LUA_VERSION_NUM >= 504
  lua_register(L, "fail_allocation_after", l_fail_allocation_after);
#endif
  lua_createtable(L, argc, 2);   /* arg, as lua.c builds it */
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");
  status = luaL_loadfile(L, argv[1]);
  if (status == 0) {
    for (i = 2; i < argc; i++) lua_pushstring(L, argv[i]);
    running = L;
    signal(SIGINT, on_sigint);
    status = lua_pcall(L, argc - 2, 0, 0);
    signal(SIGINT, SIG_DFL);
  }
  if (status != 0) {
    fprintf(stderr, "%s: %s\n", argv[0], error_text(L));
  }
  lua_close(L);
  return status == 0 ? 0 : 1;
}
