-- wechatpay-lua: the WeChat Pay API v3 client for Lua, with a C core.
-- Debian provides the Lua dependencies as packages (lua-cjson, lua-expat), so an install
-- from this checkout is:  luarocks make --deps-mode=none rockspec/wechatpay-scm-1.rockspec
-- This is the mbedTLS build of rockspec/wechatpay-scm-1.rockspec (which uses
-- OpenSSL 3, several times faster at RSA signing): the same modules, the same
-- Lua API, with csrc/crypto_mbedtls.c (Debian: libmbedtls-dev), for systems
-- without OpenSSL 3.  Install one or the other, not both:
--   luarocks make --deps-mode=none rockspec/wechatpay-mbedtls-scm-1.rockspec
-- spec/rockspec_spec.lua checks that the two list the same modules.
-- The mock WeChat Pay server (wechatpay.mock.*, which needs nginx, luaossl
-- and luasocket) is its own rock, rockspec/wechatpay-mock-scm-1.rockspec, with
-- its sources in mock/: LuaRocks' builtin backend copies the whole lua/ folder.
rockspec_format = "3.0"
package = "wechatpay-mbedtls"
version = "scm-1"
source = {
  url = "git+https://github.com/wechatpay-lua/wechatpay-lua.git",
  branch = "main",
}
description = {
  summary = "WeChat Pay API v3 client: chained calls, signed and verified, over libcurl and mbedTLS",
  detailed = [[
A client for the WeChat Pay (微信支付) API v3 in the chained call style of
wechatpay-php (client.v3.pay.transactions.jsapi:post{...}, postAsync for a
promise). Every request is signed with the merchant's RSA-2048 key
(WECHATPAY2-SHA256-RSA2048) and every response and callback verified against
WeChat Pay's public keys or platform certificates; callback resources and
certificate downloads are decrypted (AEAD_AES_256_GCM). A C core does the
crypto on mbedTLS (the wechatpay rock uses OpenSSL 3) and the HTTP on
libcurl; the Lua layer adds promises, retries and a rate limit. Built and
tested for Lua 5.4 and LuaJIT 2.1.
The mock WeChat Pay server used in tests is a separate rock, wechatpay-mock.
]],
  homepage = "https://github.com/wechatpay-lua/wechatpay-lua",
  issues_url = "https://github.com/wechatpay-lua/wechatpay-lua/issues",
  license = "Apache-2.0",
  maintainer = "wechatpay-lua maintainers <wechatpay-lua@users.noreply.github.com>",
  labels = { "wechat", "payment", "wechatpay", "crypto", "http" },
}
dependencies = {
  "lua >= 5.1",
  "lua-cjson",
  "luaexpat",   -- APIv2 XML (Debian: lua-expat)
}
external_dependencies = {
  CURL = { header = "curl/curl.h", library = "curl" },
  ZLIB = { header = "zlib.h", library = "z" },
  MBEDTLS = { header = "mbedtls/pk.h", library = "mbedcrypto" },
}
build = {
  type = "builtin",
  modules = {
    ["wechatpay.core"] = {
      sources = {
        "csrc/core.c", "csrc/lclass.c", "csrc/lfs.c", "csrc/lkey.c", "csrc/lcrypto.c", "csrc/lprotocol.c", "csrc/lhttp.c", "csrc/lstream.c",
        "csrc/ljson.c", "csrc/json.c",
        "csrc/crypto_mbedtls.c", "csrc/base64.c",
      },
      libraries = { "curl", "z", "mbedtls", "mbedx509", "mbedcrypto", "pthread" },
      incdirs = { "$(CURL_INCDIR)", "$(ZLIB_INCDIR)", "$(MBEDTLS_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)", "$(ZLIB_LIBDIR)", "$(MBEDTLS_LIBDIR)" },
    },
    ["wechatpay"] = "lua/wechatpay/init.lua",
    ["wechatpay.aes"] = "lua/wechatpay/aes.lua",
    ["wechatpay.base64"] = "lua/wechatpay/base64.lua",
    ["wechatpay.certificates"] = "lua/wechatpay/certificates.lua",
    ["wechatpay.chain"] = "lua/wechatpay/chain.lua",
    ["wechatpay.client"] = "lua/wechatpay/client.lua",
    ["wechatpay.config"] = "lua/wechatpay/config.lua",
    ["wechatpay.dedupe"] = "lua/wechatpay/dedupe.lua",
    ["wechatpay.dispatcher"] = "lua/wechatpay/dispatcher.lua",
    ["wechatpay.download"] = "lua/wechatpay/download.lua",
    ["wechatpay.errors"] = "lua/wechatpay/errors.lua",
    ["wechatpay.hash"] = "lua/wechatpay/hash.lua",
    ["wechatpay.headers"] = "lua/wechatpay/headers.lua",
    ["wechatpay.hosts"] = "lua/wechatpay/hosts.lua",
    ["wechatpay.key"] = "lua/wechatpay/key.lua",
    ["wechatpay.media"] = "lua/wechatpay/media.lua",
    ["wechatpay.nginx"] = "lua/wechatpay/nginx.lua",
    ["wechatpay.ngx"] = "lua/wechatpay/ngx.lua",
    ["wechatpay.notification"] = "lua/wechatpay/notification.lua",
    ["wechatpay.observe"] = "lua/wechatpay/observe.lua",
    ["wechatpay.promise"] = "lua/wechatpay/promise.lua",
    ["wechatpay.random"] = "lua/wechatpay/random.lua",
    ["wechatpay.ratelimit"] = "lua/wechatpay/ratelimit.lua",
    ["wechatpay.request"] = "lua/wechatpay/request.lua",
    ["wechatpay.response"] = "lua/wechatpay/response.lua",
    ["wechatpay.retry"] = "lua/wechatpay/retry.lua",
    ["wechatpay.rsa"] = "lua/wechatpay/rsa.lua",
    ["wechatpay.text"] = "lua/wechatpay/text.lua",
    ["wechatpay.verify"] = "lua/wechatpay/verify.lua",
    ["wechatpay.v2"] = "lua/wechatpay/v2/init.lua",
    ["wechatpay.v2.answer"] = "lua/wechatpay/v2/answer.lua",
    ["wechatpay.v2.config"] = "lua/wechatpay/v2/config.lua",
    ["wechatpay.v2.notification"] = "lua/wechatpay/v2/notification.lua",
    ["wechatpay.v2.request"] = "lua/wechatpay/v2/request.lua",
    ["wechatpay.v2.sign"] = "lua/wechatpay/v2/sign.lua",
    ["wechatpay.v2.xml"] = "lua/wechatpay/v2/xml.lua",
    ["wechatpay.transport.curl"] = "lua/wechatpay/transport/curl.lua",
    ["wechatpay.transport.ngx"] = "lua/wechatpay/transport/ngx.lua",
    ["wechatpay.cli"] = "lua/wechatpay/cli/init.lua",
    ["wechatpay.cli.args"] = "lua/wechatpay/cli/args.lua",
    ["wechatpay.cli.call"] = "lua/wechatpay/cli/call.lua",
    ["wechatpay.cli.certs"] = "lua/wechatpay/cli/certs.lua",
    ["wechatpay.cli.config"] = "lua/wechatpay/cli/config.lua",
    ["wechatpay.cli.doctor"] = "lua/wechatpay/cli/doctor.lua",
    ["wechatpay.cli.exit"] = "lua/wechatpay/cli/exit.lua",
    ["wechatpay.cli.output"] = "lua/wechatpay/cli/output.lua",
    ["wechatpay.grant.batch"] = "lua/wechatpay/grant/batch.lua",
    ["wechatpay.grant.cli"] = "lua/wechatpay/grant/cli.lua",
    ["wechatpay.grant.csv"] = "lua/wechatpay/grant/csv.lua",
    ["wechatpay.grant.progress"] = "lua/wechatpay/grant/progress.lua",
    ["wechatpay.grant.results"] = "lua/wechatpay/grant/results.lua",
  },
  install = {
    bin = { ["wechatpay"] = "bin/wechatpay", ["wechatpay-grant"] = "bin/wechatpay-grant",
            ["wechatpay-certs"] = "bin/wechatpay-certs" },
  },
}
