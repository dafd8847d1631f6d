-- Platform certificates against the mock over real HTTPS: the download is
-- decrypted and verified, compared with the PEM files luaossl made; a
-- refresh only adds; a rotation mid-traffic costs exactly one download and
-- no failed call; a PUB_KEY_ID-only merchant is asked once, then never.
local wechatpay = require("wechatpay")
local mock = require("wechatpay.mock")
local ossl = require("support.openssl")

describe("platform certificates", function()
  local server

  setup(function()
    server = assert(mock.start{ rate_limit = false, sign_with = "certificate" })
  end)
  teardown(function() if server then server:stop() end end)

  local function ids(client)
    return table.concat(client:platform_key_ids(), " ")
  end

  it("certificates() delivers the two overlapping certificates, byte for byte what luaossl made", function()
    local client = server:client{ timeout = 3, retry = false }
    local list = assert(client:certificates())
    assert.equal(2, #list)
    local by_serial = {}
    for _, c in ipairs(list) do by_serial[c.serial] = c end
    assert.equal(ossl.read(server.dir .. "/platform_cert_old.pem"), by_serial[server.platform_cert_old_serial].pem)
    assert.equal(ossl.read(server.dir .. "/platform_cert.pem"), by_serial[server.platform_cert_serial].pem)
    for _, c in ipairs(list) do
      assert.is_true(c.not_after > os.time())
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT", c.effective_time)
    end
    -- nothing added by a download alone
    assert.equal(server.platform_key_id, ids(client))
    assert.equal(2, client:refresh_certificates())
    assert.equal(0, client:refresh_certificates())
    local want = { server.platform_cert_old_serial, server.platform_cert_serial, server.platform_key_id }
    table.sort(want)
    assert.equal(table.concat(want, " "), ids(client))
  end)

  it("encryption moves to the certificate that expires last once a refresh brings it", function()
    -- a merchant on certificates whose configured one is the older
    local client = server:client{ timeout = 3, retry = false,
      certs = { [server.platform_cert_old_serial] = "file://" .. server.dir .. "/platform_cert_old.pem" } }
    assert.equal(server.platform_cert_old_serial, client.platform_key_id)
    assert(client:refresh_certificates())
    assert.equal(server.platform_cert_serial, client.platform_key_id)
    local ciphertext, id = assert(client:encrypt("张三"))
    assert.equal(server.platform_cert_serial, id)
    -- the private key of that certificate opens it (openssl, not us)
    ossl.write(server.dir .. "/encrypted.b64", ciphertext)
    local plain = ossl.run("openssl base64 -d -A -in " .. ossl.quote(server.dir .. "/encrypted.b64")
      .. " | openssl pkeyutl -decrypt -inkey " .. ossl.quote(server.dir .. "/platform_cert_key.pem")
      .. " -pkeyopt rsa_padding_mode:oaep")
    assert.equal("张三", plain)
  end)

  it("certs = {} with an APIv3 key: the first encrypt downloads the certificates it needs", function()
    local client = server:client{ timeout = 3, retry = false, certs = {} }
    local downloads = server:stats().certificate_downloads
    local ciphertext, id = assert(client:encrypt("张三"))
    assert.equal(server.platform_cert_serial, id)
    assert.equal(downloads + 1, server:stats().certificate_downloads)
    assert.is_string(ciphertext)
  end)

  it("a failed refresh drops no key; a wrong APIv3 key is a decrypt error", function()
    local client = server:client{ timeout = 3, retry = false }
    assert.equal(2, client:refresh_certificates())
    local before = ids(client)
    server:fault("status", { status = 500, path = "^/v3/certificates" })
    local none, err = client:refresh_certificates()
    assert.is_nil(none)
    assert.equal("http", err.kind)
    assert.equal(before, ids(client))
    local wrong = server:client{ timeout = 3, retry = false, apiv3_key = ("0"):rep(32) }
    none, err = wrong:certificates()
    assert.is_nil(none)
    assert.equal("decrypt", err.kind)
    assert.matches("APIv3 key", err.message)
  end)

  it("an encrypt_certificate no key could open is malformed; one the APIv3 key does not open is decrypt", function()
    local certificates = require("wechatpay.certificates")
    local cjson = require("cjson")
    local key = ("k"):rep(32)
    local sealed = assert(wechatpay.aes.gcm_encrypt(("x"):rep(32), "nonce1234567", "certificate", "PEM"))
    local function download(encrypted)
      return { status = 200, headers = {}, body = cjson.encode{ data = { {
        serial_no = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1", effective_time = "2026-01-01T00:00:00+08:00",
        expire_time = "2031-01-01T00:00:00+08:00", encrypt_certificate = encrypted } } } }
    end
    for _, bad in ipairs{
      { algorithm = "AEAD_SM4", nonce = "nonce1234567", associated_data = "certificate", ciphertext = sealed },
      { algorithm = "AEAD_AES_256_GCM", nonce = "", associated_data = "certificate", ciphertext = sealed },
      { algorithm = "AEAD_AES_256_GCM", nonce = "nonce1234567", associated_data = "certificate", ciphertext = "%%" },
    } do
      local none, err = certificates.check_download(key, {}, download(bad), "/v3/certificates")
      assert.is_nil(none)
      assert.equal("malformed", err.kind)
      assert.matches("encrypt_certificate is not a resource WeChat Pay sends", err.message, 1, true)
      assert.is_nil(err.message:find("APIv3 key", 1, true))
    end
    local none, err = certificates.check_download(key, {}, download{ algorithm = "AEAD_AES_256_GCM",
      nonce = "nonce1234567", associated_data = "certificate", ciphertext = sealed }, "/v3/certificates")
    assert.is_nil(none)
    assert.equal("decrypt", err.kind)
    assert.matches("APIv3 key", err.message, 1, true)
  end)

  it("a client that knows no certificate verifies the download with the one that signed it", function()
    local client = server:client{ timeout = 3, retry = false, certs = {} }
    assert.equal(2, client:refresh_certificates())
    assert(client.v3.mock.echo:get())
  end)

  it("a rotation mid-traffic causes exactly one download and no failed call", function()
    local client = server:client{ timeout = 5, retry = false, max_concurrency = 8 }
    assert(client:refresh_certificates())
    local downloads = server:stats().certificate_downloads
    local calls = {}
    for i = 1, 20 do calls[i] = client.v3.mock.echo:getAsync{ query = { i = tostring(i) } } end
    assert(wechatpay.all(calls):wait())
    local next_serial = server:rotate_certificates()
    assert.equal(server.platform_cert_next_serial, next_serial)
    for i = 1, 40 do calls[i] = client.v3.mock.echo:getAsync{ query = { i = tostring(i) } } end
    local results = assert(wechatpay.all(calls):wait())
    assert.equal(40, #results)
    assert.equal(downloads + 1, server:stats().certificate_downloads)
    assert.equal(2, client:certificate_stats().downloads)   -- the explicit refresh, and the one rotation caused
    assert.truthy(ids(client):find(next_serial, 1, true))
  end)

  it("a store that cannot keep a certificate: the client still has it, and its stats say why", function()
    local store = { load = function() return {} end, save = function() return nil, "disk full" end }
    local client = server:client{ timeout = 3, retry = false, cert_store = store }
    assert.equal(2, client:refresh_certificates())
    assert.truthy(ids(client):find(server.platform_cert_serial, 1, true))
    assert.equal("kept in memory; the store did not keep it safely: disk full", client:certificate_stats().last_error)
  end)

  it("cert_dir: the certificates are written atomically as wechatpay_<serial>.pem and load in a new client", function()
    local dir = ossl.tmpdir()
    finally(function() ossl.remove(dir) end)
    local client = server:client{ timeout = 3, retry = false, cert_dir = dir }
    assert(client:refresh_certificates())
    local files = ossl.run("ls -A " .. ossl.quote(dir))
    assert.matches("wechatpay_%x+%.pem", files)
    assert.is_nil(files:find("tmp", 1, true))
    local reader = server:client{ timeout = 3, retry = false, cert_dir = dir, apiv3_key = false,
      certs = { [server.platform_key_id] = "file://" .. server.platform_public_key_file } }
    for serial in files:gmatch("wechatpay_(%x+)%.pem") do
      assert.truthy(ids(reader):find(serial, 1, true))
      assert.equal(ossl.read(dir .. "/wechatpay_" .. serial .. ".pem"),
        ossl.read(server.dir .. "/" .. (serial == server.platform_cert_old_serial and "platform_cert_old.pem"
          or serial == server.platform_cert_serial and "platform_cert.pem" or "platform_cert_next.pem")))
    end
  end)
end)

describe("a cert_dir shared with a cron job", function()
  local server
  setup(function() server = assert(mock.start{ rate_limit = false, sign_with = "certificate" }) end)
  teardown(function() if server then server:stop() end end)

  it("a client without an APIv3 key picks up what the cron job wrote, when a response needs it", function()
    local dir = ossl.tmpdir()
    finally(function() ossl.remove(dir) end)
    local reader = server:client{ timeout = 3, retry = false, cert_dir = dir, apiv3_key = false }
    local _, err = reader.v3.mock.echo:get()
    assert.equal("verify", err.kind)
    assert.equal(0, server:stats().certificate_downloads)
    -- the cron job (bin/wechatpay-certs, or any client with this cert_dir) downloads
    assert(server:client{ timeout = 3, retry = false, cert_dir = dir }:refresh_certificates())
    assert.equal(1, server:stats().certificate_downloads)
    ossl.run("sleep 1.1")   -- the reader looks at the directory at most once a second
    assert(reader.v3.mock.echo:get())
    assert.equal(1, server:stats().certificate_downloads)
  end)
end)

describe("the cert_dir store", function()
  local certificates = require("wechatpay.certificates")
  local core = require("wechatpay.core")

  it("core.list_dir lists what ls -A lists, and says why it cannot", function()
    local dir = ossl.tmpdir()
    finally(function() ossl.remove(dir) end)
    for _, name in ipairs{ "wechatpay_AB.pem", ".hidden", "with space", "中文" } do ossl.write(dir .. "/" .. name, "x") end
    ossl.run("mkdir " .. ossl.quote(dir .. "/sub"))
    local names = assert(core.list_dir(dir))
    table.sort(names)
    local expected = {}
    for name in ossl.run("ls -A " .. ossl.quote(dir)):gmatch("[^\n]+") do expected[#expected + 1] = name end
    table.sort(expected)
    assert.same(expected, names)
    local none, err = core.list_dir(dir .. "/missing")
    assert.is_nil(none)
    assert.matches("cannot list .*/missing: No such file or directory", err)
    assert.has_error(function() core.list_dir("a\0b") end)
  end)

  it("writes a certificate 0644 whatever the umask (nginx's is 0), or as the file it replaces", function()
    local dir = ossl.tmpdir()
    finally(function() ossl.remove(dir) end)
    -- a child interpreter under umask 000, with this build
    local function save(serial)
      ossl.run("umask 000; " .. require("support.process").lua_command(
        ("assert(require('wechatpay.certificates').dir_store(%q):save(%q, 'PEM'))"):format(dir, serial)))
      return ossl.run("stat -c %a " .. ossl.quote(dir .. "/wechatpay_" .. serial .. ".pem")):match("%d+")
    end
    assert.equal("644", save("0A1B"))
    ossl.run("chmod 600 " .. ossl.quote(dir .. "/wechatpay_0A1B.pem"))
    assert.equal("600", save("0A1B"))
    assert.equal("wechatpay_0A1B.pem", ossl.run("ls -A " .. ossl.quote(dir)):match("^%s*(.-)%s*$"))
  end)

  it("loads without a subprocess (a forged callback's unknown serial reaches it before any signature check)", function()
    local dir = ossl.tmpdir()
    finally(function() ossl.remove(dir) end)
    ossl.write(dir .. "/wechatpay_0A1B.pem", "PEM")
    ossl.write(dir .. "/other.txt", "x")
    local popen = io.popen
    io.popen = function() error("io.popen called") end
    local ok, found = pcall(certificates.dir_store(dir).load, certificates.dir_store(dir))
    io.popen = popen
    assert.is_true(ok, tostring(found))
    assert.same({ ["0A1B"] = "PEM" }, found)
  end)
end)

describe("a PUB_KEY_ID-only merchant", function()
  local server

  setup(function() server = assert(mock.start{ rate_limit = false, public_key_only = true }) end)
  teardown(function() if server then server:stop() end end)

  it("gets WeChat Pay's 404 once, which is no error, and is never asked to download again", function()
    local client = server:client{ timeout = 3, retry = false }
    -- a response signed by an unknown certificate serial asks for a download...
    server:fault("unknown_serial", { serial = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1", count = 3, path = "echo" })
    local _, err = client.v3.mock.echo:get()
    assert.equal("verify", err.kind)
    assert.equal(1, server:stats().certificate_downloads)
    assert.is_true(client:certificate_stats().public_key_only)
    -- ...once: the 404 said this merchant has no certificates
    for _ = 1, 2 do
      _, err = client.v3.mock.echo:get()
      assert.equal("verify", err.kind)
    end
    assert.equal(1, server:stats().certificate_downloads)
    -- and its calls are fine
    assert(client.v3.mock.echo:get())
    local list, note = client:certificates()
    assert.same({}, list)
    assert.matches("public key", note)
  end)

  it("encrypt without any WeChat Pay key says what to give, instead of raising", function()
    local client = server:client{ timeout = 3, retry = false, certs = {} }
    local ciphertext, err = client:encrypt("张三")
    assert.is_nil(ciphertext)
    assert.matches("no WeChat Pay key to encrypt with: give the WeChat Pay public key in certs", tostring(err))
  end)
end)

describe("certificate options of wechatpay.new", function()
  local merchant = require("support.merchant")
  local function refused(opts, pattern)
    local ok, err = pcall(wechatpay.new, opts)
    assert.is_false(ok)
    assert.matches(pattern, tostring(err))
  end

  it("certs may be empty with an apiv3_key or a store; a bad cert_dir, cert_store or refresh_interval raises", function()
    local apiv3_key = ("a"):rep(32)
    assert.same({}, wechatpay.new(merchant.options{ certs = {}, apiv3_key = apiv3_key }):platform_key_ids())
    refused(merchant.options{ certs = {} }, "or an apiv3_key, to download")
    refused(merchant.options{ cert_dir = "/nonexistent/dir" }, "cert_dir /nonexistent/dir is not a directory")
    refused(merchant.options{ cert_store = {} }, "cert_store must be an object with load%(%) and save")
    refused(merchant.options{ cert_dir = "/tmp", cert_store = {} }, "give cert_dir or cert_store, not both")
    refused(merchant.options{ refresh_interval = 5 }, "refresh_interval must be a finite number")
    assert(wechatpay.new(merchant.options{ refresh_interval = false, apiv3_key = apiv3_key }))
    assert.has_error(function() wechatpay.new(merchant.options()):refresh_certificates() end,
      "refresh_certificates: the client was made without apiv3_key")
  end)
end)

describe("the certificate manager", function()
  local certificates = require("wechatpay.certificates")
  local promise = require("wechatpay.promise")

  -- a manager whose downloads are promises this spec settles by hand
  local function manager(keys)
    local clock = { now = 1000 }
    local fetches = {}
    local m = certificates.manager{
      keys = keys, apiv3_key = function() return ("a"):rep(32) end, merchant_serial = "AB",
      fetch = function() local p = promise.new(); fetches[#fetches + 1] = p; return p end,
      clock = function() return clock.now end,
    }
    return m, clock, fetches
  end
  local UNKNOWN = { kind = "verify", unknown_serial = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1" }

  it("single-flight: refreshes while one runs join it; unknown serials refresh at most once a minute", function()
    local m, clock, fetches = manager({})
    assert.is_true(m:wants(UNKNOWN))
    local a, b = m:refresh_async(nil, true), m:refresh_async(nil, true)
    assert.equal(a, b)
    assert.equal(1, #fetches)
    assert.is_true(m:wants(UNKNOWN))            -- joins the one running
    fetches[1]:resolve({ certificates = {} })
    assert.is_false(m:wants(UNKNOWN))           -- not again within the minute
    assert.is_false(m:wants({ kind = "verify", unknown_serial = "PUB_KEY_ID_0114232134912410000000000001" }))
    clock.now = clock.now + 61
    assert.is_true(m:wants(UNKNOWN))
  end)

  it("a download that can no longer settle (its nginx request ended) is dropped, not joined forever", function()
    local m, clock, fetches = manager({})
    m.stale_after = 70
    local first = m:refresh_async(nil, true)
    assert.equal(first, m:refresh_async(nil, true))
    clock.now = clock.now + 71
    assert.is_true(m:wants(UNKNOWN))
    local second = m:refresh_async(nil, true)
    assert.are_not.equal(first, second)
    assert.equal(2, #fetches)
    -- should the first settle after all, it does not clear the second
    fetches[1]:resolve({ certificates = {} })
    assert.equal(second, m:refresh_async(nil, true))
    fetches[2]:resolve({ certificates = {} })
    assert.equal("fulfilled", second.state)
  end)

  it("a background refresh waiting for its timer makes due() false, so one is scheduled at a time", function()
    local m, clock = manager({ ["5157F09EFDC096DE15EBE81A47057A7232F1B8E1"] = true })
    clock.now = clock.now + certificates.REFRESH_INTERVAL
    assert.is_true(m:due())
    m:scheduled(true)
    assert.is_false(m:due())
    m:scheduled(false)
    assert.is_true(m:due())
    -- a timer nginx dropped never clears the mark: it stops counting after a minute
    m:scheduled(true)
    clock.now = clock.now + certificates.MIN_INTERVAL + 1
    assert.is_true(m:due())
  end)

  it("periodic refresh: due after the interval, only for merchants holding certificates, never after the 404", function()
    local m, clock, fetches = manager({ PUB_KEY_ID_0114232134912410000000000000 = true })
    clock.now = clock.now + certificates.REFRESH_INTERVAL
    assert.is_false(m:due())                    -- a public key only: nothing to keep ahead of
    m.keys["5157F09EFDC096DE15EBE81A47057A7232F1B8E1"] = true
    assert.is_true(m:due())
    m:refresh_async(nil, true)
    assert.is_false(m:due())                    -- one is running
    local errors = require("wechatpay.errors")
    fetches[1]:reject(errors.new("http", certificates.NO_CERTIFICATES, { status = 404, code = "NOT_FOUND" }))
    assert.is_true(m.public_key_only)
    clock.now = clock.now + 2 * certificates.REFRESH_INTERVAL
    assert.is_false(m:due())
    assert.is_false(m:wants(UNKNOWN))
  end)

  -- an ngx.shared.DICT stand-in (one process)
  local function fake_dict()
    local data = {}
    return {
      get = function(_, k) return data[k] end,
      set = function(_, k, v) data[k] = v; return true end,
      add = function(_, k, v) if data[k] ~= nil then return false, "exists" end data[k] = v; return true end,
      delete = function(_, k) data[k] = nil end,
      incr = function(_, k, n, init) data[k] = (data[k] or init) + n; return data[k] end,
    }
  end

  it("shared store: a save that made the dict evict other entries says so (ngx.shared's forcible)", function()
    local dict = fake_dict()
    local store = certificates.shared_dict_store(dict)
    assert.is_true(store:save("AB01", "PEM1"))
    local add = dict.add
    dict.add = function(self, k, v) add(self, k, v) return true, nil, true end
    local ok, err = store:save("AB02", "PEM2")
    assert.is_nil(ok)
    assert.matches("shared dict is full and evicted older entries", err, 1, true)
    assert.same({ AB01 = "PEM1", AB02 = "PEM2" }, store:load())   -- this save itself landed
  end)

  it("shared store: a worker that finds it locked waits (bounded) for the download instead of downloading", function()
    local dict = fake_dict()
    local store = certificates.shared_dict_store(dict)
    local sleeps, fetches = 0, 0
    local m = certificates.manager{
      keys = {}, apiv3_key = function() return ("a"):rep(32) end, merchant_serial = "AB", store = store,
      fetch = function() fetches = fetches + 1; return promise.new() end,
      sleeper = function()
        return function() sleeps = sleeps + 1; if sleeps == 3 then store:unlock() end end
      end,
    }
    assert.is_true(store:lock(60))                -- another worker downloads
    assert.is_true(store:locked())
    local p = m:refresh_async(nil, true)
    assert.equal("fulfilled", p.state)
    assert.equal(0, fetches)
    assert.equal(3, sleeps)                       -- until the other worker's lock went
    -- a lock never released: the wait ends at LOCK_WAIT
    sleeps = 0
    m.inflight, m.sleeper = nil, function() return function() sleeps = sleeps + 1 end end
    assert.is_true(store:lock(60))
    m:refresh_async(nil, true)
    assert.equal(math.ceil(certificates.LOCK_WAIT / 0.05), sleeps)
    assert.equal(0, fetches)
  end)

  it("shared store: a worker that takes the lock just as another's download ended loads instead of downloading", function()
    local dir = ossl.tmpdir()
    ossl.run(("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s/k.pem -out %s/c.pem -days 2 -subj /CN=wechatpay-spec")
      :format(dir, dir))
    local pem = ossl.read(dir .. "/c.pem")
    local serial = ossl.run("openssl x509 -in " .. dir .. "/c.pem -noout -serial"):match("=(%x+)"):upper()
    ossl.remove(dir)
    local store = certificates.shared_dict_store(fake_dict())
    -- the other worker saves and unlocks after this one looked at the store, before it locks
    local lock = store.lock
    store.lock = function(s, ttl) s:save(serial, pem); return lock(s, ttl) end
    local fetches = 0
    local m = certificates.manager{
      keys = {}, apiv3_key = function() return ("a"):rep(32) end, merchant_serial = "AB", store = store,
      fetch = function() fetches = fetches + 1; return promise.new() end,
    }
    local p = m:refresh_async(nil, true)
    assert.equal("fulfilled", p.state)
    assert.equal(0, fetches)
    assert.truthy(m.keys[serial:gsub("^0+", "")] or m.keys[serial])
    assert.is_false(store:locked())
  end)

  it("shared store: max_age loads instead of downloading when another worker's download is recent", function()
    local dict = fake_dict()
    local store = certificates.shared_dict_store(dict)
    local fetches = {}
    local m = certificates.manager{
      keys = {}, apiv3_key = function() return ("a"):rep(32) end, merchant_serial = "AB", store = store,
      fetch = function() local p = promise.new(); fetches[#fetches + 1] = p; return p end,
    }
    assert.is_nil(store:age())
    m:refresh_async(nil, false, 600)              -- never refreshed: downloads
    assert.equal(1, #fetches)
    assert.is_true(store:locked())
    fetches[1]:resolve({ certificates = {} })
    assert.is_false(store:locked())               -- dropped after the save
    assert.is_true(store:age() < 5)
    m:refresh_async(nil, false, 600)              -- recent: no second download
    assert.equal(1, #fetches)
    m:refresh_async(nil, false)                   -- no max_age: downloads
    assert.equal(2, #fetches)
  end)

  -- A certificate made by luaossl (not ours), valid from `from` to `to` (unix seconds) -> pem, serial
  local function certificate(from, to)
    local openssl_pkey, x509 = require("openssl.pkey"), require("openssl.x509")
    local bignum, name = require("openssl.bignum"), require("openssl.x509.name")
    local k = openssl_pkey.new{ type = "RSA", bits = 2048 }
    local cert = x509.new()
    local serial = ("%X"):format(math.random(0x10000000, 0x7FFFFFFF)) .. "5157F09E"
    cert:setVersion(3)
    cert:setSerial(bignum.new("0x" .. serial))
    local subject = name.new()
    subject:add("CN", "wechatpay-spec")
    cert:setSubject(subject)
    cert:setIssuer(subject)
    cert:setLifetime(from, to)
    cert:setPublicKey(k)
    cert:sign(k)
    return tostring(cert), serial
  end

  it("an expired certificate is neither kept from a download nor loaded from a store", function()
    local now = os.time()
    local old_pem, old_serial = certificate(now - 10 * 86400, now - 86400)
    local new_pem, new_serial = certificate(now - 86400, now + 86400)
    local store = certificates.shared_dict_store(fake_dict())
    assert.is_true(store:save(old_serial, old_pem))
    local m = certificates.manager{
      keys = {}, apiv3_key = function() return ("a"):rep(32) end, merchant_serial = "AB", store = store,
      fetch = function() return promise.new() end,
    }
    assert.same({}, m.keys)                       -- the store's expired one: not loaded
    local key = require("wechatpay.key")
    local old_key, new_key = assert(key.public(old_pem)), assert(key.public(new_pem))
    assert.equal(1, m:accept{
      { serial = old_serial, key = old_key, pem = old_pem, not_after = old_key:certificate().not_after },
      { serial = new_serial, key = new_key, pem = new_pem, not_after = new_key:certificate().not_after },
    })
    assert.is_nil(m.keys[old_serial])
    assert.equal(new_key, m.keys[new_serial])
    assert.matches(old_serial .. " expired: not kept", m.last_error, 1, true)
    assert.is_true(certificates.expired(old_key:certificate()))
    assert.is_false(certificates.expired(new_key:certificate()))
  end)

  it("shared store: an unknown serial downloads once a minute per merchant, not once per worker", function()
    local store = certificates.shared_dict_store(fake_dict())
    local fetches = {}
    local function worker()
      return certificates.manager{
        keys = {}, apiv3_key = function() return ("a"):rep(32) end, merchant_serial = "AB", store = store,
        fetch = function() local p = promise.new(); fetches[#fetches + 1] = p; return p end,
      }
    end
    local a, b = worker(), worker()
    assert.is_true(a:wants(UNKNOWN))
    a:refresh_async(nil, true)
    assert.equal(1, #fetches)
    fetches[1]:resolve({ certificates = {} })
    -- another worker, another made-up serial, within the minute: no download
    assert.is_true(b:wants(UNKNOWN))
    assert.equal("fulfilled", b:refresh_async(nil, true).state)
    assert.equal(1, #fetches)
    -- an explicit refresh is not an automatic one
    b:refresh_async(nil, false)
    assert.equal(2, #fetches)
  end)

  it("shared store: a periodic refresh another worker's claim turned away is not due again at every call", function()
    local store = certificates.shared_dict_store(fake_dict())
    local clock, fetches = { now = 1000 }, {}
    local function worker()
      return certificates.manager{
        keys = { ["5157F09EFDC096DE15EBE81A47057A7232F1B8E1"] = true }, apiv3_key = function() return ("a"):rep(32) end,
        merchant_serial = "AB", store = store, clock = function() return clock.now end,
        fetch = function() local p = promise.new(); fetches[#fetches + 1] = p; return p end,
      }
    end
    local a, b = worker(), worker()
    clock.now = clock.now + certificates.REFRESH_INTERVAL
    assert.is_true(a:due() and b:due())
    a:refresh_async(nil, true)
    fetches[1]:resolve({ certificates = {} })
    assert.equal("fulfilled", b:refresh_async(nil, true).state)   -- turned away by a's claim
    assert.equal(1, #fetches)
    assert.is_false(b:due())
    clock.now = clock.now + certificates.REFRESH_INTERVAL
    assert.is_true(b:due())
  end)

  it("a store whose optional methods raise: the refresh goes on without them, and says why", function()
    local store = certificates.shared_dict_store(fake_dict())
    for _, method in ipairs{ "lock", "unlock", "locked", "age", "claim_auto" } do
      store[method] = function() error("redis: connection refused") end
    end
    local fetches = {}
    local m = certificates.manager{
      keys = {}, apiv3_key = function() return ("a"):rep(32) end, merchant_serial = "AB", store = store,
      fetch = function() local p = promise.new(); fetches[#fetches + 1] = p; return p end,
    }
    local ok, wants = pcall(m.wants, m, UNKNOWN)
    assert.is_true(ok, tostring(wants))
    assert.is_true(wants)
    local refreshed, p = pcall(m.refresh_async, m, nil, true, 600)
    assert.is_true(refreshed, tostring(p))
    assert.equal(1, #fetches)
    assert.matches("the certificate store's [%w_]+ failed: .*redis: connection refused", m.last_error)
    assert.is_true(pcall(fetches[1].resolve, fetches[1], { certificates = {} }))
    assert.equal("fulfilled", p.state)
    -- the download went well, the store did not: still said
    assert.matches("the certificate store's [%w_]+ failed: .*redis: connection refused", m.last_error)
    -- a lock this refresh never took is never dropped: it may be another worker's
    local unlocks = 0
    store.unlock = function() unlocks = unlocks + 1 end
    m:refresh_async(nil, false)
    fetches[2]:resolve({ certificates = {} })
    assert.equal(0, unlocks)
  end)

  it("after WeChat Pay's 404 for a public-key-only merchant, no refresh downloads again, explicit or not", function()
    local m, _, fetches = manager({ PUB_KEY_ID_0114232134912410000000000000 = true })
    m:refresh_async()
    fetches[1]:reject(require("wechatpay.errors").new("http", certificates.NO_CERTIFICATES, { status = 404 }))
    assert.is_true(m.public_key_only)
    assert.equal("fulfilled", m:refresh_async().state)
    assert.equal("fulfilled", m:refresh_async(nil, false, 600).state)
    assert.equal(1, #fetches)
  end)

  it("a failed refresh keeps every key", function()
    local m, _, fetches = manager({ PUB_KEY_ID_0114232134912410000000000000 = "k1", ["5157F09E"] = "k2" })
    m:refresh_async()
    fetches[1]:reject(require("wechatpay.errors").new("network", "reset"))
    assert.same({ PUB_KEY_ID_0114232134912410000000000000 = "k1", ["5157F09E"] = "k2" }, m.keys)
    assert.equal("network", m.last_error.kind)
  end)
end)
