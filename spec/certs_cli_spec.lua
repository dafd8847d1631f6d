-- bin/wechatpay-certs against the mock over real HTTPS, run as a user runs
-- it: the APIv3 key from a file or the environment, never from argv; the
-- exit status says what failed.
local mock = require("wechatpay.mock")
local ossl = require("support.openssl")

local LUA = os.getenv("WECHATPAY_LUA") or (jit and "luajit" or "lua5.4")

describe("bin/wechatpay-certs", function()
  local server, pubkey_server, dir

  setup(function()
    server = assert(mock.start{ rate_limit = false, sign_with = "certificate" })
    pubkey_server = assert(mock.start{ rate_limit = false, public_key_only = true })
    dir = ossl.tmpdir()
  end)
  teardown(function()
    if server then server:stop() end
    if pubkey_server then pubkey_server:stop() end
    if dir then ossl.remove(dir) end
  end)

  -- run(server, output, apiv3 key file contents | false, env) -> exit code, stdout, stderr
  local counter = 0
  local function run(s, output, key_text, env, extra)
    counter = counter + 1
    local args = { "--mchid", s.mchid, "--serial", s.merchant_serial, "--private-key", s.merchant_key_file,
      "--output", output, "--base-url", s.base_url, "--cafile", s.cafile, "--timeout", "5" }
    for _, a in ipairs(extra or {}) do args[#args + 1] = a end
    if key_text then
      local key_file = ("%s/apiv3_%d.txt"):format(dir, counter)
      ossl.write(key_file, key_text)
      args[#args + 1] = "--apiv3-key-file"
      args[#args + 1] = key_file
    end
    -- the developer's own WECHATPAY_* variables play no part
    local parts = { "env -u WECHATPAY_CONFIG -u WECHATPAY_APIV3_KEY_FILE -u WECHATPAY_MCHID -u WECHATPAY_SERIAL "
      .. "-u WECHATPAY_PRIVATE_KEY -u WECHATPAY_BASE_URL -u WECHATPAY_CAFILE", env or "", LUA, "bin/wechatpay-certs" }
    for _, a in ipairs(args) do parts[#parts + 1] = ossl.quote(a) end
    local out, err = dir .. "/stdout", dir .. "/stderr"
    local pipe = io.popen("{ " .. table.concat(parts, " ") .. " >" .. ossl.quote(out) .. " 2>" .. ossl.quote(err)
      .. "; }; echo $?")
    local rc = tonumber(pipe:read("*a"))
    pipe:close()
    return rc, ossl.read(out) or "", ossl.read(err) or ""
  end

  local function fresh_dir(name)
    local d = dir .. "/" .. name
    ossl.run("mkdir -p " .. ossl.quote(d))
    return d
  end

  it("writes wechatpay_<serial>.pem for each certificate and prints serials and validity", function()
    local out_dir = fresh_dir("ok")
    local rc, out, err = run(server, out_dir, server.apiv3_key .. "\n")
    assert.equal(0, rc, err)
    for _, pair in ipairs{ { server.platform_cert_serial, "platform_cert.pem" },
                           { server.platform_cert_old_serial, "platform_cert_old.pem" } } do
      assert.matches(pair[1] .. "  %d%d%d%d%-%d%d%-%d%dT[%d:]+Z %.%. %d%d%d%d", out)
      -- the file is what luaossl made, and openssl reads its serial back
      local path = out_dir .. "/wechatpay_" .. pair[1] .. ".pem"
      assert.equal(ossl.read(server.dir .. "/" .. pair[2]), ossl.read(path))
      assert.equal("serial=" .. pair[1] .. "\n", ossl.run("openssl x509 -noout -serial -in " .. ossl.quote(path)))
    end
    assert.equal("", ossl.run("ls -A " .. ossl.quote(out_dir) .. " | grep -v '^wechatpay_' || true"))
  end)

  it("takes --private-key as a path or as file:///path", function()
    local out = fresh_dir("file_url")
    local args_rc, _, err = run(server, out, server.apiv3_key, nil, { "--private-key", "file://" .. server.merchant_key_file })
    assert.equal(0, args_rc, err)
  end)

  it("takes the APIv3 key from WECHATPAY_APIV3_KEY", function()
    local rc, _, err = run(server, fresh_dir("env"), false, "WECHATPAY_APIV3_KEY=" .. server.apiv3_key)
    assert.equal(0, rc, err)
  end)

  it("exit 8 without an APIv3 key or with a short one, 6 with a wrong one, 7 when the output cannot be written", function()
    local rc, _, err = run(server, fresh_dir("nokey"), false, "env -u WECHATPAY_APIV3_KEY")
    assert.equal(8, rc)
    assert.matches("APIv3 key is needed", err)
    rc, _, err = run(server, fresh_dir("short"), "short")
    assert.equal(8, rc)
    assert.matches("32 characters", err)
    rc, _, err = run(server, fresh_dir("wrong"), ("0"):rep(32))
    assert.equal(6, rc)
    assert.matches("APIv3 key", err)
    assert.is_nil(err:find(("0"):rep(32), 1, true))
    -- a missing directory, or an empty --output (an unset $DIR in cron), before anything is sent
    local before = server:stats().requests
    rc, _, err = run(server, dir .. "/does/not/exist", server.apiv3_key)
    assert.equal(7, rc)
    assert.matches("must be an existing directory", err, 1, true)
    rc, _, err = run(server, "", server.apiv3_key)
    assert.equal(2, rc, err)
    assert.matches("--output DIR is required, and not empty", err, 1, true)
    assert.equal(before, server:stats().requests)
  end)

  it("does not save a delivered certificate that has expired, and says so", function()
    -- in process, the client's download replaced: the mock delivers no expired certificate
    local out = fresh_dir("expired")
    local key_file = ossl.write(dir .. "/apiv3_expired.txt", server.apiv3_key)
    local real_new = require("wechatpay").new
    local now = os.time()
    package.loaded.wechatpay.new = function()
      return { close = function() end, certificates = function()
        return { { serial = "0A1B", pem = "OLD", not_before = now - 400 * 86400, not_after = now - 86400 },
                 { serial = "0C2D", pem = "NEW", not_before = now - 86400, not_after = now + 300 * 86400 } }
      end }
    end
    local errors_written = {}
    local real_stderr, real_stdout = io.stderr, io.stdout
    io.stderr = { write = function(_, ...) errors_written[#errors_written + 1] = table.concat({ ... }) end }
    io.stdout = { write = function() return true end, flush = function() return true end }
    local ok, rc = pcall(require("wechatpay.cli.certs").main, { "certs", "--mchid", server.mchid, "--serial",
      server.merchant_serial, "--private-key", server.merchant_key_file, "--output", out, "--apiv3-key-file", key_file })
    io.stderr, io.stdout = real_stderr, real_stdout
    package.loaded.wechatpay.new = real_new
    assert(ok, rc)
    assert.equal(0, rc)
    assert.matches("0A1B expired on", table.concat(errors_written), 1, true)
    assert.equal("wechatpay_0C2D.pem", ossl.run("ls -A " .. ossl.quote(out)):match("^%s*(.-)%s*$"))
  end)

  it("exit 8 for a configuration that makes no client, 2 for a usage error; nothing is sent", function()
    local before = server:stats().requests
    local rc, _, err = run(server, fresh_dir("nokeyfile"), false, "WECHATPAY_APIV3_KEY_FILE=" .. dir .. "/absent.txt "
      .. "env -u WECHATPAY_APIV3_KEY")
    assert.equal(8, rc, err)
    -- wechatpay.new refuses it: a private key file that is not there
    local args = { "--mchid", server.mchid, "--serial", server.merchant_serial, "--private-key", dir .. "/missing.pem",
      "--output", fresh_dir("nopem"), "--base-url", server.base_url, "--apiv3-key-file",
      ossl.write(dir .. "/k.txt", server.apiv3_key) }
    local parts = { LUA, "bin/wechatpay-certs" }
    for _, a in ipairs(args) do parts[#parts + 1] = ossl.quote(a) end
    local pipe = io.popen(table.concat(parts, " ") .. " 2>&1; echo rc=$?")
    local text = pipe:read("*a")
    pipe:close()
    assert.equal("8", text:match("rc=(%d+)"), text)
    assert.matches("missing.pem", text)
    rc, _, err = run(server, fresh_dir("usage"), server.apiv3_key, "", { "--timeout", "soon" })
    assert.equal(2, rc, err)
    assert.matches("%-%-timeout", err)
    -- under the client's minimum is a usage error too, not a configuration one
    rc, _, err = run(server, fresh_dir("usage2"), server.apiv3_key, "", { "--timeout", "0.0001" })
    assert.equal(2, rc, err)
    assert.matches("--timeout must be a number of seconds from 0.001 to 86400", err, 1, true)
    assert.equal(before, server:stats().requests)
  end)

  it("never prints a key given where its file's path belongs", function()
    local function certs(extra)
      local args = { "--mchid", server.mchid, "--serial", server.merchant_serial, "--output", fresh_dir("leak"),
        "--base-url", server.base_url, "--cafile", server.cafile }
      for _, a in ipairs(extra) do args[#args + 1] = a end
      local parts = { "env -u WECHATPAY_APIV3_KEY", LUA, "bin/wechatpay-certs" }
      for _, a in ipairs(args) do parts[#parts + 1] = ossl.quote(a) end
      local pipe = io.popen(table.concat(parts, " ") .. " 2>&1; echo rc=$?")
      local text = pipe:read("*a")
      pipe:close()
      return text:match("rc=(%d+)"), text
    end
    local before = server:stats().requests
    -- the APIv3 key itself as --apiv3-key-file
    local rc, text = certs{ "--private-key", server.merchant_key_file, "--apiv3-key-file", server.apiv3_key }
    assert.equal("8", rc, text)
    assert.matches("cannot read the APIv3 key file (a name of 32 characters, no path", text, 1, true)
    assert.is_nil(text:find(server.apiv3_key, 1, true))
    -- the private key's text as --private-key
    local pem = ossl.read(server.merchant_key_file)
    rc, text = certs{ "--private-key", pem, "--apiv3-key-file", ossl.write(dir .. "/k2.txt", server.apiv3_key) }
    assert.equal("8", rc, text)
    assert.matches("--private-key takes the key file's path, not the key itself", text, 1, true)
    assert.is_nil(text:find(pem:match("\n(.-)\n"):sub(1, 24), 1, true))
    assert.equal(before, server:stats().requests)
  end)

  it("exit 130 on Ctrl-C while WeChat Pay has not answered", function()
    server:fault("delay", { seconds = 8, path = "^/v3/certificates" })
    local key_file = ossl.write(dir .. "/k130.txt", server.apiv3_key)
    local parts = { "exec", LUA, "bin/wechatpay-certs" }
    for _, a in ipairs{ "--mchid", server.mchid, "--serial", server.merchant_serial, "--private-key",
        server.merchant_key_file, "--output", fresh_dir("int"), "--base-url", server.base_url, "--cafile", server.cafile,
        "--apiv3-key-file", key_file, "--timeout", "20" } do
      parts[#parts + 1] = ossl.quote(a)
    end
    local rc, text = require("support.process").interrupt(table.concat(parts, " "), server, dir .. "/int.log")
    server:clear_faults()
    assert.equal(130, rc, text)
    assert.matches("interrupted", text)
  end)

  it("exit 5 for a merchant with only a WeChat Pay public key (WeChat Pay's 404)", function()
    local rc, _, err = run(pubkey_server, fresh_dir("pubkey"), pubkey_server.apiv3_key)
    assert.equal(5, rc)
    assert.matches("public key", err)
  end)
end)
