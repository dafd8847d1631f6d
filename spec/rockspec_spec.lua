-- The rockspecs install working modules with Debian's luarocks, could be
-- published as they are, and between them list every Lua module and C
-- source of the tree: the client's in wechatpay, the mock's (which needs
-- nginx, luaossl and luasocket) in wechatpay-mock only.  wechatpay-mbedtls
-- is wechatpay built on mbedTLS: the same modules, its own crypto backend.
local ossl = require("support.openssl")

local MAIN = "rockspec/wechatpay-scm-1.rockspec"
local MBEDTLS = "rockspec/wechatpay-mbedtls-scm-1.rockspec"
local MOCK = "rockspec/wechatpay-mock-scm-1.rockspec"
-- each crypto backend belongs to exactly one build of the client
local BACKEND_OF = { [MAIN] = "csrc/crypto_openssl.c", [MBEDTLS] = "csrc/crypto_mbedtls.c" }

local function rockspec_table(path)
  local env = {}
  local chunk = assert(loadfile(path, "t", env) or loadfile(path))
  if setfenv then setfenv(chunk, env) end
  chunk()
  return env
end

-- path -> module name, for the Lua modules a rockspec lists (builtin's
-- modules, or install.lua of a "none" build)
local function listed_paths(spec)
  local listed = {}
  local lists = { spec.build.modules or {}, spec.build.install and spec.build.install.lua or {} }
  for _, list in ipairs(lists) do
    for name, entry in pairs(list) do
      if type(entry) == "string" then listed[entry] = name end
    end
  end
  return listed
end

-- the module name a file under lua/ or mock/ is required by
local function module_name(path)
  return (path:gsub("^lua/", ""):gsub("^mock/", ""):gsub("/init%.lua$", ""):gsub("%.lua$", ""):gsub("/", "."))
end

local function lua_files()
  local files = {}
  for path in ossl.run("cd " .. ossl.quote(ossl.repo_root()) .. " && find lua mock -name '*.lua' | sort"):gmatch("[^\n]+") do
    files[#files + 1] = path
  end
  return files
end

local function is_mock(path) return path:find("^mock/wechatpay/mock/") ~= nil end

describe("rockspec", function()
  local main, mbedtls, mock

  setup(function()
    main, mbedtls, mock = rockspec_table(MAIN), rockspec_table(MBEDTLS), rockspec_table(MOCK)
  end)

  it("wechatpay lists every Lua module outside mock/, and wechatpay-mock every one inside", function()
    local in_main, in_mock = listed_paths(main), listed_paths(mock)
    local files = lua_files()
    assert.is_true(#files > 20)
    for _, path in ipairs(files) do
      local home, other = MAIN, MOCK
      local listed, elsewhere = in_main, in_mock
      if is_mock(path) then home, other, listed, elsewhere = MOCK, MAIN, in_mock, in_main end
      assert.is_truthy(listed[path], path .. " is missing from " .. home)
      assert.equal(module_name(path), listed[path], path .. " is listed under another module name")
      assert.is_nil(elsewhere[path], path .. " belongs in " .. home .. ", not in " .. other)
    end
    -- and nothing listed that is not there
    for _, listed in ipairs{ in_main, in_mock } do
      for path in pairs(listed) do
        assert.is_true(ossl.exists(ossl.repo_root() .. "/" .. path), path .. " is listed but does not exist")
      end
    end
  end)

  it("the core's sources are every C file but the fuzzers and the other build's crypto backend", function()
    local files = {}
    for path in ossl.run("cd " .. ossl.quote(ossl.repo_root()) .. " && ls csrc/*.c"):gmatch("[^\n]+") do
      if not path:find("fuzz_", 1, true) then files[#files + 1] = path end
    end
    local backends = {}
    for _, path in ipairs(files) do
      if path:find("^csrc/crypto_") then backends[path] = false end
    end
    for spec_path, spec in pairs{ [MAIN] = main, [MBEDTLS] = mbedtls } do
      local own = BACKEND_OF[spec_path]
      local sources = {}
      for _, src in ipairs(spec.build.modules["wechatpay.core"].sources) do sources[src] = true end
      for _, path in ipairs(files) do
        if path:find("^csrc/crypto_") then
          if path == own then
            assert.is_truthy(sources[path], path .. " is missing from " .. spec_path)
            backends[path] = true
          else
            assert.is_nil(sources[path], path .. " is another build's backend, not " .. spec_path .. "'s")
          end
        else
          assert.is_truthy(sources[path], path .. " is missing from " .. spec_path .. "'s core sources")
        end
      end
      for src in pairs(sources) do
        assert.is_true(ossl.exists(ossl.repo_root() .. "/" .. src), src .. " is listed but does not exist")
      end
    end
    for path, built in pairs(backends) do
      assert.is_true(built, path .. " is in no rockspec")
    end
  end)

  it("wechatpay-mbedtls is wechatpay with the other backend: the same modules, install and dependencies", function()
    local function without_core(spec)
      local modules = {}
      for name, entry in pairs(spec.build.modules) do
        if name ~= "wechatpay.core" then modules[name] = entry end
      end
      return modules
    end
    assert.same(without_core(main), without_core(mbedtls))
    assert.same(main.build.install, mbedtls.build.install)
    assert.same(main.dependencies, mbedtls.dependencies)
    assert.equal("wechatpay-mbedtls", mbedtls.package)
    assert.equal(main.version, mbedtls.version)
    -- zlib inflates gzip bills (csrc/lstream.c) in both
    assert.same({ "curl", "z", "crypto", "pthread" }, main.build.modules["wechatpay.core"].libraries)
    assert.same({ "curl", "z", "mbedtls", "mbedx509", "mbedcrypto", "pthread" },
      mbedtls.build.modules["wechatpay.core"].libraries)
    assert.same(main.external_dependencies.ZLIB, mbedtls.external_dependencies.ZLIB)
    assert.is_table(main.external_dependencies.ZLIB)
    assert.is_table(main.external_dependencies.OPENSSL)
    assert.is_nil(main.external_dependencies.MBEDTLS)
    assert.is_table(mbedtls.external_dependencies.MBEDTLS)
    assert.is_nil(mbedtls.external_dependencies.OPENSSL)
  end)

  it("both could be published: a git source, homepage, licence, maintainer and a detailed description", function()
    assert.equal("builtin", main.build.type)
    -- builtin would copy all of lua/ again: see the mock rockspec's header
    assert.equal("none", mock.build.type)
    for _, spec in ipairs{ main, mbedtls, mock } do
      assert.matches("^git%+https://github%.com/[%w_.-]+/[%w_.-]+%.git$", spec.source.url)
      if spec.version:match("^scm%-") then
        assert.is_string(spec.source.branch)
      else
        assert.equal("v" .. spec.version:gsub("%-%d+$", ""), spec.source.tag)
      end
      local d = spec.description
      assert.matches("^https://", d.homepage)
      assert.equal("Apache-2.0", d.license)
      assert.matches("<[^@>]+@[^>]+>", d.maintainer)
      assert.is_true(#d.summary > 20 and #d.summary < 100)
      assert.is_true(#d.detailed > #d.summary)
    end
    local function depends_on(spec, name)
      for _, dep in ipairs(spec.dependencies) do
        if dep == name or dep:find("^" .. name .. "[ %s<>=~]") then return true end
      end
      return false
    end
    for _, dep in ipairs{ "wechatpay", "luaossl", "luasocket" } do
      assert.is_true(depends_on(mock, dep), MOCK .. " does not depend on " .. dep)
    end
    for _, dep in ipairs{ "luaossl", "luasocket" } do
      assert.is_false(depends_on(main, dep), MAIN .. " must not need " .. dep)
    end
    assert.is_true(ossl.run("luarocks lint " .. MAIN .. " && luarocks lint " .. MBEDTLS .. " && luarocks lint " .. MOCK
      .. " && echo ok") == "ok\n")
  end)

  it("both install with luarocks make into one tree: the client loads and signs, the mock loads", function()
    if jit then
      pending("checked once, under Lua 5.4")
      return
    end
    local tree = ossl.tmpdir()
    finally(function() ossl.remove(tree) end)
    local make = "luarocks --lua-version 5.4 make --deps-mode=none --tree " .. ossl.quote(tree) .. " "
    ossl.run(make .. MAIN
      -- Debian puts curl.h under the multiarch include folder
      .. " CURL_INCDIR=$(dirname $(echo '#include <curl/curl.h>' | cc -M -E -x c - | grep -o '[^ ]*/curl/curl.h' | head -n1))/..")
    local run = "cd / && LUA_PATH=" .. ossl.quote(tree .. "/share/lua/5.4/?.lua;" .. tree .. "/share/lua/5.4/?/init.lua;;")
      .. " LUA_CPATH=" .. ossl.quote(tree .. "/lib/lua/5.4/?.so;;") .. " lua5.4 -e "
    local out = ossl.run(run .. ossl.quote('local w = require("wechatpay"); print(package.searchpath("wechatpay.core", package.cpath)); '
      .. 'print(#w.random.nonce()); print(require("wechatpay.core").crypto_backend)'))
    assert.matches("^" .. tree:gsub("%p", "%%%0") .. "/lib/lua/5%.4/wechatpay/core%.so\n32\nOpenSSL 3%.%d+%.%d+\n$", out)
    -- builtin copies a top-level lua/ whole: the mock's sources live in mock/
    assert.equal("", ossl.run("find " .. ossl.quote(tree .. "/share") .. " -path '*wechatpay/mock*'"))
    ossl.run(make .. MOCK)
    -- no file installed twice (luarocks renames a clash to wechatpay_mock_scm_1-...)
    assert.equal("", ossl.run("find " .. ossl.quote(tree .. "/share") .. " -name '*_scm_1-*'"))
    out = ossl.run(run .. ossl.quote('print(package.searchpath("wechatpay.mock.pki", package.path)); '
      .. 'print(package.searchpath("wechatpay.mock", package.path))'))
    assert.equal(tree .. "/share/lua/5.4/wechatpay/mock/pki.lua\n" .. tree .. "/share/lua/5.4/wechatpay/mock.lua\n", out)
    -- the installed mock starts (its nginx worker loads the installed sources) and answers a signed call
    out = ossl.run(run .. ossl.quote([[
      local server = assert(require("wechatpay.mock").start{})
      local ok, res, err = pcall(function() return server:client{ timeout = 5 }.v3.certificates:get() end)
      server:stop()
      assert(ok, res)
      print(res and res.status, res and #res:json().data, err)
    ]]))
    assert.equal("200\t2\tnil\n", out)

    -- the mbedTLS build, in a tree of its own, signs too
    local tree2 = ossl.tmpdir()
    finally(function() ossl.remove(tree2) end)
    ossl.run("luarocks --lua-version 5.4 make --deps-mode=none --tree " .. ossl.quote(tree2) .. " " .. MBEDTLS
      .. " CURL_INCDIR=$(dirname $(echo '#include <curl/curl.h>' | cc -M -E -x c - | grep -o '[^ ]*/curl/curl.h' | head -n1))/..")
    out = ossl.run("cd / && LUA_PATH=" .. ossl.quote(tree2 .. "/share/lua/5.4/?.lua;" .. tree2 .. "/share/lua/5.4/?/init.lua;;")
      .. " LUA_CPATH=" .. ossl.quote(tree2 .. "/lib/lua/5.4/?.so;;") .. " lua5.4 -e "
      .. ossl.quote('local w = require("wechatpay"); print(#w.random.nonce()); print(require("wechatpay.core").crypto_backend)'))
    assert.matches("^32\nmbedTLS %d+%.%d+%.%d+\n$", out)
  end)
end)
