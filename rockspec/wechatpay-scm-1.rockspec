-- wechatpay-lua: the WeChat Pay API v3 client for Lua, with a C core.
-- Debian provides the Lua dependencies as packages (lua-cjson, and for the
-- mock lua-luaossl, lua-socket and nginx with its lua module), so an install
-- from this checkout is:  luarocks make --deps-mode=none rockspec/wechatpay-scm-1.rockspec
rockspec_format = "3.0"
package = "wechatpay"
version = "scm-1"
source = {
  url = "git+file://./",
}
description = {
  summary = "WeChat Pay API v3 client: chained calls, signed and verified, over libcurl and mbedTLS",
  license = "Apache-2.0",
}
dependencies = {
  "lua >= 5.1",
  "lua-cjson",
}
external_dependencies = {
  CURL = { header = "curl/curl.h", library = "curl" },
  MBEDTLS = { header = "mbedtls/pk.h", library = "mbedcrypto" },
}
build = {
  type = "builtin",
  modules = {
    ["wechatpay.core"] = {
      sources = {
        "csrc/core.c", "csrc/lkey.c", "csrc/lcrypto.c", "csrc/lprotocol.c", "csrc/lhttp.c",
        "csrc/crypto_mbedtls.c", "csrc/base64.c",
      },
      libraries = { "curl", "mbedtls", "mbedx509", "mbedcrypto", "pthread" },
      incdirs = { "$(CURL_INCDIR)", "$(MBEDTLS_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)", "$(MBEDTLS_LIBDIR)" },
    },
    ["wechatpay"] = "lua/wechatpay/init.lua",
    ["wechatpay.aes"] = "lua/wechatpay/aes.lua",
    ["wechatpay.base64"] = "lua/wechatpay/base64.lua",
    ["wechatpay.chain"] = "lua/wechatpay/chain.lua",
    ["wechatpay.client"] = "lua/wechatpay/client.lua",
    ["wechatpay.dispatcher"] = "lua/wechatpay/dispatcher.lua",
    ["wechatpay.errors"] = "lua/wechatpay/errors.lua",
    ["wechatpay.hash"] = "lua/wechatpay/hash.lua",
    ["wechatpay.key"] = "lua/wechatpay/key.lua",
    ["wechatpay.promise"] = "lua/wechatpay/promise.lua",
    ["wechatpay.random"] = "lua/wechatpay/random.lua",
    ["wechatpay.response"] = "lua/wechatpay/response.lua",
    ["wechatpay.rsa"] = "lua/wechatpay/rsa.lua",
    ["wechatpay.verify"] = "lua/wechatpay/verify.lua",
    ["wechatpay.transport.curl"] = "lua/wechatpay/transport/curl.lua",
    ["wechatpay.grant.batch"] = "lua/wechatpay/grant/batch.lua",
    ["wechatpay.grant.cli"] = "lua/wechatpay/grant/cli.lua",
    ["wechatpay.grant.csv"] = "lua/wechatpay/grant/csv.lua",
    ["wechatpay.grant.progress"] = "lua/wechatpay/grant/progress.lua",
    ["wechatpay.grant.results"] = "lua/wechatpay/grant/results.lua",
    ["wechatpay.mock"] = "lua/wechatpay/mock/init.lua",
    ["wechatpay.mock.admin"] = "lua/wechatpay/mock/admin.lua",
    ["wechatpay.mock.auth"] = "lua/wechatpay/mock/auth.lua",
    ["wechatpay.mock.coupons"] = "lua/wechatpay/mock/coupons.lua",
    ["wechatpay.mock.faults"] = "lua/wechatpay/mock/faults.lua",
    ["wechatpay.mock.handler"] = "lua/wechatpay/mock/handler.lua",
    ["wechatpay.mock.nginx_conf"] = "lua/wechatpay/mock/nginx_conf.lua",
    ["wechatpay.mock.pki"] = "lua/wechatpay/mock/pki.lua",
    ["wechatpay.mock.response"] = "lua/wechatpay/mock/response.lua",
    ["wechatpay.mock.state"] = "lua/wechatpay/mock/state.lua",
    ["wechatpay.mock.users"] = "lua/wechatpay/mock/users.lua",
    ["wechatpay.mock.util"] = "lua/wechatpay/mock/util.lua",
  },
  install = {
    bin = { ["wechatpay-grant"] = "bin/wechatpay-grant" },
  },
}
