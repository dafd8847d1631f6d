-- wechatpay-mock: a mock WeChat Pay API v3 server on nginx (OpenResty's lua
-- module), for testing code that uses wechatpay-lua without the real API.
-- Kept out of the main rock: it needs nginx, luaossl and luasocket, which a
-- client never does.  Debian provides them as packages (nginx,
-- libnginx-mod-http-lua, lua-luaossl, lua-socket), so an install from this
-- checkout is:  luarocks make --deps-mode=none rockspec/wechatpay-mock-scm-1.rockspec
-- Its sources sit in mock/, apart from the client's lua/.  Build type "none"
-- with install.lua, not "builtin": LuaRocks' builtin backend copies all of a
-- top-level lua/ folder whatever `modules` lists, so this rock would install
-- the client's files a second time, in conflict with wechatpay.
rockspec_format = "3.0"
package = "wechatpay-mock"
version = "scm-1"
source = {
  url = "git+https://github.com/wechatpay-lua/wechatpay-lua.git",
  branch = "main",
}
description = {
  summary = "A mock WeChat Pay API v3 server on nginx, for testing wechatpay-lua clients",
  detailed = [[
Starts an nginx on 127.0.0.1 whose Lua handler answers like the WeChat Pay
API v3: it checks each request's WECHATPAY2-SHA256-RSA2048 signature, signs
its responses, and uses throwaway keys and certificates it makes with luaossl
(never with wechatpay.core, so a shared mistake cannot go unnoticed); faults
can be armed through its admin port. nginx with its lua module must be
installed; it is not a rock.
]],
  homepage = "https://github.com/wechatpay-lua/wechatpay-lua",
  issues_url = "https://github.com/wechatpay-lua/wechatpay-lua/issues",
  license = "Apache-2.0",
  maintainer = "wechatpay-lua maintainers <wechatpay-lua@users.noreply.github.com>",
  labels = { "wechat", "payment", "wechatpay", "testing", "mock" },
}
dependencies = {
  "lua >= 5.1",
  "wechatpay",
  "lua-cjson",
  "luaossl",
  "luasocket",
  "luaexpat",
}
build = {
  type = "none",
  install = {
    lua = {
      ["wechatpay.mock"] = "mock/wechatpay/mock/init.lua",
      ["wechatpay.mock.admin"] = "mock/wechatpay/mock/admin.lua",
      ["wechatpay.mock.auth"] = "mock/wechatpay/mock/auth.lua",
      ["wechatpay.mock.bills"] = "mock/wechatpay/mock/bills.lua",
      ["wechatpay.mock.certs"] = "mock/wechatpay/mock/certs.lua",
      ["wechatpay.mock.coupons"] = "mock/wechatpay/mock/coupons.lua",
      ["wechatpay.mock.faults"] = "mock/wechatpay/mock/faults.lua",
      ["wechatpay.mock.gcm"] = "mock/wechatpay/mock/gcm.lua",
      ["wechatpay.mock.handler"] = "mock/wechatpay/mock/handler.lua",
      ["wechatpay.mock.media"] = "mock/wechatpay/mock/media.lua",
      ["wechatpay.mock.nginx_conf"] = "mock/wechatpay/mock/nginx_conf.lua",
      ["wechatpay.mock.notify"] = "mock/wechatpay/mock/notify.lua",
      ["wechatpay.mock.pki"] = "mock/wechatpay/mock/pki.lua",
      ["wechatpay.mock.response"] = "mock/wechatpay/mock/response.lua",
      ["wechatpay.mock.state"] = "mock/wechatpay/mock/state.lua",
      ["wechatpay.mock.users"] = "mock/wechatpay/mock/users.lua",
      ["wechatpay.mock.util"] = "mock/wechatpay/mock/util.lua",
      ["wechatpay.mock.v2"] = "mock/wechatpay/mock/v2.lua",
    },
  },
}
