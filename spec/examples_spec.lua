-- examples/*.lua against a mock WeChat Pay, configured as the README tells
-- a user to configure bin/wechatpay: WECHATPAY_* variables holding plain
-- paths, the serial read from WECHATPAY_MERCHANT_CERT.  (`make demo` runs
-- them with --mock, where each example starts a mock of its own.)
local mock = require("wechatpay.mock")
local ossl = require("support.openssl")

local LUA = os.getenv("WECHATPAY_LUA") or (jit and "luajit" or "lua5.4")

-- every variable the tools read, unset for each run but those given
local CONFIG_VARIABLES = {
  "WECHATPAY_CONFIG", "WECHATPAY_MCHID", "WECHATPAY_SERIAL", "WECHATPAY_PRIVATE_KEY", "WECHATPAY_PASSPHRASE",
  "WECHATPAY_MERCHANT_CERT", "WECHATPAY_PUBLIC_KEY_ID", "WECHATPAY_PUBLIC_KEY", "WECHATPAY_CERTS",
  "WECHATPAY_CERT_DIR", "WECHATPAY_APIV3_KEY_FILE", "WECHATPAY_APIV3_KEY", "WECHATPAY_BASE_URL", "WECHATPAY_CAFILE",
}

describe("examples/*.lua configured by the README's WECHATPAY_* variables", function()
  local server, dir, root

  setup(function()
    server = assert(mock.start{ rate_limit = false })
    dir = ossl.tmpdir()
    root = ossl.repo_root()
    ossl.write(dir .. "/apiv3_key", server.apiv3_key)
    ossl.write(dir .. "/apiv2_key", server.apiv2_key)
  end)
  teardown(function()
    if server then server:stop() end
    if dir then ossl.remove(dir) end
  end)

  -- Runs examples/NAME.lua ARGS in dir with the variables of README's `export` line and `extra`;
  -- returns its exit status and output.
  local function run(name, args, extra)
    local function absolute(paths) return (paths:gsub("%./", root .. "/")) end
    local env = {
      LUA_PATH = absolute(package.path), LUA_CPATH = absolute(package.cpath),
      WECHATPAY_MCHID = server.mchid, WECHATPAY_PRIVATE_KEY = server.merchant_key_file,
      WECHATPAY_MERCHANT_CERT = server.merchant_cert_file,
      WECHATPAY_PUBLIC_KEY_ID = server.platform_key_id, WECHATPAY_PUBLIC_KEY = server.platform_public_key_file,
      WECHATPAY_APIV3_KEY_FILE = dir .. "/apiv3_key",
      -- the mock's, in place of WeChat Pay's
      WECHATPAY_BASE_URL = server.base_url, WECHATPAY_CAFILE = server.cafile,
    }
    for k, v in pairs(extra or {}) do env[k] = v end
    local cmd = { "cd", ossl.quote(dir), "&&", "env" }
    for _, var in ipairs(CONFIG_VARIABLES) do cmd[#cmd + 1] = "-u " .. var end
    for k, v in pairs(env) do cmd[#cmd + 1] = k .. "=" .. ossl.quote(v) end
    cmd[#cmd + 1] = "timeout 60 " .. LUA .. " " .. ossl.quote(root .. "/examples/" .. name .. ".lua") .. " " .. (args or "")
    local out = ossl.run(table.concat(cmd, " ") .. " 2>&1; echo \"status=$?\"")
    return tonumber(out:match("status=(%d+)\n$")), out
  end

  it("grant_multiuse_coupon.lua grants in every style", function()
    local openid, user = next(server.users)
    local status, out = run("grant_multiuse_coupon", "", {
      GRANT_STOCK_ID = "9856000", GRANT_APPID = "wx233544546545989",
      GRANT_OPENID = openid, GRANT_NAME = user.name, GRANT_ID_CARD = user.id_card,
    })
    assert.equal(0, status, out)
    assert.matches("coupon_id", out)
    assert.is_nil(out:find("FAILED", 1, true), out)
  end)

  it("upload_media.lua uploads its PNG", function()
    local status, out = run("upload_media")
    assert.equal(0, status, out)
    assert.matches("media_id", out)
  end)

  it("download_bill.lua downloads and checks a bill", function()
    local status, out = run("download_bill", "2026-11-26")
    assert.equal(0, status, out)
    assert.matches("checked", out)
  end)

  it("send_red_packet.lua sends over mutual TLS with WECHATPAY_MERCHANT_CERT and the APIv2 key file", function()
    local status, out = run("send_red_packet", "", {
      WECHATPAY_APIV2_KEY_FILE = dir .. "/apiv2_key",
      REDPACK_APPID = "wx2421b1c4370ec43b", REDPACK_OPENID = "oxTWIuGaIt6gTKsQRLau2M0yL16E",
    })
    assert.equal(0, status, out)
    assert.matches("red packet %d+ sent", out)
  end)

  it("without WECHATPAY_MCHID says so and exits 2", function()
    local status, out = run("upload_media", "", { WECHATPAY_MCHID = "" })
    assert.equal(2, status, out)
    assert.matches("WECHATPAY_MCHID is not set", out, 1, true)
    -- from a config file, which is the whole configuration, it names the file
    ossl.write(dir .. "/no_mchid.lua", "return { serial = 'AB12' }")
    status, out = run("upload_media", "", { WECHATPAY_CONFIG = dir .. "/no_mchid.lua" })
    assert.equal(2, status, out)
    assert.matches("mchid is missing from the config file " .. dir .. "/no_mchid.lua", out, 1, true)
  end)
end)
