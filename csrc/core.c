/* luaopen_wechatpay_core: the one symbol this module exports. */
#include <time.h>

#include "wechatpay.h"

#if defined(__GNUC__)
#define WP_EXPORT __attribute__((visibility("default")))
#else
#define WP_EXPORT
#endif

WP_EXPORT int luaopen_wechatpay_core(lua_State *L);

/* core.monotonic() -> seconds from a clock that never jumps (timers, rate limits) */
static int l_monotonic(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

WP_EXPORT int luaopen_wechatpay_core(lua_State *L) {
  lua_newtable(L);
  wp_open_keys(L);
  wp_open_crypto(L);
  wp_open_protocol(L);
  wp_open_stream(L);
  wp_open_json(L);
  wp_open_fs(L);
#ifndef WP_NO_HTTP
  wp_open_http(L);
#endif
  lua_pushcfunction(L, l_monotonic);
  lua_setfield(L, -2, "monotonic");
  lua_pushliteral(L, "0.1.0");
  lua_setfield(L, -2, "version");
  return 1;
}
