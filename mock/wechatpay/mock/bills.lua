-- Bills on disk (launcher and worker side): the CSV in WeChat Pay's trade
-- bill format (every value after a backquote), its gzip made by the `gzip`
-- command and its hashes by `sha1sum` / `sha256sum`, never by the client's
-- code.  A bill is made once, at server:bill() or at the first request that
-- names it, under <mock dir>/bills/<name>.csv(.gz) with <name>.json beside.
local cjson = require("cjson.safe")
local util = require("wechatpay.mock.util")

local bills = {}

local HEADER = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,"
  .. "付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,"
  .. "退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
local FOOTER = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"

local DEFAULT_ROWS = 3

--- A bill's name is what its token carries: letters, digits, "-" and "_".
function bills.valid_name(name)
  return type(name) == "string" and name:match("^[%w_%-]+$") ~= nil and #name <= 96
end

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- The status is read from the output: pclose's answer differs between
-- Lua 5.1 and 5.4, and nginx reaps its children itself.
local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"__rc=$?\""))
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  return rc == 0, (out:gsub("__rc=%d+%s*$", ""))
end

local function digest_of(command, path)
  local ok, out = run(command .. " " .. shell_quote(path))
  local hex = ok and out:match("^(%x+)")
  if not hex then error("wechatpay.mock: " .. command .. " failed: " .. tostring(out)) end
  return hex
end

local function size_of(path)
  local f = assert(io.open(path, "rb"))
  local size = f:seek("end")
  f:close()
  return size
end

local function write_csv(path, mchid, rows)
  local f = assert(io.open(path, "wb"))
  f:write(HEADER, "\r\n")
  local batch, total = {}, 0
  for i = 1, rows do
    local cents = 100 + i % 9900
    total = total + cents
    batch[#batch + 1] = ("`2026-11-26 %02d:%02d:%02d,`wx8888888888888888,`%s,`0,`,`42000000002026112%09d,"
      .. "`order-%d,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`JSAPI,`SUCCESS,`CMB_DEBIT,`CNY,`%d.%02d,`0.00,`0,`0,`0.00,"
      .. "`0.00,`,`,`mock goods,`,`0.01000,`0.60%%,`%d.%02d,`0.00,`\r\n")
      :format(i % 24, i % 60, (i * 7) % 60, mchid, i, i, math.floor(cents / 100), cents % 100, math.floor(cents / 100), cents % 100)
    if #batch == 1000 then f:write(table.concat(batch)) batch = {} end
  end
  f:write(table.concat(batch))
  f:write(FOOTER, "\r\n")
  f:write(("`%d,`%d.%02d,`0.00,`0.00,`0.00,`%d.%02d,`0.00\r\n")
    :format(rows, math.floor(total / 100), total % 100, math.floor(total / 100), total % 100))
  assert(f:close())
end

--- generate(dir, name, { rows =, hash_type = "SHA1" | "SHA256", mchid = }) -> meta
-- meta = { name, rows, size, gzip_size, sha1, sha256, hash_type }
function bills.generate(dir, name, opts)
  opts = opts or {}
  assert(bills.valid_name(name), "bill name must be letters, digits, - and _")
  local folder = dir .. "/bills"
  run("mkdir -p " .. shell_quote(folder))
  local csv = folder .. "/" .. name .. ".csv"
  local rows = opts.rows or DEFAULT_ROWS
  write_csv(csv, opts.mchid or "1900000001", rows)
  local ok, out = run("gzip -1 -n -c " .. shell_quote(csv) .. " > " .. shell_quote(csv .. ".gz"))
  if not ok then error("wechatpay.mock: gzip failed: " .. tostring(out)) end
  local meta = {
    name = name, rows = rows,
    size = size_of(csv),
    gzip_size = size_of(csv .. ".gz"),
    sha1 = digest_of("sha1sum", csv),
    sha256 = digest_of("sha256sum", csv),
    hash_type = opts.hash_type or "SHA1",
  }
  assert(util.write_file(folder .. "/" .. name .. ".json", cjson.encode(meta)))
  return meta
end

--- meta(dir, name) -> meta | nil
function bills.meta(dir, name)
  local text = util.read_file(dir .. "/bills/" .. name .. ".json")
  return text and cjson.decode(text) or nil
end

--- file(dir, name, gzip) -> path of the CSV or its gzip
function bills.file(dir, name, gzip)
  return dir .. "/bills/" .. name .. (gzip and ".csv.gz" or ".csv")
end

-- ---- serving (worker side) -------------------------------------------------

local PIECE = 64 * 1024

-- Sends up to `count` bytes of the file from Lua, flushing as it goes.
local function send_bytes(path, count)
  local f = assert(io.open(path, "rb"))
  local left = count
  while left > 0 do
    local piece = f:read(math.min(PIECE, left))
    if not piece then break end
    ngx.print(piece)
    ngx.flush(true)
    left = left - #piece
  end
  f:close()
end

--- send(path, fault): the file, unsigned.  Without a fault nginx's static
-- file handler sends it (internal location /_bills/); a fault sends it
-- from here: reset (half, then the connection closed), truncate
-- (Content-Length opts.missing bytes longer than what is sent, then
-- closed), cut (only opts.keep of it, default half, as a complete answer),
-- chunked (all of it, in chunked encoding rather than with a Content-Length).
function bills.send(path, fault)
  local size = assert(io.open(path, "rb"))
  local total = size:seek("end")
  size:close()
  local name = fault and fault.name
  ngx.header["Content-Type"] = "application/octet-stream"
  if name == "reset" or name == "truncate" then
    ngx.status = 200
    ngx.header["Content-Length"] = total + (name == "truncate" and (fault.opts.missing or 16) or 0)
    ngx.send_headers()
    send_bytes(path, name == "reset" and math.floor(total / 2) or total)
    return ngx.exit(444)   -- closes the connection with nothing more
  elseif name == "chunked" then   -- not a fault: the whole file, in chunked encoding
    ngx.status = 200
    send_bytes(path, total)
    return ngx.exit(ngx.HTTP_OK)
  elseif name == "cut" then
    local keep = math.floor(total * (fault.opts.keep or 0.5))
    ngx.status = 200
    ngx.header["Content-Length"] = keep
    send_bytes(path, keep)
    return ngx.exit(ngx.HTTP_OK)
  end
  return ngx.exec("/_bills/" .. path:match("([^/]+)$"))
end

return bills
