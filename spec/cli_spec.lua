-- bin/wechatpay (call, doctor) against the mock WeChat Pay over real HTTPS,
-- run as a child process as a user runs it, configured by WECHATPAY_*
-- variables or a Lua config file.  The mock checks each signature with
-- luaossl; what doctor says about certificates is compared with what the
-- openssl command line reads from them; no run may print a secret.
local mock = require("wechatpay.mock")
local ossl = require("support.openssl")
local cjson = require("cjson")

local LUA = os.getenv("WECHATPAY_LUA") or (jit and "luajit" or "lua5.4")

-- every variable the tools read, unset for each run but those given
local CONFIG_VARIABLES = {
  "WECHATPAY_CONFIG", "WECHATPAY_MCHID", "WECHATPAY_SERIAL", "WECHATPAY_PRIVATE_KEY", "WECHATPAY_PASSPHRASE",
  "WECHATPAY_MERCHANT_CERT", "WECHATPAY_PUBLIC_KEY_ID", "WECHATPAY_PUBLIC_KEY", "WECHATPAY_CERTS",
  "WECHATPAY_CERT_DIR", "WECHATPAY_APIV3_KEY_FILE", "WECHATPAY_APIV3_KEY", "WECHATPAY_BASE_URL", "WECHATPAY_CAFILE",
}

-- the base64 body of a PEM file, joined: no output may hold any line of it
local function pem_lines(path)
  local lines = {}
  for line in ossl.read(path):gmatch("[^\n]+") do
    if not line:find("^%-%-%-%-%-") then lines[#lines + 1] = line end
  end
  return lines
end

describe("bin/wechatpay", function()
  local server, pubkey_server, dir
  local secrets = {}   -- texts no stdout or stderr may contain

  setup(function()
    server = assert(mock.start{ rate_limit = false })
    pubkey_server = assert(mock.start{ rate_limit = false, public_key_only = true })
    dir = ossl.tmpdir()
    for _, s in ipairs{ server, pubkey_server } do
      secrets[#secrets + 1] = s.apiv3_key
      for _, line in ipairs(pem_lines(s.merchant_key_file)) do secrets[#secrets + 1] = line end
    end
    ossl.run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. ossl.quote(dir .. "/other_key.pem"))
    ossl.run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out " .. ossl.quote(dir .. "/weak_key.pem"))
    for _, name in ipairs{ "other_key.pem", "weak_key.pem" } do
      for _, line in ipairs(pem_lines(dir .. "/" .. name)) do secrets[#secrets + 1] = line end
    end
    secrets[#secrets + 1] = "WECHATPAY2-SHA256-RSA2048"   -- an Authorization header
  end)
  teardown(function()
    if server then server:stop() end
    if pubkey_server then pubkey_server:stop() end
    if dir then ossl.remove(dir) end
  end)
  after_each(function()
    server:clear_faults()
  end)

  local counter = 0
  -- The mock's merchant key, encrypted by openssl with passphrase, as dir/name.
  local function encrypted_key(name, passphrase)
    local path = dir .. "/" .. name
    ossl.run("openssl pkcs8 -topk8 -v2 aes256 -in " .. ossl.quote(server.merchant_key_file) .. " -passout pass:"
      .. passphrase .. " -out " .. ossl.quote(path))
    return path
  end

  local function write(name, text)
    counter = counter + 1
    return ossl.write(("%s/%d_%s"):format(dir, counter, name), text)
  end

  -- The variables of a good configuration for server s; `changes` adds or
  -- replaces some (false removes one).
  local function good_env(s, changes)
    local env = {
      WECHATPAY_MCHID = s.mchid, WECHATPAY_SERIAL = s.merchant_serial,
      WECHATPAY_PRIVATE_KEY = s.merchant_key_file, WECHATPAY_MERCHANT_CERT = s.merchant_cert_file,
      WECHATPAY_PUBLIC_KEY_ID = s.platform_key_id, WECHATPAY_PUBLIC_KEY = s.platform_public_key_file,
      WECHATPAY_BASE_URL = s.base_url, WECHATPAY_CAFILE = s.cafile,
      WECHATPAY_APIV3_KEY_FILE = write("apiv3_key", s.apiv3_key .. "\n"),
    }
    for k, v in pairs(changes or {}) do env[k] = v or nil end
    return env
  end

  -- run(argv, env [, stdin]) -> exit status, stdout, stderr; asserts that
  -- neither holds a secret.
  -- stdout_to: a path for standard output instead of a file read back (/dev/full)
  local function run(argv, env, stdin, program, stdout_to)
    local parts = { "env" }
    for _, name in ipairs(CONFIG_VARIABLES) do parts[#parts + 1] = "-u " .. name end
    local names = {}
    for name in pairs(env or {}) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do parts[#parts + 1] = ossl.quote(name .. "=" .. env[name]) end
    parts[#parts + 1] = LUA
    parts[#parts + 1] = program or "bin/wechatpay"
    for _, a in ipairs(argv) do parts[#parts + 1] = ossl.quote(a) end
    local out, err = dir .. "/stdout", dir .. "/stderr"
    local input = stdin and (" <" .. ossl.quote(write("stdin", stdin))) or " </dev/null"
    local pipe = io.popen("{ " .. table.concat(parts, " ") .. input .. " >" .. ossl.quote(stdout_to or out) .. " 2>"
      .. ossl.quote(err) .. "; }; echo $?")
    local rc = tonumber(pipe:read("*a"))
    pipe:close()
    local stdout, stderr = not stdout_to and ossl.read(out) or "", ossl.read(err) or ""
    for _, secret in ipairs(secrets) do
      assert(not stdout:find(secret, 1, true), "a secret in stdout of wechatpay " .. table.concat(argv, " "))
      assert(not stderr:find(secret, 1, true), "a secret in stderr of wechatpay " .. table.concat(argv, " "))
    end
    return rc, stdout, stderr
  end

  -- interrupted(argv, env) -> exit status, output: the command started in the
  -- background, sent SIGINT (a Ctrl-C) once the mock has its request
  local function interrupted(argv, env, s)
    local parts = { "exec env" }
    for _, name in ipairs(CONFIG_VARIABLES) do parts[#parts + 1] = "-u " .. name end
    for name, value in pairs(env or {}) do parts[#parts + 1] = ossl.quote(name .. "=" .. value) end
    parts[#parts + 1] = LUA .. " bin/wechatpay"
    for _, a in ipairs(argv) do parts[#parts + 1] = ossl.quote(a) end
    local rc, text = require("support.process").interrupt(table.concat(parts, " "), s or server,
      dir .. "/interrupted.log")
    for _, secret in ipairs(secrets) do assert(not text:find(secret, 1, true), "a secret in the output") end
    return rc, text
  end

  -- the doctor's line for a topic: "[tag ] topic  message", and the fix under it
  local function line_of(out, topic)
    for line, rest in out:gmatch("(%[[^\n]*%] " .. topic:gsub("%p", "%%%0") .. "[^\n]*)\n?([^\n]*)") do
      local fix = rest:match("^%s+fix: (.*)$")
      return line, fix
    end
    return nil
  end

  local function serial_of(path)
    return ossl.run("openssl x509 -noout -serial -in " .. ossl.quote(path)):match("serial=(%x+)"):upper()
  end

  describe("call", function()
    it("GET: status and Request-ID on stderr, the body as received on stdout, exit 0", function()
      local rc, out, err = run({ "call", "GET", "/v3/mock/echo/{id}", "--var", "id=a b/c", "--query", "limit=10",
        "--query", "offset=0" }, good_env(server))
      assert.equal(0, rc, err)
      local request_id = err:match("^HTTP 200  Request%-ID (%x+)\n$")
      assert.is_truthy(request_id, err)
      assert.equal(40, #request_id)
      -- the mock answered: it verified the signature (luaossl) over what it received
      local echoed = cjson.decode(out)
      assert.equal("GET", echoed.method)
      assert.equal("/v3/mock/echo/a%20b%2Fc?limit=10&offset=0", echoed.uri)
      assert.equal("", echoed.body)
      -- not a terminal: the bytes as sent, not indented
      assert.is_nil(out:find("\n  ", 1, true))
    end)

    it("POST: the --json body byte for byte (from a file), extra headers, a query in PATH", function()
      local body = '{"stock_id":"9856000","amount": 100,"note":"满减 \\u00e9"}'
      local rc, out, err = run({ "call", "post", "/v3/mock/echo/grant?appid=wx1", "--json", "@" .. write("body.json", body),
        "--header", "X-Trace: abc" }, good_env(server))
      assert.equal(0, rc, err)
      assert.matches("^HTTP 200  Request%-ID %x+", err)
      local echoed = cjson.decode(out)
      assert.equal("POST", echoed.method)
      assert.equal("/v3/mock/echo/grant?appid=wx1", echoed.uri)
      assert.equal(body, echoed.body)
      assert.equal("abc", echoed.headers["x-trace"])
      assert.equal("application/json", echoed.headers["content-type"])
    end)

    it("--json @- reads stdin", function()
      local rc, out, err = run({ "call", "PUT", "/v3/mock/echo/x", "--json", "@-" }, good_env(server), '{"a":[1,2]}')
      assert.equal(0, rc, err)
      assert.equal('{"a":[1,2]}', cjson.decode(out).body)
    end)

    it("exit 4 for WeChat Pay's 404, with status, Request-ID, code and the error body", function()
      local rc, out, err = run({ "call", "GET", "/v3/no/such/api" }, good_env(server))
      assert.equal(4, rc)
      assert.matches("HTTP 404  Request%-ID %x+", err)
      assert.matches("NOT_FOUND", err)
      assert.equal("NOT_FOUND", cjson.decode(out).code)
    end)

    it("exit 3 when the host does not answer", function()
      local rc, _, err = run({ "call", "GET", "/v3/certificates", "--timeout", "5" },
        good_env(server, { WECHATPAY_BASE_URL = "https://127.0.0.1:1/" }))
      assert.equal(3, rc)
      assert.matches("network error", err)
    end)

    it("exit 6 when the answer does not verify, the body printed as not trusted", function()
      server:fault("tamper_body", { path = "^/v3/mock/echo/" })
      local rc, out, err = run({ "call", "GET", "/v3/mock/echo/tampered" }, good_env(server))
      assert.equal(6, rc)
      assert.matches("HTTP 200", err)
      assert.matches("NOT verified", err)
      assert.matches("tampered", out)
    end)

    it("never repeats a secret given before the subcommand, a pasted key, or a malformed header", function()
      local before = server:stats().requests
      for _, argv in ipairs{
        { "--apiv3-key=" .. server.apiv3_key, "certs", "--output", dir },
        { "--passphrase=MyPassPhrase123", "doctor" },
        { server.apiv3_key },
        { "call", "GET", "/v3/x", "--header", "Authorization WECHATPAY2-SHA256-RSA2048 mchid=\"1\"" },
      } do
        local rc, out, err = run(argv, good_env(server))   -- run() fails on any secret printed
        assert.equal(2, rc, err)
        assert.is_nil((out .. err):find("MyPassPhrase123", 1, true))
      end
      local _, _, err = run({ "--apiv3-key=" .. server.apiv3_key, "certs" }, good_env(server))
      assert.matches("never taken from the command line", err, 1, true)
      _, _, err = run({ "dcotor" }, good_env(server))
      assert.matches("unknown subcommand dcotor", err, 1, true)   -- a typo is shown
      _, _, err = run({ "call", "GET", "/v3/x", "--header", "X-A: 1", "--header", "x-a: 2" }, good_env(server))
      assert.matches("--header x-a is given twice", err, 1, true)
      assert.equal(before, server:stats().requests)
    end)

    it("exit 7 when the answer cannot be written (a full disk), not 0", function()
      local rc, _, err = run({ "call", "GET", "/v3/mock/echo/full" }, good_env(server), nil, nil, "/dev/full")
      assert.equal(7, rc, err)
      assert.matches("cannot write the output", err, 1, true)
      -- larger than stdio's buffer: the write itself fails, and the final flush finds nothing left
      local body = write("big.json", '{"pad":"' .. ("x"):rep(20000) .. '"}')
      rc, _, err = run({ "call", "POST", "/v3/mock/echo/big", "--json", "@" .. body }, good_env(server), nil, nil,
        "/dev/full")
      assert.equal(7, rc, err)
      rc, _, err = run({ "doctor" }, good_env(server), nil, nil, "/dev/full")
      assert.equal(7, rc, err)
    end)

    it("exit 2 for usage errors, 8 for a configuration that makes no client; nothing is sent", function()
      local before = server:stats().requests
      local cases = {
        { { "call", "FETCH", "/v3/x" }, "not an HTTP method" },
        { { "call", "GET" }, "METHOD and PATH" },
        { { "call", "GET", "https://api.mch.weixin.qq.com/v3/x" }, "path only" },
        { { "call", "POST", "/v3/x", "--json", "{not json" }, "not JSON" },
        { { "call", "GET", "/v3/x/{id}", "--var", "other=1" }, "PATH has no {other}" },
        { { "call", "GET", "/v3/x", "--header", "Authorization: x" }, "Authorization" },
        { { "call", "GET", "/v3/x", "--bogus" }, "unknown option %-%-bogus" },
        { { "frobnicate" }, "unknown subcommand" },
      }
      for _, case in ipairs(cases) do
        local rc, _, err = run(case[1], good_env(server))
        assert.equal(2, rc, table.concat(case[1], " ") .. ": " .. err)
        assert.matches(case[2], err)
      end
      local rc, _, err = run({ "call", "GET", "/v3/certificates" }, good_env(server, { WECHATPAY_MCHID = false }))
      assert.equal(8, rc)
      assert.matches("mchid is required", err)
      rc, _, err = run({ "call", "GET", "/v3/certificates" }, good_env(server,
        { WECHATPAY_PRIVATE_KEY = dir .. "/missing.pem" }))
      assert.equal(8, rc)
      assert.matches("missing.pem", err)
      -- the APIv3 key itself in WECHATPAY_APIV3_KEY_FILE: named by its length, never printed (run checks)
      rc, _, err = run({ "call", "GET", "/v3/certificates" }, good_env(server,
        { WECHATPAY_APIV3_KEY_FILE = server.apiv3_key }))
      assert.equal(8, rc)
      assert.matches("a name of 32 characters, no path", err, 1, true)
      assert.is_nil(err:find(server.apiv3_key, 1, true))
      assert.equal(before, server:stats().requests)
    end)

    it("takes WECHATPAY_PRIVATE_KEY as a path, PEM text or a private.pkcs8:// form", function()
      local der = ossl.run("openssl pkcs8 -topk8 -nocrypt -outform DER -in " .. ossl.quote(server.merchant_key_file)
        .. " | openssl base64 -A")
      for _, value in ipairs{ server.merchant_key_file, ossl.read(server.merchant_key_file), "private.pkcs8://" .. der } do
        local rc, out, err = run({ "call", "GET", "/v3/certificates" }, good_env(server, { WECHATPAY_PRIVATE_KEY = value }))
        assert.equal(0, rc, err)
        assert.matches("encrypt_certificate", out)
      end
    end)

    it("exit 130 on Ctrl-C while WeChat Pay has not answered, not a usage error", function()
      server:fault("delay", { seconds = 8, path = "^/v3/mock/echo/" })
      local rc, text = interrupted({ "call", "GET", "/v3/mock/echo/slow", "--timeout", "20" }, good_env(server))
      assert.equal(130, rc, text)
      assert.matches("interrupted", text)
      assert.is_nil(text:find("usage", 1, true))
    end)

    it("reads a Lua config file, whose base_url may be a list of hosts", function()
      local file = write("config.lua", ([[
        return {
          mchid = %q, serial = %q, private_key = %q,
          certs = { [%q] = %q },
          base_url = { %q, "https://127.0.0.1:1/" }, cafile = %q,
          merchant_cert = %q,
        }]]):format(server.mchid, server.merchant_serial, "file://" .. server.merchant_key_file,
        server.platform_key_id, "file://" .. server.platform_public_key_file, server.base_url, server.cafile,
        server.merchant_cert_file))
      local rc, out, err = run({ "call", "GET", "/v3/mock/echo/file", "--config", file }, {})
      assert.equal(0, rc, err)
      assert.equal("/v3/mock/echo/file", cjson.decode(out).uri)
      rc, out, err = run({ "call", "GET", "/v3/mock/echo/file" }, { WECHATPAY_CONFIG = file })
      assert.equal(0, rc, err)
      -- a dead first host: the call fails over to the next, as the client does
      rc, out, err = run({ "call", "GET", "/v3/mock/echo/failover" }, good_env(server,
        { WECHATPAY_BASE_URL = "https://127.0.0.1:1/," .. server.base_url }))
      assert.equal(0, rc, err)
      assert.equal("/v3/mock/echo/failover", cjson.decode(out).uri)
    end)
  end)

  describe("secrets on the command line", function()
    it("are refused, saying where they go, without repeating them", function()
      local key = "K3yTh4tMustN0tBePr1nted00000000x"
      secrets[#secrets + 1] = key
      for _, argv in ipairs{
        { "call", "GET", "/v3/x", "--apiv3-key", key },
        { "call", "GET", "/v3/x", "--apiv3-key=" .. key },
        { "doctor", "--apiv3_key=" .. key },
        { "certs", "--output", dir, "--apiv3-key=" .. key },
        { "grant", "--apiv3-key=" .. key },
      } do
        local rc, _, err = run(argv, good_env(server))
        assert.equal(2, rc, table.concat(argv, " "))
        assert.matches("APIv3 key is never taken from the command line", err)
        assert.matches("WECHATPAY_APIV3_KEY_FILE", err)
      end
      local rc, _, err = run({ "doctor", "--passphrase", key }, good_env(server))
      assert.equal(2, rc)
      assert.matches("passphrase is never taken from the command line", err)
      assert.matches("WECHATPAY_PASSPHRASE", err)
      -- the APIv2 key too, in every spelling
      local v2key = "V2k3yTh4tMustN0tBePr1nted0000zq"
      secrets[#secrets + 1] = v2key
      for _, argv in ipairs{
        { "call", "GET", "/v3/x", "--apiv2_key=" .. v2key },
        { "call", "GET", "/v3/x", "--apiv2-key", v2key },
        { "doctor", "--APIV2KEY=" .. v2key },
        { "certs", "--output", dir, "--apiv2_key=" .. v2key },
        { "grant", "--apiv2-key=" .. v2key },
      } do
        rc, _, err = run(argv, good_env(server))   -- run asserts the key is in no output
        assert.equal(2, rc, table.concat(argv, " "))
        assert.matches("APIv2 key is never taken from the command line", err)
        assert.matches("apiv2_key", err)
      end
      -- an unknown option's value after "=" is never printed, whatever its name
      for _, argv in ipairs{ { "call", "GET", "/v3/x", "--my_secret=" .. v2key }, { "doctor", "--x.y=" .. v2key },
          { "certs", "--output", dir, "--weird_opt=" .. v2key } } do
        rc, _, err = run(argv, good_env(server))
        assert.equal(2, rc, table.concat(argv, " "))
        assert.matches("unknown option", err)
      end
      -- the old executables are the same commands
      rc, _, err = run({ "--apiv3-key=" .. key }, good_env(server), nil, "bin/wechatpay-certs")
      assert.equal(2, rc)
      assert.matches("WECHATPAY_APIV3_KEY_FILE", err)
    end)
  end)

  describe("doctor", function()
    it("is green on a good configuration, and says the APIv3 key's length, never the key", function()
      local rc, out, err = run({ "doctor" }, good_env(server))
      assert.equal(0, rc, out .. err)
      assert.is_nil(out:find("FAIL", 1, true), out)
      assert.is_nil(out:find("\27[", 1, true))   -- no colour: stdout is not a terminal
      for _, topic in ipairs{ "mchid", "private key", "merchant cert", "serial", "key pair", "APIv3 key",
                              "platform key", "CA bundle", "host", "clock", "signature", "answer", "APIv3 decrypt" } do
        assert.matches("^%[ok  %]", line_of(out, topic) or "", 1, topic .. " in\n" .. out)
      end
      assert.matches("32 bytes", line_of(out, "APIv3 key"))
      assert.matches("RSA%-2048", line_of(out, "private key"))
      assert.matches(serial_of(server.merchant_cert_file), line_of(out, "merchant cert"), 1, true)
      assert.matches("0 failed", out)
    end)

    it("--mock checks a configuration of the mock it starts (as scripts/demo.sh runs it)", function()
      local rc, out = run({ "doctor", "--mock" }, {})
      assert.equal(0, rc, out)
      assert.matches("^%[ok  %] configuration +the built%-in mock", line_of(out, "configuration"))
      assert.matches("^%[ok  %]", line_of(out, "APIv3 decrypt"))
      assert.equal(2, (run({ "doctor", "--mock", "--config", "x.lua" }, {})))
    end)

    it("colours its lines on a terminal", function()
      local found = os.execute("command -v script >/dev/null 2>&1")
      if found ~= true and found ~= 0 then pending("no script(1) to make a terminal") return end
      local file = write("tty.sh", "") -- keep the environment in a file: script(1) runs a shell command
      local env = good_env(server)
      local lines = {}
      for _, name in ipairs(CONFIG_VARIABLES) do lines[#lines + 1] = "unset " .. name end
      for k, v in pairs(env) do lines[#lines + 1] = "export " .. k .. "=" .. ossl.quote(v) end
      lines[#lines + 1] = "exec " .. LUA .. " bin/wechatpay doctor"
      ossl.write(file, table.concat(lines, "\n") .. "\n")
      local out = ossl.run("script -qec " .. ossl.quote("sh " .. file) .. " /dev/null")
      assert.matches("\27%[32mok", out)
    end)

    it("counts WeChat Pay's 404 for a public-key-only merchant as an accepted signature", function()
      local rc, out = run({ "doctor" }, good_env(pubkey_server))
      assert.equal(0, rc, out)
      assert.matches("无可用的平台证书", line_of(out, "signature"), 1, true)
    end)

    it("fails a public-key-only merchant configured without its public key: no answer would verify", function()
      local rc, out = run({ "doctor" }, good_env(pubkey_server,
        { WECHATPAY_PUBLIC_KEY_ID = false, WECHATPAY_PUBLIC_KEY = false }))
      assert.equal(1, rc, out)
      local line, fix = line_of(out, "answer")
      assert.matches("^%[FAIL%] answer +this merchant has only a WeChat Pay public key, and the configuration holds none", line)
      assert.matches("WECHATPAY_PUBLIC_KEY_ID", fix, 1, true)
      -- as wechatpay call finds
      rc = run({ "call", "GET", "/v3/mock/echo/x" }, good_env(pubkey_server,
        { WECHATPAY_PUBLIC_KEY_ID = false, WECHATPAY_PUBLIC_KEY = false }))
      assert.equal(6, rc)
    end)

    it("names a wrong serial, with the certificate's own as the fix (openssl reads the same)", function()
      local rc, out = run({ "doctor" }, good_env(server, { WECHATPAY_SERIAL = "0123456789ABCDEF" }))
      assert.equal(1, rc)
      local line, fix = line_of(out, "serial")
      assert.matches("^%[FAIL%]", line)
      local real = serial_of(server.merchant_cert_file)
      assert.matches("0123456789ABCDEF is configured, but the merchant certificate's serial is " .. real, line, 1, true)
      assert.equal(('set serial = "%s" (WECHATPAY_SERIAL), or configure the certificate that goes with the key'):format(real), fix)
      -- WeChat Pay (the mock) refuses it too
      assert.matches("^%[FAIL%] signature +WeChat Pay refused the signature: 401", line_of(out, "signature"))
    end)

    it("without a serial, reads it from the merchant certificate", function()
      local rc, out = run({ "doctor" }, good_env(server, { WECHATPAY_SERIAL = false }))
      assert.equal(0, rc, out)
      assert.matches(serial_of(server.merchant_cert_file) .. " (read from the merchant certificate)", line_of(out, "serial"), 1, true)
    end)

    it("takes a bundle of the key then its certificate (as a .p12 converts) for the key and for the certificate", function()
      local bundle = write("bundle.pem", ossl.read(server.merchant_key_file) .. ossl.read(server.merchant_cert_file))
      local rc, out = run({ "doctor" }, good_env(server,
        { WECHATPAY_SERIAL = false, WECHATPAY_PRIVATE_KEY = bundle, WECHATPAY_MERCHANT_CERT = bundle }))
      assert.equal(0, rc, out)
      assert.matches(serial_of(server.merchant_cert_file) .. " (read from the merchant certificate)", line_of(out, "serial"), 1, true)
      assert.matches("^%[ok  %] merchant cert  serial", line_of(out, "merchant cert"))
    end)

    it("catches a private key that is not the merchant certificate's", function()
      local rc, out = run({ "doctor" }, good_env(server, { WECHATPAY_PRIVATE_KEY = dir .. "/other_key.pem" }))
      assert.equal(1, rc)
      local line, fix = line_of(out, "key pair")
      assert.matches("^%[FAIL%] key pair +the private key does not match the merchant certificate", line)
      assert.matches("same API certificate", fix)
    end)

    it("catches a weak (1024-bit) private key", function()
      local rc, out = run({ "doctor" }, good_env(server, { WECHATPAY_PRIVATE_KEY = dir .. "/weak_key.pem" }))
      assert.equal(1, rc)
      local line, fix = line_of(out, "private key")
      assert.matches("^%[FAIL%] private key +RSA%-1024 .*weak key; WeChat Pay requires 2048 bits", line)
      assert.matches("RSA%-2048", fix)
      assert.matches("^%[skip%]", line_of(out, "host"))
    end)

    it("catches an APIv3 key of 31 bytes, and says only its length", function()
      local key31 = server.apiv3_key:sub(1, 31)
      local rc, out = run({ "doctor" }, good_env(server, { WECHATPAY_APIV3_KEY_FILE = write("key31", key31 .. "\n") }))
      assert.equal(1, rc)
      local line, fix = line_of(out, "APIv3 key")
      assert.matches("^%[FAIL%] APIv3 key +31 bytes .*32 characters", line)
      assert.matches("API安全", fix, 1, true)
      -- from the variable too
      rc, out = run({ "doctor" }, good_env(server, { WECHATPAY_APIV3_KEY_FILE = false, WECHATPAY_APIV3_KEY = key31 }))
      assert.equal(1, rc)
      assert.matches("31 bytes %(from WECHATPAY_APIV3_KEY%)", line_of(out, "APIv3 key"))
    end)

    it("catches a wrong APIv3 key: it does not open the downloaded certificates", function()
      local rc, out = run({ "doctor" }, good_env(server, { WECHATPAY_APIV3_KEY_FILE = write("wrong", ("7"):rep(32)) }))
      assert.equal(1, rc)
      assert.matches("^%[FAIL%] APIv3 decrypt", line_of(out, "APIv3 decrypt"))
    end)

    it("catches an expired platform certificate and warns of one expiring within 30 days", function()
      -- made with luaossl, dated in the past: openssl req cannot backdate
      local pkey, x509, bignum = require("openssl.pkey"), require("openssl.x509"), require("openssl.bignum")
      local x509_name = require("openssl.x509.name")
      local function certificate(name, first, last)
        local k = pkey.new{ type = "RSA", bits = 2048 }
        local c = x509.new()
        c:setVersion(3)
        c:setSerial(bignum.new(name == "expired" and 0x5EED01 or 0x5EED02))
        local subject = x509_name.new()
        subject:add("CN", "Tenpay " .. name)
        c:setSubject(subject)
        c:setIssuer(subject)
        c:setLifetime(os.time() + first * 86400, os.time() + last * 86400)
        c:setPublicKey(k)
        c:sign(k, "sha256")
        return write(name .. ".pem", c:toPEM())
      end
      local expired, soon = certificate("expired", -400, -2), certificate("soon", -10, 10.5)
      local expired_serial, soon_serial = serial_of(expired), serial_of(soon)
      local rc, out = run({ "doctor" }, good_env(server, {
        WECHATPAY_CERTS = expired_serial .. "=" .. expired .. "," .. soon_serial .. "=" .. soon }))
      assert.equal(1, rc)
      local end_date = os.date("!%Y-%m-%d", ossl.cert_date(expired, "-enddate"))
      local line, fix = out:match("(%[FAIL%] platform key +certs%[\"" .. expired_serial .. "\"%][^\n]*)\n%s+fix: ([^\n]*)")
      assert.matches("expired on " .. end_date, line, 1, true)
      assert.matches("wechatpay certs", fix)
      -- an APIv3 key is configured: the fix does not ask for one
      assert.matches("with the APIv3 key: if it cannot, check that key", fix, 1, true)
      assert.is_nil(fix:find("set apiv3_key", 1, true))
      assert.matches("%[warn%] platform key +certs%[\"" .. soon_serial .. "\"%] platform certificate expires on "
        .. os.date("!%Y-%m-%d", ossl.cert_date(soon, "-enddate")):gsub("%-", "%%-") .. ", in 10 days", out)
      -- the public key still verifies the answers
      assert.matches("^%[ok  %]", line_of(out, "answer"))
      -- in a cert_dir, beside the certificate in service, a rotated-out one is a warning to delete it
      local cert_dir = dir .. "/retired_dir"
      ossl.run("mkdir -p " .. ossl.quote(cert_dir) .. " && cp " .. ossl.quote(expired) .. " "
        .. ossl.quote(cert_dir .. "/wechatpay_" .. expired_serial .. ".pem"))
      rc, out = run({ "doctor" }, good_env(server, { WECHATPAY_CERT_DIR = cert_dir }))
      assert.equal(0, rc, out)
      line, fix = out:match("(%[warn%] platform key +cert_dir " .. expired_serial .. "[^\n]*)\n%s+fix: ([^\n]*)")
      assert.matches("expired on " .. end_date, line, 1, true)
      assert.matches("delete its file wechatpay_" .. expired_serial .. ".pem", fix, 1, true)
      -- alone in a cert_dir (the run above saved the current ones beside it) it verifies nothing
      local alone_dir = dir .. "/alone_dir"
      ossl.run("mkdir -p " .. ossl.quote(alone_dir) .. " && cp " .. ossl.quote(expired) .. " "
        .. ossl.quote(alone_dir .. "/wechatpay_" .. expired_serial .. ".pem"))
      rc, out = run({ "doctor", "--timeout", "5" }, good_env(server, { WECHATPAY_CERT_DIR = alone_dir,
        WECHATPAY_PUBLIC_KEY_ID = false, WECHATPAY_PUBLIC_KEY = false, WECHATPAY_APIV3_KEY_FILE = false }))
      assert.equal(1, rc, out)
      assert.matches("cert_dir " .. alone_dir .. " holds no certificate in service", out, 1, true)
    end)

    it("catches the merchant's own certificate among the platform keys", function()
      local rc, out = run({ "doctor" }, good_env(server, {
        WECHATPAY_CERTS = server.merchant_serial .. "=" .. server.merchant_cert_file }))
      assert.equal(1, rc)
      local line, fix = out:match("(%[FAIL%] platform key[^\n]*merchant's own[^\n]*)\n%s+fix: ([^\n]*)")
      assert.matches(serial_of(server.merchant_cert_file), line, 1, true)
      assert.matches("remove it from certs", fix)
    end)

    it("catches a CA bundle that cannot be read or holds no certificate", function()
      local rc, out = run({ "doctor" }, good_env(server, { WECHATPAY_CAFILE = dir .. "/no_such_ca.pem" }))
      assert.equal(1, rc)
      local line, fix = line_of(out, "CA bundle")
      assert.matches("^%[FAIL%] CA bundle +cafile .*no_such_ca.pem cannot be read", line)
      assert.matches("WECHATPAY_CAFILE", fix)
      rc, out = run({ "doctor" }, good_env(server, { WECHATPAY_CAFILE = write("junk.pem", "not a bundle\n") }))
      assert.equal(1, rc)
      assert.matches("holds no PEM certificate", line_of(out, "CA bundle"))
    end)

    it("names a CA bundle that loads but does not vouch for the host", function()
      -- the other mock's CA: a good bundle, but not the one that signed this server's certificate
      local rc, out = run({ "doctor" }, good_env(server, { WECHATPAY_CAFILE = pubkey_server.cafile }))
      assert.equal(1, rc)
      assert.matches("^%[ok  %] CA bundle", line_of(out, "CA bundle"))
      local line, fix = line_of(out, "host")
      assert.matches("^%[FAIL%] host .* no answer: SSL certificate problem", line)
      assert.matches("check cafile", fix)
    end)

    it("warns of a clock a minute off and fails one beyond WeChat Pay's 5 minutes", function()
      server:fault("date", { offset = 60, count = 10, path = "^/v3/certificates" })
      local rc, out = run({ "doctor" }, good_env(server))
      assert.equal(0, rc, out)
      local line, fix = line_of(out, "clock")
      assert.matches("^%[warn%] clock +the local clock is 6%d s behind WeChat Pay's", line)
      assert.matches("chrony", fix)
      server:clear_faults()
      server:fault("date", { offset = -900, count = 10, path = "^/v3/certificates" })
      rc, out = run({ "doctor" }, good_env(server))
      assert.equal(1, rc)
      assert.matches("^%[FAIL%] clock +the local clock is 9%d%d s ahead of WeChat Pay's: WeChat Pay refuses", line_of(out, "clock"))
      -- WeChat Pay refuses the timestamp as a signature: the fix is the clock, not the keys
      local line, fix = line_of(out, "signature")
      assert.matches("^%[FAIL%] signature +WeChat Pay refused the signature: 401", line)
      assert.matches("the local clock is off", fix, 1, true)
    end)

    it("fails an unreachable domain among base_url's hosts", function()
      local rc, out = run({ "doctor", "--timeout", "5" },
        good_env(server, { WECHATPAY_BASE_URL = server.base_url .. ",https://127.0.0.1:1/" }))
      assert.equal(1, rc)
      assert.matches("%[ok  %] host +" .. server.base_url:gsub("%p", "%%%0") .. " answers", out)
      local line, fix = out:match("(%[FAIL%] host +https://127%.0%.0%.1:1/: no answer[^\n]*)\n%s+fix: ([^\n]*)")
      assert.is_truthy(line, out)
      assert.matches("firewall", fix)
      assert.matches("^%[ok  %]", line_of(out, "signature"))
      -- no host at all: the checks that need one are skipped, saying why
      rc, out = run({ "doctor", "--timeout", "5" }, good_env(server, { WECHATPAY_BASE_URL = "https://127.0.0.1:1/" }))
      assert.equal(1, rc)
      assert.matches("^%[skip%] clock +no host answered", line_of(out, "clock"))
    end)

    it("reports a signature the mock refuses when no certificate lets it be checked locally", function()
      local rc, out = run({ "doctor" }, good_env(server, {
        WECHATPAY_PRIVATE_KEY = dir .. "/other_key.pem", WECHATPAY_MERCHANT_CERT = false }))
      assert.equal(1, rc)
      assert.matches("^%[skip%] merchant cert +not configured", line_of(out, "merchant cert"))
      assert.matches("^%[skip%] key pair", line_of(out, "key pair"))
      local line, fix = line_of(out, "signature")
      assert.matches("^%[FAIL%] signature +WeChat Pay refused the signature: 401 SIGN_ERROR: signature does not verify", line)
      assert.matches("merchant_cert", fix)
    end)

    it("reads an encrypted private key with WECHATPAY_PASSPHRASE, and says where the passphrase goes without it", function()
      local passphrase = "pass-phrase-not-for-output"
      secrets[#secrets + 1] = passphrase
      local encrypted = encrypted_key("encrypted_key.pem", passphrase)
      local rc, out = run({ "doctor" }, good_env(server, { WECHATPAY_PRIVATE_KEY = encrypted, WECHATPAY_PASSPHRASE = passphrase }))
      assert.equal(0, rc, out)
      assert.matches("^%[ok  %] private key +RSA%-2048", line_of(out, "private key"))
      rc, out = run({ "doctor" }, good_env(server, { WECHATPAY_PRIVATE_KEY = encrypted }))
      assert.equal(1, rc)
      local line, fix = line_of(out, "private key")
      assert.matches("^%[FAIL%] private key +.*encrypted_key.pem cannot be loaded", line)
      assert.matches("WECHATPAY_PASSPHRASE", fix)
    end)

    it("with a config file reads no WECHATPAY_* variable: neither the passphrase nor the APIv3 key", function()
      local passphrase = "pass-phrase-from-the-env-only"
      secrets[#secrets + 1] = passphrase
      local encrypted = encrypted_key("encrypted_key_env.pem", passphrase)
      local file = write("no_env.lua", ([[
        return { mchid = %q, serial = %q, private_key = %q, certs = { [%q] = %q }, base_url = %q, cafile = %q }
      ]]):format(server.mchid, server.merchant_serial, "file://" .. encrypted, server.platform_key_id,
        "file://" .. server.platform_public_key_file, server.base_url, server.cafile))
      local env = { WECHATPAY_PASSPHRASE = passphrase, WECHATPAY_APIV3_KEY = server.apiv3_key,
        WECHATPAY_APIV3_KEY_FILE = write("apiv3_env", server.apiv3_key) }
      local rc, out = run({ "doctor", "--config", file }, env)
      assert.equal(1, rc, out)
      assert.matches("^%[FAIL%] private key +.*cannot be loaded", line_of(out, "private key"))
      assert.matches("^%[skip%] APIv3 key +not configured", line_of(out, "APIv3 key"))
      -- call too: the key does not load without the passphrase the file leaves out
      local err
      rc, _, err = run({ "call", "GET", "/v3/mock/echo/x", "--config", file }, env)
      assert.equal(8, rc, err)
      -- the same through WECHATPAY_CONFIG, and the variables still work without a file
      rc, out = run({ "doctor" }, { WECHATPAY_CONFIG = file, WECHATPAY_PASSPHRASE = passphrase })
      assert.equal(1, rc, out)
      assert.matches("^%[FAIL%] private key", line_of(out, "private key"))
      rc, out = run({ "doctor" }, good_env(server, { WECHATPAY_PRIVATE_KEY = encrypted, WECHATPAY_PASSPHRASE = passphrase }))
      assert.equal(0, rc, out)
    end)

    it("checks apiv2_key on its own line, never failing a host for it", function()
      local function config_with(apiv2_key)
        return write("v2.lua", ([[
          return { mchid = %q, serial = %q, private_key = %q, merchant_cert = %q, certs = { [%q] = %q },
            base_url = %q, cafile = %q, apiv3_key_file = %q, apiv2_key = %q }
        ]]):format(server.mchid, server.merchant_serial, "file://" .. server.merchant_key_file,
          "file://" .. server.merchant_cert_file, server.platform_key_id, "file://" .. server.platform_public_key_file,
          server.base_url, server.cafile, write("k3", server.apiv3_key), apiv2_key))
      end
      local short = "Sh0rtV2KeyNeverPr1ntedXXXXXXXX"   -- 30
      secrets[#secrets + 1] = short
      local rc, out = run({ "doctor", "--config", config_with(short) }, {})
      assert.equal(1, rc, out)
      local line, fix = line_of(out, "APIv2 key")
      assert.matches("^%[FAIL%] APIv2 key +30 bytes", line)
      assert.matches("API安全", fix)
      assert.matches("^%[ok  %] host", line_of(out, "host"))
      assert.matches("^%[ok  %] key pair", line_of(out, "key pair"))
      rc, out = run({ "doctor", "--config", config_with(server.apiv3_key) }, {})
      assert.equal(1, rc, out)
      assert.matches("is the APIv3 key", line_of(out, "APIv2 key"))
      local good = "G00dV2KeyNeverPr1ntedXXXXXXXXXXX"
      secrets[#secrets + 1] = good
      rc, out = run({ "doctor", "--config", config_with(good) }, {})
      assert.equal(0, rc, out)
      assert.matches("^%[ok  %] APIv2 key +32 characters", line_of(out, "APIv2 key"))
      -- not configured: skipped, saying why
      rc, out = run({ "doctor" }, good_env(server))
      assert.equal(0, rc, out)
      assert.matches("^%[skip%] APIv2 key", line_of(out, "APIv2 key"))
    end)

    it("checks the certificates of a cert_dir, and fails one that is not a directory", function()
      local cert_dir = dir .. "/cert_dir"
      ossl.run("mkdir -p " .. ossl.quote(cert_dir))
      local rc, _, err = run({ "certs", "--output", cert_dir }, good_env(server))
      assert.equal(0, rc, err)
      local out
      rc, out = run({ "doctor" }, good_env(server, { WECHATPAY_CERT_DIR = cert_dir }))
      assert.equal(0, rc, out)
      local end_date = os.date("!%Y-%m-%d", ossl.cert_date(server.platform_cert_file, "-enddate"))
      assert.matches("[ok  ] platform key   cert_dir " .. server.platform_cert_serial .. " platform certificate, valid until "
        .. end_date, out, 1, true)
      rc, out = run({ "doctor" }, good_env(server, { WECHATPAY_CERT_DIR = dir .. "/no_such_dir" }))
      assert.equal(1, rc)
      assert.matches("cert_dir .*no_such_dir is not a readable directory", out)
    end)

    it("fails an answer whose signature does not verify", function()
      server:fault("tamper_body", { path = "^/v3/certificates", count = 1 })
      local rc, out = run({ "doctor" }, good_env(server))
      assert.equal(1, rc)
      assert.matches("^%[ok  %] signature", line_of(out, "signature"))
      local line, fix = line_of(out, "answer")
      assert.matches("^%[FAIL%] answer +the answer does not verify", line)
      assert.matches("WeChat Pay's keys", fix)
    end)

    it("skips what is not configured, saying why", function()
      local rc, out = run({ "doctor" }, good_env(server, { WECHATPAY_APIV3_KEY_FILE = false }))
      assert.equal(0, rc, out)
      -- the download is signed by a platform certificate, which only the APIv3 key would fetch
      local answer, answer_fix = line_of(out, "answer")
      assert.matches("^%[warn%] answer +the certificate download is signed by " .. server.platform_cert_serial, answer)
      assert.matches("or set apiv3_key, and the client downloads them", answer_fix, 1, true)
      assert.matches("^%[skip%] APIv3 key +not configured", line_of(out, "APIv3 key"))
      assert.matches("^%[skip%] APIv3 decrypt", line_of(out, "APIv3 decrypt"))
      rc, out = run({ "doctor" }, {})
      assert.equal(1, rc)
      assert.matches("^%[FAIL%] mchid +not configured", line_of(out, "mchid"))
      assert.matches("^%[skip%] host +mchid, serial and a usable private key are needed", line_of(out, "host"))
    end)
  end)

  describe("the old executables", function()
    it("wechatpay certs and bin/wechatpay-certs both download into a directory", function()
      for _, program in ipairs{ "bin/wechatpay", "bin/wechatpay-certs" } do
        local out_dir = dir .. "/certs_" .. program:gsub("%W", "_")
        ossl.run("mkdir -p " .. ossl.quote(out_dir))
        local argv = { "--config", write("certs_config.lua", ([[return { mchid = %q, serial = %q,
          private_key = %q, base_url = %q, cafile = %q, apiv3_key_file = %q }]]):format(server.mchid,
          server.merchant_serial, "file://" .. server.merchant_key_file, server.base_url, server.cafile,
          write("k", server.apiv3_key))), "--output", out_dir }
        if program == "bin/wechatpay" then table.insert(argv, 1, "certs") end
        local rc, out, err = run(argv, {}, nil, program)
        assert.equal(0, rc, err)
        assert.matches(server.platform_cert_serial, out, 1, true)
        assert.is_true(ossl.exists(out_dir .. "/wechatpay_" .. server.platform_cert_serial .. ".pem"))
      end
    end)

    it("wechatpay grant is bin/wechatpay-grant", function()
      local rc, out = run({ "grant", "--help" }, {})
      assert.equal(0, rc)
      assert.matches("usage: wechatpay%-grant", out)
      local rc2, out2 = run({ "--help" }, {}, nil, "bin/wechatpay-grant")
      assert.equal(0, rc2)
      assert.equal(out, out2)
    end)
  end)
end)
