-- client:download against the mock over real HTTPS: bills made on disk by
-- the mock (gzip by gzip(1), hashes by sha1sum/sha256sum), streamed to a
-- file or a function, checked byte for byte with cmp and sha1sum; every
-- fault leaves no temporary file and an existing file untouched; memory
-- stays flat on a large bill.
local mock = require("wechatpay.mock")
local nginx = require("support.nginx")
local ossl = require("support.openssl")

local q = ossl.quote
local SANITIZED = (os.getenv("WECHATPAY_BUILD") or ""):find("/dev", 1, true) ~= nil

-- The names in a directory, sorted, hidden ones included.
local function listing(dir)
  local names = {}
  for name in ossl.run("ls -A " .. q(dir)):gmatch("[^\n]+") do names[#names + 1] = name end
  table.sort(names)
  return table.concat(names, " ")
end

local function status_kb(field)
  local f = assert(io.open("/proc/self/status", "r"))
  local text = f:read("*a")
  f:close()
  return tonumber(text:match(field .. ":%s*(%d+) kB"))
end

describe("client:download", function()
  local server, client, dir

  setup(function()
    server = assert(mock.start{ rate_limit = false })
    client = server:client{ timeout = 5, retry = false }
    dir = ossl.tmpdir()
  end)
  teardown(function()
    if server then server:stop() end
    if dir then ossl.remove(dir) end
  end)
  before_each(function() server:clear_faults() end)
  after_each(function() os.remove(dir .. "/bill.csv") end)

  local function csv_of(name) return server.dir .. "/bills/" .. name .. ".csv" end

  local function apply(date, gzip)
    return assert(client.v3.bill.tradebill:get{ query = { bill_date = date, tar_type = gzip and "GZIP" or nil } })
  end

  -- a file at `to` whose bytes the failed downloads below must not touch
  local function existing(to)
    ossl.write(to, "the bill downloaded yesterday\n")
    return function()
      assert.equal("the bill downloaded yesterday\n", ossl.read(to))
      assert.equal(to:match("([^/]+)$"), listing(dir))
    end
  end

  it("streams a gzipped bill to a file: the bytes are the mock's CSV, checked by cmp and sha1sum", function()
    local bill = apply("2026-11-26", true)
    assert.matches("token=", bill:json().download_url)
    local to = dir .. "/trade-2026-11-26.csv"
    local info = assert(client:download(bill, { to = to }))
    ossl.run("cmp " .. q(to) .. " " .. q(csv_of("trade-20261126")))
    local sha1 = ossl.run("sha1sum " .. q(to)):match("^(%x+)")
    assert.equal(sha1, info.hash_value)
    assert.equal(bill:json().hash_value, info.hash_value)
    assert.equal("SHA1", info.hash_type)
    assert.is_true(info.gzip)
    assert.equal(#ossl.read(to), info.bytes)
    assert.equal(#ossl.read(csv_of("trade-20261126") .. ".gz"), info.received)
    assert.equal(to, info.path)
    assert.matches("`SUCCESS", ossl.read(to))
    assert.equal("trade-2026-11-26.csv", listing(dir))
    os.remove(to)
  end)

  it("streams a plain bill with a SHA256 hash to a function, piece by piece", function()
    local meta = server:bill("trade-20261101", { rows = 5000, hash_type = "SHA256" })
    local bill = apply("2026-11-01", false):json()   -- the decoded table works as well
    assert.equal("SHA256", bill.hash_type)
    local pieces = {}
    local info = assert(client:download(bill, { to = function(bytes) pieces[#pieces + 1] = bytes end }))
    assert.is_false(info.gzip)
    assert.is_nil(info.path)
    assert.is_true(#pieces > 1)
    local got = table.concat(pieces)
    assert.equal(ossl.read(csv_of("trade-20261101")), got)
    assert.equal(meta.size, info.bytes)
    local file = ossl.write(dir .. "/got.csv", got)
    assert.equal(ossl.run("openssl dgst -sha256 -r " .. q(file)):match("^(%x+)"), info.hash_value)
    os.remove(file)
  end)

  it("takes a stock flow's answer, whose URL is named url, and a fund flow bill", function()
    local flow = assert(client.v3.marketing.favor.stocks._stock_id_["use-flow"]:get{ stock_id = "9856000" })
    assert.is_nil(flow:json().download_url)
    local pieces = {}
    assert(client:download(flow, { to = function(bytes) pieces[#pieces + 1] = bytes end }))
    assert.equal(ossl.read(csv_of("stock-9856000-use")), table.concat(pieces))
    local multiuse = assert(client.v3.multiuse.stocks._stock_id_["refund-flow"]:get{ stock_id = "9856001" }):json()
    local given = { url = multiuse.url, hash_type = multiuse.hash_type, hash_value = multiuse.hash_value }
    assert(client:download(given, { to = dir .. "/refund.csv" }))
    ossl.run("cmp " .. q(dir .. "/refund.csv") .. " " .. q(csv_of("stock-9856001-refund")))
    os.remove(dir .. "/refund.csv")
    local fund = assert(client.v3.bill.fundflowbill:get{ query = { bill_date = "2026-11-25", tar_type = "GZIP" } })
    assert(client:download(fund, { to = dir .. "/fund.csv" }))
    ossl.run("cmp " .. q(dir .. "/fund.csv") .. " " .. q(csv_of("fundflow-20261125")))
    os.remove(dir .. "/fund.csv")
  end)

  it("verifies the first call's answer, and only the download's answer goes unverified", function()
    server:fault("tamper_body", { path = "^/v3/bill/tradebill" })
    local res, err = client.v3.bill.tradebill:get{ query = { bill_date = "2026-11-26" } }
    assert.is_nil(res)
    assert.equal("verify", err.kind)
    local bill = apply("2026-11-26", false)
    local seen
    local transport = require("wechatpay.transport.curl")
    local original = transport.submit
    transport.submit = function(self, request, callback)   -- to look at the download's answer
      return original(self, request, function(raw, failure)
        if raw and request.url:find("/v3/billdownload/", 1, true) then seen = raw end
        return callback(raw, failure)
      end)
    end
    local ok, info = pcall(client.download, client, bill, { to = function() end })
    transport.submit = original
    assert.is_true(ok, tostring(info))
    assert.truthy(info)
    assert.equal(200, seen.status)
    assert.is_nil(seen.headers["wechatpay-signature"])
    assert.equal("", seen.body)   -- streamed: nothing kept whole
  end)

  it("a hash other than the file's: integrity, no temp file, the old file untouched", function()
    local to = dir .. "/bill.csv"
    local unchanged = existing(to)
    server:fault("wrong_hash", { path = "^/v3/bill/tradebill" })
    local bill = apply("2026-11-26", true)
    local info, err = client:download(bill, { to = to })
    assert.is_nil(info)
    assert.equal("integrity", err.kind)
    assert.matches("SHA1 of the bill is %x+, not the %x+ WeChat Pay gave", err.message)
    assert.not_matches("token", err.message)
    unchanged()
  end)

  for _, case in ipairs{
    { "reset mid-body", "reset", {}, true, "network" },
    { "a Content-Length longer than what is sent", "truncate", { missing = 5000 }, false, "network" },
    { "a gzip stream cut short", "cut", { keep = 0.6 }, true, "integrity", "truncated gzip" },
    { "a plain file cut short", "cut", { keep = 0.6 }, false, "integrity", "not the" },
  } do
    it(case[1] .. " is a " .. case[5] .. " error; no temp file, the old file untouched", function()
      server:bill("trade-20261102", { rows = 20000 })
      local to = dir .. "/bill.csv"
      local unchanged = existing(to)
      local bill = apply("2026-11-02", case[4])
      server:fault(case[2], { path = "^/v3/billdownload/", missing = case[3].missing, keep = case[3].keep })
      local info, err = client:download(bill, { to = to })
      assert.is_nil(info)
      assert.equal(case[5], err.kind, tostring(err))
      if case[6] then assert.matches(case[6], err.message) end
      unchanged()
      local pieces = 0
      server:fault(case[2], { path = "^/v3/billdownload/", missing = case[3].missing, keep = case[3].keep })
      info, err = client:download(bill, { to = function() pieces = pieces + 1 end })
      assert.is_nil(info)
      assert.equal(case[5], err.kind)
    end)
  end

  it("takes a body in chunked encoding as well", function()
    server:bill("trade-20261104", { rows = 20000 })
    local bill = apply("2026-11-04", true)
    server:fault("chunked", { path = "^/v3/billdownload/" })
    local to = dir .. "/bill.csv"
    local info = assert(client:download(bill, { to = to }))
    assert.is_true(info.gzip)
    ossl.run("cmp " .. q(to) .. " " .. q(csv_of("trade-20261104")))
  end)

  it("a download that handed bytes on is not sent again, even with idempotent retries", function()
    server:bill("trade-20261103", { rows = 20000 })
    local retrying = server:client{ timeout = 5, retry = { idempotent = true, attempts = 3 } }
    local bill = assert(retrying.v3.bill.tradebill:get{ query = { bill_date = "2026-11-03" } })
    local before = server:stats().requests
    server:fault("reset", { path = "^/v3/billdownload/" })
    local received = 0
    local info, err = retrying:download(bill, { to = function(bytes) received = received + #bytes end })
    assert.is_nil(info)
    assert.equal("network", err.kind)
    assert.is_true(received > 0)
    assert.equal(before + 1, server:stats().requests)
    retrying:close()
  end)

  it("a non-2xx answer of the download URL is an http error with WeChat Pay's code", function()
    local to = dir .. "/bill.csv"
    local unchanged = existing(to)
    local bill = apply("2026-11-26", true)
    server:fault("status", { status = 403, code = "NO_AUTH", message = "no permission", path = "^/v3/billdownload/" })
    local info, err = client:download(bill, { to = to })
    assert.is_nil(info)
    assert.equal("http", err.kind)
    assert.equal(403, err.status)
    assert.equal("NO_AUTH", err.code)
    unchanged()
    local bad = bill:json()
    bad.download_url = bad.download_url:gsub("token=.*", "token=no-such-bill")
    info, err = client:download(bad, { to = to })
    assert.equal("http", err.kind)
    assert.equal("RESOURCE_NOT_EXISTS", err.code)
    unchanged()
  end)

  it("a sink that raises ends the download with its error; the temp file is gone", function()
    local bill = apply("2026-11-26", true)
    local info, err = client:download(bill, { to = function() error("disk full (test)") end })
    assert.is_nil(info)
    assert.equal("internal", err.kind)
    assert.matches("disk full %(test%)", err.message)
    local missing_dir = dir .. "/no/such/dir/bill.csv"
    info, err = client:download(bill, { to = missing_dir })
    assert.is_nil(info)
    assert.equal("file", err.kind)
    assert.matches("cannot write the bill", err.message)
  end)

  it("an interrupt in the sink cancels the transfer, removes the temp file and goes on up", function()
    local errors = require("wechatpay.errors")
    server:bill("trade-20261107", { rows = 20000 })
    local bill = apply("2026-11-07", true)
    -- a function sink interrupted (as a Ctrl-C caught and passed on as kind "interrupted")
    local calls = 0
    local ok, raised = pcall(client.download, client, bill, { to = function()
      calls = calls + 1
      error(errors.new("interrupted", "interrupted by the user (test)"))
    end })
    assert.is_false(ok)
    assert.is_true(errors.is_interrupt(raised), tostring(raised))
    assert.equal(1, calls)
    -- a file sink whose write is interrupted as lua.c's SIGINT hook does
    local to = dir .. "/bill.csv"
    local unchanged = existing(to)
    local core = require("wechatpay.core")
    local temp_file = core.temp_file
    core.temp_file = function(...)
      local temp, err = temp_file(...)
      if not temp then return temp, err end
      return { write = function() error("interrupted!", 0) end,
        commit = function(_, final) return temp:commit(final) end, remove = function() return temp:remove() end }
    end
    ok, raised = pcall(client.download, client, bill, { to = to })
    core.temp_file = temp_file
    assert.is_false(ok)
    assert.is_true(errors.is_interrupt(raised), tostring(raised))
    unchanged()
    -- the client goes on: the next download on the same session completes
    local info = assert(client:download(bill, { to = to }))
    ossl.run("cmp " .. q(to) .. " " .. q(csv_of("trade-20261107")))
    assert.is_true(info.gzip)
  end)

  -- Seen from outside, as the kernel sees it: strace of a child that downloads.
  local traceable = os.execute("strace -f -qq -e trace=none true >/dev/null 2>&1")
  local it_traced = (traceable == true or traceable == 0) and it or pending

  it_traced("writes the whole file and syncs it before renaming it over `to`, then syncs the directory", function()
    local to, trace = dir .. "/bill.csv", dir .. "/trace"
    finally(function() os.remove(trace) end)
    existing(to)
    ossl.run("chmod 640 " .. q(to))
    local script = ([[
      local client = require("wechatpay").new{ mchid = %q, serial = %q, private_key = %q,
        certs = { [%q] = %q }, base_url = %q, cafile = %q, retry = false }
      local bill = assert(client.v3.bill.tradebill:get{ query = { bill_date = "2026-11-26", tar_type = "GZIP" } })
      assert(client:download(bill, { to = %q }))
    ]]):format(server.mchid, server.merchant_serial, "file://" .. server.merchant_key_file, server.platform_key_id,
      "file://" .. server.platform_public_key_file, server.base_url, server.cafile, to)
    -- -y names each descriptor's file; -s 0: no data
    ossl.run("strace -f -qq -y -s 0 -e trace=write,fsync,chmod,fchmod,fchmodat,rename,renameat,renameat2 -o " .. q(trace)
      .. " " .. require("support.process").lua_command(script))
    ossl.run("cmp " .. q(to) .. " " .. q(csv_of("trade-20261126")))
    assert.equal("640", ossl.run("stat -c %a " .. q(to)):match("%d+"))   -- the mode of the bill it replaced
    -- the temporary file's life, in order: made 0600, its writes, its sync, its final mode, its rename;
    -- then the directory's sync
    local steps = {}
    for line in io.lines(trace) do
      local call, args = line:match("^%d+%s+(%w+)%((.*)$")
      if call and args:find("%.part", 1) then
        local step = call == "write" and "writes" or call == "fsync" and "fsync" or call:find("chmod") and "chmod"
          or "rename"
        if step ~= steps[#steps] then steps[#steps + 1] = step end
      elseif call == "fsync" and args:find("^%d+<" .. dir:gsub("%p", "%%%0") .. ">") then
        steps[#steps + 1] = "fsync dir"
      end
    end
    assert.equal("chmod writes fsync chmod rename fsync dir", table.concat(steps, " "))
  end)

  it("a consumer aborted without an error refuses every later piece at once", function()
    local download = require("wechatpay.download")
    local got = {}
    local source = assert(download.source{ url = server.base_url .. "v3/x", hash_type = "SHA1", hash_value = "00" })
    local consumer = assert(download.consumer(source, function(bytes) got[#got + 1] = bytes end))
    assert.is_true(consumer.on_chunk("ab"))
    consumer.abort()
    assert.is_false(consumer.on_chunk("cd"))
    assert.same({ "ab" }, got)
    local info, err = consumer.finish()
    assert.is_nil(info)
    assert.equal("internal", err.kind)
    assert.matches("aborted", err.message)
    local file_consumer = assert(download.consumer(source, dir .. "/bill.csv"))
    file_consumer.abort()
    assert.is_false(file_consumer.on_chunk("ef"))
    assert.equal("", listing(dir))
  end)

  it("writes a bill readable by its owner only, or with the permissions of the bill it replaces", function()
    local bill = apply("2026-11-26", true)
    local to = dir .. "/bill.csv"
    assert(client:download(bill, { to = to }))
    assert.equal("600", ossl.run("stat -c %a " .. q(to)):match("%d+"))
    ossl.run("chmod 640 " .. q(to))
    assert(client:download(apply("2026-11-26", true), { to = to }))
    assert.equal("640", ossl.run("stat -c %a " .. q(to)):match("%d+"))
    -- a read-only bill is replaced too (the new one is written 0600, given 0444 at the end)
    ossl.run("chmod 444 " .. q(to))
    local info, err = client:download(apply("2026-11-26", true), { to = to })
    assert.is_truthy(info, tostring(err))
    assert.equal("444", ossl.run("stat -c %a " .. q(to)):match("%d+"))
    ossl.run("chmod 600 " .. q(to))
  end)

  it("replaces a symbolic link at `to`, leaving what it pointed to as it was", function()
    local sub_dir, to = dir .. "/target", dir .. "/bill.csv"
    ossl.run("mkdir " .. q(sub_dir) .. " && ln -s target " .. q(to))
    local info, err = client:download(apply("2026-11-26", true), { to = to })
    assert.is_truthy(info, tostring(err))
    assert.equal("regular file", ossl.run("stat -c %F " .. q(to)):match("^%s*(.-)%s*$"))
    assert.equal("600", ossl.run("stat -c %a " .. q(to)):match("%d+"))
    assert.equal("", listing(sub_dir))
    ossl.run("rmdir " .. q(sub_dir))
  end)

  it("a forked child collecting its copy of a download leaves the parent's file alone: not removed, not written", function()
    local helper_dir = ossl.tmpdir()   -- where Lua 5.4's fork helper is built
    finally(function() ossl.remove(helper_dir) end)
    local proc = require("support.process").api(helper_dir)
    local download = require("wechatpay.download")
    -- the bill: eight pieces of 100,000 bytes, four before the fork and
    -- four after (a buffered file would hold some of the first four then)
    local pieces = {}
    for i = 1, 8 do pieces[i] = string.rep(string.char(64 + i), 100000) end
    ossl.write(helper_dir .. "/expected.csv", table.concat(pieces))
    local sha1 = ossl.run("sha1sum " .. q(helper_dir .. "/expected.csv")):match("^(%x+)")
    local source = assert(download.source{ url = server.base_url .. "v3/x", hash_type = "SHA1", hash_value = sha1 })
    local consumer = assert(download.consumer(source, dir .. "/bill.csv"))
    -- (nothing between the pieces and the fork: io.popen would flush every stream)
    for i = 1, 4 do assert.is_true(consumer.on_chunk(pieces[i])) end
    local child = proc.spawn(function()
      consumer = nil   -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      return "collected"
    end)
    assert.equal("collected", proc.collect(child))
    assert.matches("^%.bill%.csv%.%x+%.part$", listing(dir), nil, "the child removed the parent's file")
    for i = 5, 8 do assert.is_true(consumer.on_chunk(pieces[i])) end
    assert.truthy(consumer.finish())
    -- nothing the child held was written to the file the parent renamed
    ossl.run("cmp " .. q(dir .. "/bill.csv") .. " " .. q(helper_dir .. "/expected.csv"))
    assert.equal("bill.csv", listing(dir))
  end)

  it("a `to` that is a directory is refused before anything is sent", function()
    local bill = apply("2026-11-26", true)
    local requests = server:stats().requests
    local to = dir .. "/sub"
    ossl.run("mkdir " .. q(to))
    local info, err = client:download(bill, { to = to })
    assert.is_nil(info)
    assert.equal("file", err.kind)
    assert.matches(to .. " is a directory", err.message, 1, true)
    assert.equal(requests, server:stats().requests)
    assert.equal("sub", listing(dir))
    ossl.run("rmdir " .. q(to))
  end)

  it("a download whose owner is gone without finishing leaves no partial file once collected", function()
    -- as inside nginx when ngx.exit kills the light thread mid-transfer: no Lua code runs again
    local download = require("wechatpay.download")
    local source = assert(download.source{ url = server.base_url .. "v3/x", hash_type = "SHA1", hash_value = "00" })
    local consumer = assert(download.consumer(source, dir .. "/bill.csv"))
    assert.is_true(consumer.on_chunk("date,amount\n"))
    assert.matches("^%.bill%.csv%.%x+%.part$", listing(dir))
    consumer = nil   -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    assert.equal("", listing(dir))
  end)

  it("stops a gzip stream that inflates a hundredfold, before it fills the disk", function()
    -- 64 MiB of zeros, deflated 1000 to 1 by gzip(1); its true hash, by sha1sum
    local gz = dir .. "/zeros.gz"
    ossl.run("head -c 67108864 /dev/zero | gzip -9 > " .. q(gz))
    local sha1 = ossl.run("head -c 67108864 /dev/zero | sha1sum"):match("^(%x+)")
    local download = require("wechatpay.download")
    local source = assert(download.source{ url = server.base_url .. "v3/x", hash_type = "SHA1", hash_value = sha1 })
    local consumer = assert(download.consumer(source, dir .. "/bill.csv"))
    local data = ossl.read(gz)
    os.remove(gz)
    local went_on = true
    for i = 1, #data, 65536 do
      went_on = consumer.on_chunk(data:sub(i, i + 65535))
      if not went_on then break end
    end
    local info, err = consumer.finish()
    assert.is_false(went_on)
    assert.is_nil(info)
    assert.equal("integrity", err.kind)
    assert.matches("more than " .. download.MAX_INFLATION .. " times: not a bill", err.message, 1, true)
    assert.equal("", listing(dir))
  end)

  it("never sends the Authorization header to another host, nor shows the token: nil, err, not a raise", function()
    local bill = apply("2026-11-26", false):json()
    local before = server:stats().requests
    local own = bill.download_url:match("^https://[^/]+")
    for _, case in ipairs{
      { "https://evil.example/v3/billdownload/file?token=SECRET", "not on the client's API origin" },
      { (bill.download_url:gsub("^https://127%.0%.0%.1:%d+", "https://127.0.0.1:1")), "not on the client's API origin" },
      { (bill.download_url:gsub("^https:", "http:")), "not on the client's API origin" },
      { (bill.download_url:gsub("^https://127%.0%.0%.1", "https://127.0.0.1@evil.example")), "not on the client's API origin" },
      { "not a URL?token=SECRET", "not on the client's API origin" },
      -- on the right host, but not requestable as it reads (request.prepare would raise on these)
      { own .. "/v3/billdownload/{timeout}?token=SECRET", "would not be sent as it reads" },
      { own .. "/v3/billdownload/../certificates?token=SECRET", "'%.%.' path segment" },
      { own .. "/v3/billdownload/file?token=SEC RET", "would not be sent as it reads" },
      { own .. "/v3/billdownload/file?token=SECRET%zz", "starts no %%XX escape" },
    } do
      local ok, info, err = pcall(client.download, client, { download_url = case[1], hash_type = "SHA1",
        hash_value = bill.hash_value }, { to = dir .. "/bill.csv" })
      assert.is_true(ok, tostring(info))
      assert.is_nil(info)
      assert.equal("malformed", err.kind)
      assert.matches(case[2], err.message)
      assert.not_matches("SECRET", tostring(err))
      assert.not_matches("token", tostring(err))
    end
    assert.equal(before, server:stats().requests)
    assert.equal("", listing(dir))
    local download = require("wechatpay.download")
    assert.equal("/v3/billdownload/file?token=x", download.target("https://API.mch.weixin.qq.com:443/v3/billdownload/file?token=x",
      { "https://api2.mch.weixin.qq.com", "https://api.mch.weixin.qq.com" }))
  end)

  it("with backups in base_url, a URL on any of them is taken, and a dead primary is passed over", function()
    local listener = assert(require("socket").bind("127.0.0.1", 0))
    local _, port = listener:getsockname()
    listener:close()   -- nothing listens there now: connecting is refused
    local backed = server:client{ timeout = 5, retry = false,
      base_url = { "https://127.0.0.1:" .. port .. "/", server.base_url } }
    local bill = apply("2026-11-26", true)   -- its URL names the backup's host
    local to = dir .. "/bill.csv"
    local info = assert(backed:download(bill, { to = to }))
    ossl.run("cmp " .. q(to) .. " " .. q(csv_of("trade-20261126")))
    assert.equal(info.hash_value, bill:json().hash_value)
    backed:close()
  end)

  it("refuses what is not a bill, and unknown options; an unknown hash type is an integrity error", function()
    assert.has_error(function() client:download("https://x/", { to = "a" }) end)
    assert.has_error(function() client:download({ download_url = "u" }, { to = "a" }) end)
    assert.has_error(function() client:download({ url = "u", hash_type = "SHA1", hash_value = "00" }) end)
    assert.has_error(function()
      client:download({ url = "u", hash_type = "SHA1", hash_value = "00" }, { to = "a", gzip = true })
    end)
    assert.has_error(function() client:download({ url = server.base_url .. "v3/x", hash_type = "SHA1",
      hash_value = "00" }, { to = 42 }) end)
    local info, err = client:download({ url = server.base_url .. "v3/x", hash_type = "MD5", hash_value = "00" },
      { to = function() end })
    assert.is_nil(info)
    assert.equal("integrity", err.kind)
    assert.equal("", listing(dir))
  end)

  it("a 64 MB bill streams with flat memory #large", function()
    -- about 64 MB inflated (8 MB gzipped); a body held whole would add at least 64 MB
    local meta = server:bill("trade-20261001", { rows = 280000 })
    assert.is_true(meta.size > 60 * 1024 * 1024)
    local bill = apply("2026-10-01", true)
    collectgarbage()
    collectgarbage()
    -- what the specs run before this one left alive is not the download's
    local heap_base = collectgarbage("count")
    local base, peak, heap_peak = status_kb("VmRSS"), 0, 0
    local next_sample = 0
    local info = assert(client:download(bill, { to = function(bytes)
      next_sample = next_sample - #bytes
      if next_sample <= 0 then
        peak = math.max(peak, status_kb("VmRSS"))
        heap_peak = math.max(heap_peak, collectgarbage("count"))
        next_sample = 1024 * 1024
      end
    end }))
    assert.equal(meta.size, info.bytes)
    assert.equal(meta.sha1, info.hash_value)
    local growth_mb = (peak - base) / 1024
    if os.getenv("WECHATPAY_DOWNLOAD_RSS") then
      print(("\nRSS before %.1f MB, peak %.1f MB, growth %.1f MB"):format(base / 1024, peak / 1024, growth_mb))
    end
    -- the C buffer (512 KiB), the inflater's window and output (288 KiB)
    -- and 256 KiB pieces awaiting the collector (the download steps it per
    -- piece): measured 1-5 MB on both runtimes; 16 MB is a quarter of the
    -- bill, which a body held whole would add in full
    assert.is_true(heap_peak - heap_base < 16 * 1024, ("the Lua heap peaked %.0f KB above its %.0f KB")
      :format(heap_peak - heap_base, heap_base))
    -- ASan's quarantine and valgrind keep freed memory mapped: RSS says
    -- nothing about the code under them
    if not (SANITIZED or os.getenv("WECHATPAY_VALGRIND")) then
      assert.is_true(growth_mb < 16, ("RSS grew %.1f MB"):format(growth_mb))
    end
    local to = dir .. "/large.csv"
    info = assert(client:download(bill, { to = to }))
    assert.equal(meta.sha1, ossl.run("sha1sum " .. q(to)):match("^(%x+)"))
    os.remove(to)
  end)

  describe("inside nginx (cosockets)", function()
    local app
    setup(function() app = nginx.start(server, { workers = 1 }) end)
    teardown(function() if app then app:stop() end end)

    it("streams gzip and plain bills, Content-Length and chunked, in pieces with a flat Lua heap #large", function()
      local meta = server:bill("trade-20261005", { rows = 280000 })
      for _, case in ipairs{ { "&gzip=1" }, { "" }, { "&gzip=1", "chunked" }, { "", "chunked" } } do
        if case[2] then server:fault(case[2], { path = "^/v3/billdownload/" }) end
        local status, body = app:get("/download?date=2026-10-05" .. case[1], 60)
        assert.equal(200, status, tostring(body and body.error))
        assert.equal(meta.size, body.bytes)
        assert.equal(meta.size, body.received)
        assert.equal(meta.sha1, body.hash_value)
        assert.equal(case[1] ~= "", body.gzip)
        -- the bill is 64 MB; held whole it would be all in the heap at once
        assert.is_true(body.heap_peak_kb < 16 * 1024, ("Lua heap peaked at %.0f KB"):format(body.heap_peak_kb))
      end
    end)

    it("a reset mid-body is a network error; a cut gzip an integrity error", function()
      server:bill("trade-20261006", { rows = 20000 })
      server:fault("reset", { path = "^/v3/billdownload/" })
      local status, body = app:get("/download?date=2026-10-06&gzip=1", 30)
      assert.equal(502, status)
      assert.equal("network", body.kind, body.error)
      server:fault("cut", { path = "^/v3/billdownload/" })
      status, body = app:get("/download?date=2026-10-06&gzip=1", 30)
      assert.equal(502, status)
      assert.equal("integrity", body.kind, body.error)
      assert.matches("truncated gzip", body.error)
      server:fault("wrong_hash", { path = "^/v3/bill/tradebill" })
      status, body = app:get("/download?date=2026-10-06", 30)
      assert.equal("integrity", body.kind, body.error)
    end)
  end)
end)
