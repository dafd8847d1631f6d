-- bin/wechatpay-grant against the mock WeChat Pay over real HTTPS, run as a
-- subprocess with the interpreter that runs busted; and its CSV and
-- out_request_no helpers on their own.
local mock = require("wechatpay.mock")
local hash = require("wechatpay.hash")
local csv = require("wechatpay.grant.csv")
local batch = require("wechatpay.grant.batch")
local results_module = require("wechatpay.grant.results")
local socket = require("socket")

local LUA = os.getenv("WECHATPAY_LUA") or (jit and "luajit" or "lua5.4")
local STOCK, APPID = "9856000", "wx233544546545989"

local function quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"__rc=$?\""))
  local out = p:read("*a")
  p:close()
  return tonumber(out:match("__rc=(%d+)%s*$")), (out:gsub("__rc=%d+%s*$", ""))
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("*a")
  f:close()
  return data
end

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- Deterministic users: awkward openids (mixed case, _ and -), Chinese names.
local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
local function user(i)
  local h, id = hash.sha256("grant spec user " .. i), {}
  for j = 1, 27 do
    local k = tonumber(h:sub(2 * j - 1, 2 * j), 16) % 64 + 1
    id[j] = ALPHABET:sub(k, k)
  end
  return { openid = "o" .. table.concat(id), name = "测试用户" .. i, id_card = ("1101011990%08d"):format(i) }
end

local SPECIAL = {
  { openid = "oQuote_comma-1", name = "欧阳,娜娜", id_card = "310104200001010026" },
  { openid = "oQuote_quote-2", name = 'Zhang "Sam" San', id_card = "11010519491231002X" },
  { openid = "oQuote_plain-3", name = "王五", id_card = "440301198512120018" },
}

local function users_csv(list, opts)
  opts = opts or {}
  local eol = opts.crlf and "\r\n" or "\n"
  local lines = { (opts.bom and "\239\187\191" or "") .. "openid,name,id_card_number" }
  for _, u in ipairs(list) do
    lines[#lines + 1] = table.concat({ csv.quote(u.openid), csv.quote(u.name), csv.quote(u.id_card) }, ",")
  end
  return table.concat(lines, eol) .. eol
end

local function range(first, last)
  local list = {}
  for i = first, last do list[#list + 1] = user(i) end
  return list
end

--- results(path) -> list of records { row =, openid =, out_request_no =, coupon_id =, error_code =, error_message = }
local function results(path)
  local f = io.open(path, "rb")
  if not f then return {} end
  local reader, list = csv.reader(f), {}
  local header = reader:next()
  assert.same(results_module.COLUMNS, header)
  for fields, info in reader:records() do
    assert.is_true(info.terminated)
    local r = {}
    for i, name in ipairs(results_module.COLUMNS) do r[name] = fields[i] end
    r.row = tonumber(r.row)
    list[#list + 1] = r
  end
  f:close()
  return list
end

-- coupon lines per row number, and the set of coupon ids
local function coupons_by_row(list)
  local by_row, ids, n = {}, {}, 0
  for _, r in ipairs(list) do
    if r.coupon_id ~= "" then
      by_row[r.row] = (by_row[r.row] or 0) + 1
      assert.is_nil(ids[r.coupon_id], "coupon " .. r.coupon_id .. " recorded twice")
      ids[r.coupon_id] = true
      n = n + 1
    end
  end
  return by_row, n
end

describe("wechatpay-grant", function()
  local server, dir, config
  local counter = 0

  setup(function()
    local seeded = {}
    for i = 1, 400 do
      local u = user(i)
      seeded[u.openid] = { name = u.name, id_card = u.id_card }
    end
    for _, u in ipairs(SPECIAL) do seeded[u.openid] = { name = u.name, id_card = u.id_card } end
    server = assert(mock.start{ users = seeded, rate_limit = false })
    local _, out = sh("mktemp -d")
    dir = out:gsub("%s+$", "")
    config = dir .. "/merchant.lua"
    write_file(config, ([[
return {
  mchid = %q,
  serial = %q,
  private_key = %q,
  certs = { [%q] = %q },
  base_url = %q,
  cafile = %q,
  timeout = 10,
}
]]):format(server.mchid, server.merchant_serial, "file://" .. server.merchant_key_file,
      server.platform_key_id, "file://" .. server.platform_public_key_file, server.base_url, server.cafile))
  end)

  teardown(function()
    if server then server:stop() end
    if dir then sh("rm -rf " .. quote(dir)) end
  end)

  before_each(function()
    server:reset()
    server:configure{ latency = 0 }
    counter = counter + 1
  end)

  -- A fresh input and results path for this test.
  local function files(content, name)
    local input = ("%s/%s%d.csv"):format(dir, name or "users", counter)
    write_file(input, content)
    return input, ("%s/results%d.csv"):format(dir, counter)
  end

  local function command(args)
    local parts = { LUA, "bin/wechatpay-grant" }
    for _, a in ipairs(args) do parts[#parts + 1] = quote(a) end
    return table.concat(parts, " ")
  end

  -- run{ args } -> exit code, stdout, stderr
  local function grant(args)
    local out, err = dir .. "/stdout", dir .. "/stderr"
    local rc = sh("{ " .. command(args) .. " >" .. quote(out) .. " 2>" .. quote(err) .. "; }")
    return rc, read_file(out) or "", read_file(err) or ""
  end

  local function standard(input, results_path, extra)
    -- The default --rate (1000/min, WeChat Pay's limit) would make the spec slow.
    local args = { "--config", config, "--stock", STOCK, "--appid", APPID, "--input", input, "--results", results_path,
                   "--rate", "100000" }
    for _, a in ipairs(extra or {}) do args[#args + 1] = a end
    return args
  end

  local function count(summary, what)
    return tonumber(summary:match("%f[%w]" .. what .. "%s+(%d+)"))
  end

  it("grants every row once, and a re-run grants nothing", function()
    local list = range(1, 60)
    local input, out = files(users_csv(list))
    local rc, stdout, stderr = grant(standard(input, out))
    assert.equal(0, rc, stdout .. stderr)
    assert.equal(60, count(stdout, "granted"))
    assert.equal(0, count(stdout, "failed"))
    assert.equal(60, server:stats().grants)
    assert.matches("progress: 60/60 100%%", stderr)

    local by_row, n = coupons_by_row(results(out))
    assert.equal(60, n)
    for i = 1, 60 do assert.equal(1, by_row[i]) end
    for i, r in ipairs(results(out)) do
      assert.equal(list[r.row].openid, r.openid, "row " .. i)
      assert.equal(batch.out_request_no(STOCK, r.openid, nil), r.out_request_no)
      local coupon = server:coupon(r.coupon_id)
      assert.equal(r.openid, coupon.openid)
      assert.equal(r.out_request_no, coupon.out_request_no)
    end
    -- no names or ID numbers in the results or the output
    local text = read_file(out) .. stdout .. stderr
    for _, u in ipairs(list) do
      assert.is_nil(text:find(u.name, 1, true))
      assert.is_nil(text:find(u.id_card, 1, true))
    end

    rc, stdout, stderr = grant(standard(input, out))
    assert.equal(0, rc, stdout .. stderr)
    assert.equal(0, count(stdout, "granted"))
    assert.equal(60, count(stdout, "skipped"))
    assert.equal(60, server:stats().grants)
    assert.equal(60, #results(out))
  end)

  it("resumes after kill -9 without granting any row twice", function()
    local list = range(1, 200)
    local input, out = files(users_csv(list))
    server:configure{ latency = 0.1 }
    local log = dir .. "/killed.log"
    -- popen's shell prints its pid, then becomes the tool: that pid is the tool's.
    local p = assert(io.popen("echo $$; exec " .. command(standard(input, out, { "--concurrency", "4" }))
      .. " >" .. quote(log) .. " 2>&1"))
    local pid = assert(tonumber(p:read("*l")))
    local deadline = socket.gettime() + 15
    repeat
      socket.sleep(0.05)
      local text = read_file(out) or ""
      local _, lines = text:gsub("\n", "")
    until lines > 25 or socket.gettime() > deadline
    sh("kill -9 " .. pid)
    p:close()
    local before = coupons_by_row(results(out))
    local recorded = 0
    for _ in pairs(before) do recorded = recorded + 1 end
    assert.is_true(recorded > 0 and recorded < 200, "killed mid-run (" .. recorded .. " rows recorded)")
    -- Calls in flight at the kill still land once their latency is over:
    -- granted, but not recorded. The re-run must get those same coupons back.
    socket.sleep(0.3)
    local granted_unrecorded = server:stats().grants - recorded
    assert.is_true(granted_unrecorded > 0, "no grant was in flight at the kill")

    server:configure{ latency = 0 }
    local rc, stdout, stderr = grant(standard(input, out))
    assert.equal(0, rc, stdout .. stderr)
    assert.equal(recorded, count(stdout, "skipped"))
    assert.equal(200, server:stats().grants)
    local by_row, n = coupons_by_row(results(out))
    assert.equal(200, n)
    for i = 1, 200 do assert.equal(1, by_row[i], "row " .. i) end
  end)

  it("stops on Ctrl-C with exit code 130 and resumes", function()
    local list = range(231, 330)
    local input, out = files(users_csv(list))
    server:configure{ latency = 0.1 }
    local log = dir .. "/interrupted.log"
    local p = assert(io.popen("sh -c " .. quote(command(standard(input, out, { "--concurrency", "4" }))
      .. " >" .. quote(log) .. " 2>&1 & echo $!; wait $!; echo rc=$?")))
    local pid = assert(tonumber(p:read("*l")))
    local deadline = socket.gettime() + 15
    repeat
      socket.sleep(0.05)
      local _, lines = (read_file(out) or ""):gsub("\n", "")
    until lines > 10 or socket.gettime() > deadline
    sh("kill -INT " .. pid)
    local rc = tonumber(p:read("*a"):match("rc=(%d+)"))
    p:close()
    local text = read_file(log)
    assert.equal(130, rc, text)
    assert.matches("interrupted; every finished row is in", text)
    local _, recorded = coupons_by_row(results(out))
    assert.is_true(recorded > 0 and recorded < 100)
    -- the calls the stop cancelled are not the rows' failures: the summary says what the file holds
    local failed_lines = 0
    for _, r in ipairs(results(out)) do if r.error_code ~= "" then failed_lines = failed_lines + 1 end end
    assert.equal(failed_lines, tonumber(text:match("failed%s+(%d+)")), text)

    server:configure{ latency = 0 }
    local stdout, stderr
    rc, stdout, stderr = grant(standard(input, out))
    assert.equal(0, rc, stdout .. read_file(out))
    assert.equal(100, server:stats().grants)
    local by_row, n = coupons_by_row(results(out))
    assert.equal(100, n)
    for i = 1, 100 do assert.equal(1, by_row[i], "row " .. i) end
  end)

  it("reports bad rows with their numbers and still grants the good ones", function()
    local good = range(201, 210)
    local rows = {
      ("%s,%s,%s"):format(good[1].openid, good[1].name, good[1].id_card),     -- 1
      ("%s,%s,"):format(good[2].openid, good[2].name),                         -- 2: no id number
      ("%s,%s,%s"):format(good[3].openid, ("名"):rep(100), good[3].id_card),  -- 3: 300-byte name
      ("o bad openid,%s,%s"):format(good[4].name, good[4].id_card),           -- 4: space in openid
      ("%s,%s,%s"):format(good[5].openid, good[5].name, good[5].id_card),     -- 5
      ("%s,%s,%s"):format(good[5].openid, good[5].name, good[5].id_card),     -- 6: duplicate of 5
      (",%s,%s"):format(good[6].name, good[6].id_card),                        -- 7: no openid
      ("%s,%s,%s"):format(good[7].openid, good[7].name, good[7].id_card),     -- 8
    }
    local input, out = files("openid,name,id_card_number\n" .. table.concat(rows, "\n") .. "\n")
    local rc, stdout, stderr = grant(standard(input, out))
    assert.equal(1, rc, stdout .. stderr)
    assert.equal(3, count(stdout, "granted"))
    assert.equal(5, count(stdout, "failed"))
    assert.equal(3, server:stats().grants)
    local by_row = {}
    for _, r in ipairs(results(out)) do by_row[r.row] = r end
    for _, i in ipairs{ 1, 5, 8 } do assert.matches("^8%d+$", by_row[i].coupon_id) end
    for _, i in ipairs{ 2, 3, 4, 7 } do
      assert.equal("", by_row[i].coupon_id)
      assert.equal("INVALID_ROW", by_row[i].error_code)
    end
    assert.equal("DUPLICATE_ROW", by_row[6].error_code)
    assert.matches("id_card_number", by_row[2].error_message)
    assert.matches("name cannot be encrypted", by_row[3].error_message)
    assert.matches("300 bytes", by_row[3].error_message)
    assert.equal("", by_row[4].openid)   -- not an openid's form: it could be a name
    assert.matches("openid", by_row[4].error_message)
    assert.matches("missing openid", by_row[7].error_message)
    local text = read_file(out)
    assert.is_nil(text:find("名名", 1, true))
    for _, u in ipairs(good) do
      assert.is_nil(text:find(u.name, 1, true))
      assert.is_nil(text:find(u.id_card, 1, true))
    end
  end)

  it("grants a user an amount once, whether the amount came from its column or from --amount", function()
    local list = range(221, 223)
    local function csv_text(amounts)
      local lines = { amounts and "openid,name,id_card_number,amount" or "openid,name,id_card_number" }
      for i, u in ipairs(list) do
        lines[#lines + 1] = table.concat({ u.openid, u.name, u.id_card, amounts and amounts[i] or nil }, ",")
      end
      return table.concat(lines, "\n") .. "\n"
    end
    -- the same user twice: once with 100 in the column, once empty under --amount 100
    local input, out = files(csv_text({ "100", "", "200" }) .. ("%s,%s,%s,\n"):format(list[1].openid,
      list[1].name, list[1].id_card))
    local rc, stdout, stderr = grant(standard(input, out, { "--amount", "100" }))
    assert.equal(1, rc, stdout .. stderr)
    assert.equal(3, count(stdout, "granted"))
    assert.equal(3, server:stats().grants)
    local by_row = {}
    for _, r in ipairs(results(out)) do by_row[r.row] = r end
    assert.equal("DUPLICATE_ROW", by_row[4].error_code)
    assert.equal(batch.out_request_no(STOCK, list[2].openid, "100"), by_row[2].out_request_no)
    -- the same users again from a file without the column, under --amount 100: the two
    -- granted 100 are skipped; the one granted 200 is not granted 100 unasked ...
    local again = files(csv_text(nil), "again")
    rc, stdout, stderr = grant(standard(again, out, { "--amount", "100" }))
    assert.equal(1, rc, stdout .. stderr)
    assert.equal(2, count(stdout, "skipped"))
    assert.equal(0, count(stdout, "granted"))
    assert.equal(3, server:stats().grants)
    assert.matches("1 to fix in " .. again, stdout, 1, true)
    local last = results(out)[#results(out)]
    assert.equal("GRANTED_BEFORE", last.error_code)
    assert.matches("already has coupon %d+ of this stock from an earlier run, at another amount", last.error_message)
    -- ... only with --another-amount
    rc, stdout, stderr = grant(standard(again, out, { "--amount", "100", "--another-amount" }))
    assert.equal(0, rc, stdout .. stderr)
    assert.equal(2, count(stdout, "skipped"))
    assert.equal(1, count(stdout, "granted"))
    assert.equal(4, server:stats().grants)
  end)

  it("a changed --amount on a re-run grants no user a second coupon", function()
    local list = range(226, 228)
    local input, out = files(users_csv(list))
    local rc, stdout, stderr = grant(standard(input, out, { "--amount", "100" }))
    assert.equal(0, rc, stdout .. stderr)
    local before = server:stats().grants
    rc, stdout, stderr = grant(standard(input, out, { "--amount", "200" }))
    assert.equal(1, rc, stdout .. stderr)
    assert.equal(0, count(stdout, "granted"))
    assert.equal(before, server:stats().grants)
    assert.matches("3 to fix in " .. input, stdout, 1, true)
    assert.is_nil(stdout:find("run again", 1, true), stdout)
  end)

  it("stops after five grants in a row refused as unauthorised: the configuration is wrong for every row", function()
    local list = range(231, 250)
    local input, out = files(users_csv(list))
    server:fault("status", { status = 401, code = "SIGN_ERROR", message = "signature mismatch", count = 100,
                             path = "/coupons$" })
    local requests = server:stats().requests
    local rc, stdout, stderr = grant(standard(input, out, { "--concurrency", "1" }))
    server:clear_faults()
    assert.equal(1, rc, stdout .. stderr)
    assert.matches("the last 5 grants were all refused with SIGN_ERROR %(HTTP 401%): check the merchant serial",
      stderr)
    -- five (and those already in flight at the fifth) of twenty were sent
    assert.is_true(server:stats().requests - requests < 10, tostring(server:stats().requests - requests))
  end)

  it("takes spaces around a name and ID number off, and a line of spaces for a blank one", function()
    local list = range(251, 252)
    local lines = { "openid,name,id_card_number", ("%s, %s ,%s \t"):format(list[1].openid, list[1].name,
      list[1].id_card), "  ,  , ", ("%s,%s,%s"):format(list[2].openid, list[2].name, list[2].id_card) }
    local input, out = files(table.concat(lines, "\n") .. "\n")
    local rc, stdout, stderr = grant(standard(input, out))
    assert.equal(0, rc, stdout .. stderr)
    assert.equal(2, count(stdout, "granted"))
  end)

  it("skips a row granted by a run that numbered --amount rows without their amount", function()
    local list = range(224, 225)
    local input, out = files(users_csv(list))
    -- what such a run wrote for the first user: its out_request_no without the amount
    write_file(out, table.concat(results_module.COLUMNS, ",") .. "\n"
      .. ("1,%s,%s,800000000001,,\n"):format(list[1].openid, batch.out_request_no(STOCK, list[1].openid, nil)))
    local rc, stdout, stderr = grant(standard(input, out, { "--amount", "100" }))
    assert.equal(0, rc, stdout .. stderr)
    assert.equal(1, count(stdout, "skipped"))
    assert.equal(1, count(stdout, "granted"))
    assert.equal(1, server:stats().grants)
  end)

  it("sends a row such a run sent without a recorded answer under the number it sent then", function()
    local list = range(228, 228)
    local input, out = files(users_csv(list))
    local legacy = batch.out_request_no(STOCK, list[1].openid, nil)
    write_file(out, table.concat(results_module.COLUMNS, ",") .. "\n"
      .. ("1,%s,%s,,TIMEOUT,timed out\n"):format(list[1].openid, legacy))
    local rc, stdout, stderr = grant(standard(input, out, { "--amount", "100" }))
    assert.equal(0, rc, stdout .. stderr)
    assert.equal(1, count(stdout, "granted"))
    local last = results(out)[2]
    assert.equal(legacy, last.out_request_no)
    assert.equal(legacy, server:coupon(last.coupon_id).out_request_no)
  end)

  it("writes no name or spaced ID number found in the openid column, and passes over rows of empty fields", function()
    local list = range(226, 227)
    local rows = { "openid,name,id_card_number",
      ("%s,%s,%s"):format(list[1].openid, list[1].name, list[1].id_card),
      ("Zhang San,%s,%s"):format(list[2].name, list[2].id_card),
      ('"110101 19900101 0015",%s,%s'):format(list[2].name, list[2].id_card),
      ",,", ",,", "" }
    local input, out = files(table.concat(rows, "\r\n"))
    local rc, stdout, stderr = grant(standard(input, out))
    assert.equal(1, rc, stdout .. stderr)
    assert.equal(1, count(stdout, "granted"))
    assert.equal(2, count(stdout, "failed"))
    assert.matches("3 rows in", stdout, 1, true)
    local text = read_file(out)
    for _, secret in ipairs{ "Zhang San", "110101 19900101 0015", "19900101" } do
      assert.is_nil(text:find(secret, 1, true), secret)
    end
    assert.equal(3, #results(out))
  end)

  it("retries the rows that failed on the next run", function()
    local list = range(211, 220)
    local input, out = files(users_csv(list))
    server:fault("status", { status = 403, code = "NO_AUTH", message = "not allowed today", count = 3,
                             path = "/coupons$" })
    local rc, stdout, stderr = grant(standard(input, out, { "--concurrency", "1" }))
    assert.equal(1, rc, stdout .. stderr)
    assert.equal(7, count(stdout, "granted"))
    assert.equal(3, count(stdout, "failed"))
    local failed = 0
    for _, r in ipairs(results(out)) do
      if r.error_code ~= "" then
        failed = failed + 1
        assert.equal("NO_AUTH", r.error_code)
        assert.matches("not allowed today", r.error_message)
      end
    end
    assert.equal(3, failed)

    rc, stdout, stderr = grant(standard(input, out))
    assert.equal(0, rc, stdout .. stderr)
    assert.equal(3, count(stdout, "granted"))
    assert.equal(7, count(stdout, "skipped"))
    assert.equal(10, server:stats().grants)
    local by_row, n = coupons_by_row(results(out))
    assert.equal(10, n)
    for i = 1, 10 do assert.equal(1, by_row[i]) end
  end)

  it("stops with exit code 2 before sending anything on a configuration error", function()
    local input, out = files(users_csv(range(221, 225)))
    local bad_config = dir .. "/bad_config.lua"
    write_file(bad_config, "return { mchid = '1900000001', serial = 'ABC', private_key = 'file:///nonexistent.pem', certs = {} }")
    local not_lua = dir .. "/not_lua.lua"
    write_file(not_lua, "this is not lua")
    local no_column = files("openid,name\nox,y\n", "no_column")
    local cases = {
      { "--config", dir .. "/missing.lua", "--stock", STOCK, "--appid", APPID, "--input", input, "--results", out },
      { "--config", config, "--appid", APPID, "--input", input, "--results", out },
      { "--config", config, "--stock", "", "--appid", APPID, "--input", input, "--results", out },
      { "--config", config, "--stock", STOCK, "--input", input, "--results", out },
      { "--config", bad_config, "--stock", STOCK, "--appid", APPID, "--input", input, "--results", out },
      { "--config", not_lua, "--stock", STOCK, "--appid", APPID, "--input", input, "--results", out },
      { "--config", config, "--stock", STOCK, "--appid", APPID, "--input", dir .. "/nope.csv", "--results", out },
      { "--config", config, "--stock", STOCK, "--appid", APPID, "--input", no_column, "--results", out },
      { "--config", config, "--stock", STOCK, "--appid", APPID, "--input", input, "--results", input },
      { "--config", config, "--stock", STOCK, "--appid", APPID, "--input", input, "--results", out,
        "--concurrency", "0" },
      { "--config", config, "--stock", STOCK, "--appid", APPID, "--input", input, "--results", out, "--bogus" },
    }
    local expect = { "cannot load %-%-config", "%-%-stock is required", "%-%-stock is required",
      "%-%-appid is required", "private_key", "cannot load %-%-config", "cannot read %-%-input",
      "lacks column id_card_number", "must not be the %-%-input", "%-%-concurrency", "unknown option" }
    for i, args in ipairs(cases) do
      local rc, stdout, stderr = grant(args)
      assert.equal(2, rc, "case " .. i .. ": " .. stdout .. stderr)
      assert.matches(expect[i], stderr)
      assert.matches("nothing was sent", stderr)
    end
    assert.equal(0, server:stats().requests)
    assert.is_nil(read_file(out))
  end)

  it("reads quoted fields, CRLF line ends, a BOM and columns in any order", function()
    local body = { "\239\187\191note,Name,id_card_number,OpenID" }
    local notes = { '"a note, with a comma"', '"two\r\nlines"', '"say ""hi"""' }
    for i, u in ipairs(SPECIAL) do
      body[#body + 1] = table.concat({ notes[i], csv.quote(u.name), u.id_card, '"' .. u.openid .. '"' }, ",")
    end
    local input, out = files(table.concat(body, "\r\n") .. "\r\n")
    local rc, stdout, stderr = grant(standard(input, out))
    assert.equal(0, rc, stdout .. stderr)
    assert.equal(3, count(stdout, "granted"))
    assert.equal(3, server:stats().grants)
    local list = results(out)
    for _, r in ipairs(list) do assert.equal(SPECIAL[r.row].openid, r.openid) end
  end)

  it("grants every row after one with a stray quote, and names its line", function()
    local list = range(101, 130)
    local lines = { "openid,name,id_card_number" }
    for i, u in ipairs(list) do
      local name = i == 3 and '"' .. u.name or u.name   -- a stray quote that is never closed
      lines[#lines + 1] = table.concat({ u.openid, name, u.id_card }, ",")
    end
    local input, out = files(table.concat(lines, "\n") .. "\n")
    local rc, stdout, stderr = grant(standard(input, out))
    assert.equal(1, rc, stdout .. stderr)
    assert.equal(29, count(stdout, "granted"))
    assert.equal(1, count(stdout, "failed"))
    assert.equal(29, server:stats().grants)
    local by_row = {}
    for _, r in ipairs(results(out)) do by_row[r.row] = r end
    for i = 1, 30 do
      if i == 3 then
        assert.equal("INVALID_ROW", by_row[i].error_code)
        assert.matches("line 4", by_row[i].error_message)
        assert.matches("quote", by_row[i].error_message)
      else
        assert.matches("^8%d+$", by_row[i].coupon_id, "row " .. i)
        assert.equal(list[i].openid, by_row[i].openid)
      end
    end
  end)

  it("stops before sending anything when the results file is damaged", function()
    local list = range(131, 140)
    local input, out = files(users_csv(list))
    local rc, stdout, stderr = grant(standard(input, out))
    assert.equal(0, rc, stdout .. stderr)
    local text = read_file(out)
    -- line 4 of the results file is replaced by something the tool never writes
    local damaged = text:gsub("^(.-\n.-\n.-\n)[^\n]*\n", '%1"garbage, with a stray quote\n')
    -- and the row whose line it was is granted again by nobody: it would be re-sent
    write_file(out, damaged)
    server:reset()
    rc, stdout, stderr = grant(standard(input, out))
    assert.equal(2, rc, stdout .. stderr)
    assert.matches("line 4", stderr)
    assert.matches("nothing was sent", stderr)
    assert.is_nil(stderr:find("garbage", 1, true))
    assert.equal(0, server:stats().requests)
    assert.equal(damaged, read_file(out))
  end)

  it("keeps a torn last line of the results file, and that line once a later run ended it", function()
    local list = range(141, 150)
    local input, out = files(users_csv(list))
    local rc, stdout, stderr = grant(standard(input, out))
    assert.equal(0, rc, stdout .. stderr)
    -- cut the last record in the middle of its coupon id, as kill -9 can
    local text = read_file(out)
    write_file(out, text:sub(1, #text - 4))
    rc, stdout, stderr = grant(standard(input, out))
    assert.equal(0, rc, stdout .. stderr)
    assert.matches("ignoring 1 incomplete line", stderr)
    assert.equal(1, count(stdout, "granted"))
    -- the torn line now sits inside the file, ended by the second run
    rc, stdout, stderr = grant(standard(input, out))
    assert.equal(0, rc, stdout .. stderr)
    assert.equal(10, count(stdout, "skipped"))
    assert.equal(10, server:stats().grants)
  end)

  it("refuses an ID number in the openid column without writing it anywhere", function()
    local list = range(151, 154)
    local rows = { "openid,name,id_card_number" }
    for i, u in ipairs(list) do
      if i == 2 then
        rows[#rows + 1] = table.concat({ u.id_card, u.name, u.openid }, ",")   -- columns swapped
      elseif i == 3 then
        rows[#rows + 1] = table.concat({ "11010519491231002X", u.name, u.id_card }, ",")
      else
        rows[#rows + 1] = table.concat({ u.openid, u.name, u.id_card }, ",")
      end
    end
    local input, out = files(table.concat(rows, "\n") .. "\n")
    local rc, stdout, stderr = grant(standard(input, out))
    assert.equal(1, rc, stdout .. stderr)
    assert.equal(2, count(stdout, "granted"))
    assert.equal(2, server:stats().grants)
    local by_row = {}
    for _, r in ipairs(results(out)) do by_row[r.row] = r end
    for _, i in ipairs{ 2, 3 } do
      assert.equal("INVALID_ROW", by_row[i].error_code)
      assert.matches("ID number", by_row[i].error_message)
    end
    local text = read_file(out) .. stdout .. stderr
    for _, id in ipairs{ list[2].id_card, "11010519491231002X", "11010519491231002" } do
      assert.is_nil(text:find(id, 1, true), id)
    end
  end)

  it("names the --config file and line of a syntax error without echoing the file", function()
    local input, out = files(users_csv(range(155, 156)))
    local cases = {
      { 'return {\n  mchid = "1900000001",\n  apiv3_key = "SECRETapiv3key0123456789abcdefgh,\n}\n', 3 },
      { 'return {\n  mchid = "1900000001"\n  apiv3_key = SECRETapiv3key0123456789abcdefgh,\n}\n', 3 },
      { 'local key = "SECRETapiv3key0123456789abcdefgh"\nreturn { apiv3_key = key + 1 }\n', 2 },
      { '-----BEGIN PRIVATE KEY-----\nSECRETMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n', "PEM" },
      -- a string constant called: Lua quotes it, and quotes inside it pair with Lua's own
      { 'local key = "x\'SECRETapiv3key0123\'y"\nreturn { apiv3_key = key() }\n', 2 },
      { 'return ("x\'SECRETapiv3key0123\'y")()\n', 1 },
      { 'return ("end\'SECRETapiv3key0123\'end")()\n', 1 },   -- its quoted pieces are Lua words
    }
    for i, case in ipairs(cases) do
      local path = ("%s/broken_config%d.lua"):format(dir, i)
      write_file(path, case[1])
      local rc, stdout, stderr = grant{ "--config", path, "--stock", STOCK, "--appid", APPID,
                                        "--input", input, "--results", out }
      assert.equal(2, rc, "case " .. i .. ": " .. stdout .. stderr)
      assert.matches(path:gsub("%p", "%%%0"), stderr)
      assert.matches(type(case[2]) == "number" and "line " .. case[2] or case[2], stderr, "case " .. i)
      assert.is_nil(stderr:find("SECRET", 1, true), "case " .. i .. ": " .. stderr)
      assert.is_nil(stdout:find("SECRET", 1, true))
    end
    assert.equal(0, server:stats().requests)
  end)

  it("explains an input file it cannot use, and sends nothing", function()
    local cases = {
      { "", "is empty" },
      { "\239\187\191\r\n\n", "is empty" },
      { "openid;name;id_card_number\nox;y;z\n", "comma" },
      { "\255\254o\0p\0e\0n\0", "UTF%-16" },
      { 'openid,"name,id_card_number\nox,y,z\n', "line 1" },
      { ("x"):rep(200000) .. "\nox,y,z\n", "line 1" },
    }
    for i, case in ipairs(cases) do
      local input, out = files(case[1], "bad_input")
      local rc, stdout, stderr = grant(standard(input, out))
      assert.equal(2, rc, "case " .. i .. ": " .. stdout .. stderr)
      assert.matches(case[2], stderr, "case " .. i)
      assert.matches("nothing was sent", stderr)
      assert.is_true(#stderr < 1000, "case " .. i)
      assert.is_nil(read_file(out))
    end
    assert.equal(0, server:stats().requests)
  end)

  it("reports a line too long to be a row, and grants the rows after it", function()
    local list = range(157, 160)
    local rows = { "openid,name,id_card_number" }
    for i, u in ipairs(list) do
      local name = i == 2 and ("名"):rep(100000) or u.name
      rows[#rows + 1] = table.concat({ u.openid, name, u.id_card }, ",")
    end
    local input, out = files(table.concat(rows, "\n") .. "\n")
    local rc, stdout, stderr = grant(standard(input, out))
    assert.equal(1, rc, stdout .. stderr)
    assert.equal(3, count(stdout, "granted"))
    local by_row = {}
    for _, r in ipairs(results(out)) do by_row[r.row] = r end
    assert.equal("INVALID_ROW", by_row[2].error_code)
    assert.matches("line 3", by_row[2].error_message)
    assert.matches("longer than", by_row[2].error_message)
    for _, i in ipairs{ 1, 3, 4 } do assert.matches("^8%d+$", by_row[i].coupon_id) end
  end)
end)

describe("wechatpay.grant.csv", function()
  local function records(text)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(text)
    f:close()
    f = assert(io.open(path, "rb"))
    local list = {}
    for fields, info in csv.reader(f):records() do list[#list + 1] = { fields = fields, info = info } end
    f:close()
    os.remove(path)
    return list
  end

  it("parses RFC 4180 quoting, CRLF, a BOM and blank lines", function()
    local list = records('\239\187\191a,b,c\r\n"x, y","say ""hi""","two\r\nlines"\r\n\r\n张三,,\n')
    assert.equal(3, #list)
    assert.same({ "a", "b", "c" }, list[1].fields)
    assert.same({ "x, y", 'say "hi"', "two\r\nlines" }, list[2].fields)
    assert.equal(2, list[2].info.line)
    assert.same({ "张三", "", "" }, list[3].fields)
    assert.equal(5, list[3].info.line)
    assert.is_true(list[3].info.terminated)
  end)

  it("flags a torn last record and broken quoting", function()
    local list = records('a,b\n1,"2"x\n3,4')
    assert.equal("text after the closing quote of field 2", list[2].info.malformed)
    assert.is_false(list[3].info.terminated)
    list = records('a\n"never closed\n')
    assert.matches("not closed", list[2].info.malformed)
  end)

  it("reads 40,000 rows with one stray quote as one bad row and the rest, in linear work", function()
    local rows = { "openid,name,id_card_number" }
    for i = 1, 40000 do
      rows[#rows + 1] = ("oUser%d,%s用户%d,1101011990%08d"):format(i, i == 2 and '"' or "", i, i)
    end
    local text = table.concat(rows, "\n") .. "\n"
    -- Count the string functions the reader calls, and stop it once it does
    -- more than a linear amount of work (the quadratic reader re-parsed every
    -- line already read each time it read one more).
    local calls, limit = 0, 60 * 40001
    local saved = {}
    for _, name in ipairs{ "find", "sub", "byte", "match", "gsub", "gmatch" } do
      local real = string[name]
      saved[name] = real
      string[name] = function(...)
        calls = calls + 1
        if calls > limit then
          for k, v in pairs(saved) do string[k] = v end
          error("the reader did more than linear work", 0)
        end
        return real(...)
      end
    end
    local ok, list = pcall(records, text)
    for k, v in pairs(saved) do string[k] = v end
    assert(ok, list)
    assert.equal(40001, #list)
    assert.is_nil(list[1].info.malformed)
    assert.equal(3, list[3].info.line)
    assert.matches("not closed", list[3].info.malformed)
    for i = 2, 40001 do
      if i ~= 3 then
        local r = list[i]
        assert.is_nil(r.info.malformed, "record " .. i)
        assert.equal(i, r.info.line)
        assert.equal(3, #r.fields)
        assert.equal("oUser" .. (i - 1), r.fields[1])
      end
    end
  end)

  it("bounds how far a quoted field runs, and how long a line is", function()
    local list = records('a,b\n1,"open\n2,x\n3,"two\nlines"\n4,' .. ("y"):rep(100000) .. '\n5,z\n6,"never closed')
    local fields = {}
    for i, r in ipairs(list) do fields[i] = r.fields[1] or "(none)" end
    -- the long line is not kept, not even its first field
    assert.same({ "a", "1", "2", "3", "(none)", "5", "6" }, fields)
    assert.matches("not closed", list[2].info.malformed)
    assert.equal(2, list[2].info.line)
    assert.same({ "2", "x" }, list[3].fields)
    assert.same({ "3", "two\nlines" }, list[4].fields)
    assert.is_nil(list[4].info.malformed)
    assert.equal(6, list[5].info.line)
    assert.matches("longer than", list[5].info.malformed)
    assert.equal(7, list[6].info.line)
    assert.same({ "5", "z" }, list[6].fields)
    assert.matches("not closed", list[7].info.malformed)
    assert.is_false(list[7].info.terminated)
  end)

  it("writes what it reads", function()
    local fields = { "plain", "with,comma", 'with "quotes"', "line\nbreak", " padded ", "" }
    local list = records(csv.format(fields))
    assert.same(fields, list[1].fields)
  end)
end)

describe("wechatpay.grant.batch.out_request_no", function()
  it("is deterministic, in WeChat Pay's alphabet, and depends on stock, openid and amount", function()
    local a = batch.out_request_no("9856000", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", nil)
    assert.equal(a, batch.out_request_no("9856000", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", nil))
    assert.matches("^[%w|_*%-]+$", a)
    assert.is_true(#a <= 128)
    assert.are_not.equal(a, batch.out_request_no("9856001", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", nil))
    assert.are_not.equal(a, batch.out_request_no("9856000", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6O", nil))
    assert.are_not.equal(a, batch.out_request_no("9856000", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "100"))
    -- fields are separated: ("98560001", "x") is not ("9856000", "1x")
    assert.are_not.equal(batch.out_request_no("98560001", "x"), batch.out_request_no("9856000", "1x"))
  end)
end)

describe("wechatpay.grant.batch.run", function()
  local promise = require("wechatpay.promise")
  local errors = require("wechatpay.errors")

  -- A client that answers at once: respond(openid) -> coupon_id | nil, err
  local function instant_client(respond)
    local client = { dispatcher = { step = function() return false end } }
    function client.encrypt(_, text) return "sealed" .. #text, "PUB_KEY_ID_TEST" end
    local coupons = {}
    function coupons.postAsync(_, request)
      local coupon_id, err = respond(request.openid)
      if not coupon_id then return promise.rejected(err) end
      return promise.resolved({ json = function() return { coupon_id = coupon_id } end })
    end
    client.v3 = { multiuse = { users = { _openid_ = { coupons = coupons } } } }
    return client
  end

  local function run(text, respond)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(text)
    f:close()
    f = assert(io.open(path, "rb"))
    local reader = csv.reader(f)
    local columns = assert(batch.columns(reader:next()))
    local written = {}
    local writer = { write = function(_, r) written[#written + 1] = r; return true end }
    local summary, err, partial = batch.run{ client = instant_client(respond), stock_id = "9856000",
      appid = "wx233544546545989", amount = 100, reader = reader, columns = columns,
      results = writer, granted = {}, window = 8 }
    f:close()
    os.remove(path)
    return summary, err, partial, written
  end

  it("grants every one of 40,000 rows after a stray quote on the second", function()
    local rows = { "openid,name,id_card_number" }
    for i = 1, 40000 do
      rows[#rows + 1] = ("oUser%d,%s用户%d,1101011990%08d"):format(i, i == 2 and '"' or "", i, i)
    end
    local n = 0
    local summary, err, _, written = run(table.concat(rows, "\n") .. "\n", function()
      n = n + 1
      return tostring(n)
    end)
    assert.is_nil(err)
    assert.equal(40000, summary.rows)
    assert.equal(39999, summary.granted)
    assert.equal(1, summary.failed)
    assert.equal(40000, #written)
    for _, r in ipairs(written) do
      if r.row == 2 then
        assert.equal("INVALID_ROW", r.error_code)
        assert.matches("line 3", r.error_message)
      else
        assert.equal("oUser" .. r.row, r.openid)
      end
    end
  end)

  it("stops on an interrupted call without recording it as a failure", function()
    local rows = { "openid,name,id_card_number" }
    for i = 1, 5 do rows[#rows + 1] = ("oUser%d,用户%d,1101011990%08d"):format(i, i, i) end
    local summary, err, partial, written = run(table.concat(rows, "\n") .. "\n", function(openid)
      if openid == "oUser3" then return nil, errors.new("interrupted", "interrupted by the user") end
      return "9" .. openid:sub(6)
    end)
    assert.is_nil(summary)
    assert.is_true(errors.is_interrupt(err))
    assert.equal(2, partial.granted)
    assert.equal(0, partial.failed)
    assert.equal(2, #written)
  end)
end)

describe("wechatpay.grant.results.load", function()
  local HEADER = "row,openid,out_request_no,coupon_id,error_code,error_message\n"
  local function line(row, coupon)
    return ("%d,oUser%d,%s,%s,,\n"):format(row, row, batch.out_request_no("9856000", "oUser" .. row), coupon)
  end
  local function load(text)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(text)
    f:close()
    local state, err = results_module.load(path)
    os.remove(path)
    return state, err
  end

  it("ignores a torn last line, and such a line ended by a later run", function()
    local state = assert(load(HEADER .. line(1, "81") .. line(2, "82"):sub(1, 20)))
    assert.equal(1, state.lines)
    assert.equal(1, state.ignored)
    assert.is_true(state.needs_newline)
    state = assert(load(HEADER .. line(1, "81") .. line(2, "82"):sub(1, 20) .. "\n" .. line(3, "83")))
    assert.equal(2, state.lines)
    assert.equal(1, state.ignored)
    assert.equal("83", state.granted[batch.out_request_no("9856000", "oUser3")])
  end)

  it("refuses a damaged file, naming the line and not its text", function()
    for _, damage in ipairs{ '"a stray quote, then more\n', "hello world\n", HEADER,
                             "3,oUser3,NOT-A-REQUEST-NO,83,,\n", ("9"):rep(100000) .. "\n" } do
      local state, err = load(HEADER .. line(1, "81") .. damage .. line(4, "84") .. line(5, "85"))
      assert.is_nil(state)
      assert.matches("line 3", err)
      assert.is_nil(err:find("stray", 1, true))
      assert.is_nil(err:find("hello", 1, true))
      assert.is_nil(err:find("NOT-A", 1, true))
      assert.is_true(#err < 400)
    end
  end)
end)
