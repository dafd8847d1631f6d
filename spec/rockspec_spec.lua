-- The rockspec installs a working module with Debian's luarocks, and lists
-- every Lua module and C source of the tree.
local ossl = require("support.openssl")

local ROCKSPEC = "rockspec/wechatpay-scm-1.rockspec"

local function rockspec_table()
  local env = {}
  local chunk = assert(loadfile(ROCKSPEC, "t", env) or loadfile(ROCKSPEC))
  if setfenv then setfenv(chunk, env) end
  chunk()
  return env
end

describe("rockspec", function()
  it("lists every Lua module and C source of the tree", function()
    local spec = rockspec_table()
    local listed = {}
    for name, entry in pairs(spec.build.modules) do
      if type(entry) == "string" then listed[entry] = name end
    end
    for path in ossl.run("find lua -name '*.lua'"):gmatch("[^\n]+") do
      assert.is_truthy(listed[path], path .. " is missing from " .. ROCKSPEC)
    end
    local sources = {}
    for _, src in ipairs(spec.build.modules["wechatpay.core"].sources) do sources[src] = true end
    for path in ossl.run("ls csrc/*.c"):gmatch("[^\n]+") do
      if not path:find("fuzz_", 1, true) then
        assert.is_truthy(sources[path], path .. " is missing from the core's sources")
      end
    end
  end)

  it("installs with luarocks make into a tree, and the installed module loads and signs", function()
    if jit then
      pending("checked once, under Lua 5.4")
      return
    end
    local tree = ossl.tmpdir()
    finally(function() ossl.remove(tree) end)
    ossl.run("luarocks --lua-version 5.4 make --deps-mode=none --tree " .. ossl.quote(tree) .. " " .. ROCKSPEC
      -- Debian puts curl.h under the multiarch include folder
      .. " CURL_INCDIR=$(dirname $(echo '#include <curl/curl.h>' | cc -M -E -x c - | grep -o '[^ ]*/curl/curl.h' | head -n1))/..")
    local out = ossl.run("cd / && LUA_PATH=" .. ossl.quote(tree .. "/share/lua/5.4/?.lua;" .. tree .. "/share/lua/5.4/?/init.lua;;")
      .. " LUA_CPATH=" .. ossl.quote(tree .. "/lib/lua/5.4/?.so;;")
      .. " lua5.4 -e 'local w = require(\"wechatpay\"); print(package.searchpath(\"wechatpay.core\", package.cpath)); print(#w.random.nonce())'")
    assert.equal(tree .. "/lib/lua/5.4/wechatpay/core.so\n32\n", out)
  end)
end)
