--- wechatpay-grant: the command line. main(argv) -> exit code.
--   0  every row granted (now or by an earlier run)
--   1  some rows failed (see the results file; run again to retry them)
--   2  configuration error: nothing was sent
local csv = require("wechatpay.grant.csv")
local batch = require("wechatpay.grant.batch")
local results = require("wechatpay.grant.results")
local progress = require("wechatpay.grant.progress")
local errors = require("wechatpay.errors")
local shared_config = require("wechatpay.cli.config")

local cli = {}

cli.USAGE = [[
usage: wechatpay-grant --config FILE | --mock
                       --stock STOCK_ID --appid APPID --input USERS.csv --results RESULTS.csv
                       [--concurrency 8] [--rate 1000] [--amount FEN] [--another-amount]
                       [--progress auto|bar|lines|off]

Grants a consumption-gold (消费金) stock to every user of a CSV file
(POST /v3/multiuse/users/{openid}/coupons), with names and ID numbers
RSA-OAEP encrypted for WeChat Pay.

  --config FILE     a Lua file returning the wechatpay.new options, e.g.
                      return {
                        mchid = "1900000001",
                        serial = "<merchant API certificate serial>",
                        private_key = "file:///path/apiclient_key.pem",
                        certs = { ["PUB_KEY_ID_..."] = "file:///path/pub_key.pem" },
                        -- base_url =, cafile =, timeout =, proxy = (optional)
                      }
                    It runs as Lua, so secrets may come from os.getenv(...).
                    The same file serves `wechatpay call` and `wechatpay doctor`.
                    max_concurrency, rate_limit and retry are set from the flags below.
  --mock            start the built-in mock WeChat Pay instead (users seeded from
                    the CSV, its rate limit set to --rate); for demos and tests
  --stock ID        the stock (batch) id to grant
  --appid APPID     the appid the openids belong to
  --input FILE      CSV with a header: openid,name,id_card_number[,amount]
                    (RFC 4180 quoting, UTF-8, LF or CRLF, a BOM allowed;
                    amount in fen, only for stocks without a fixed amount)
  --results FILE    CSV appended as rows finish:
                    row,openid,out_request_no,coupon_id,error_code,error_message
                    (row 1 = the first record after the header; no names or ID numbers)
  --concurrency N   requests in flight at once (default 8)
  --rate N          grants per minute at most (default 1000, WeChat Pay's limit)
  --amount FEN      amount for rows without one in the CSV
  --another-amount  grant a user this stock again at an amount other than the one an
                    earlier run granted (without it such a row is GRANTED_BEFORE)
  --progress MODE   auto (a bar on a terminal, plain lines otherwise), bar, lines, off

Resuming: each row's out_request_no is derived from the stock id, the openid
and the amount granted (the row's, or --amount), so WeChat Pay treats a
repeated request as the first grant. Run the same command again after a failure or an interruption
(Ctrl-C, kill -9): rows with a coupon_id in the results file are skipped, the
others are sent again, and none can be granted twice. Keep one results file
per stock. A row repeating an earlier row's openid and amount is reported as
DUPLICATE_ROW and not sent; a user an earlier run granted this stock at
another amount (a changed --amount or amount cell) as GRANTED_BEFORE, unless
--another-amount; invalid rows as INVALID_ROW. None of these stops the batch,
and a re-run cannot mend them: fix the input. Five grants in a row refused
as unauthorised (HTTP 401/403) stop it: the configuration is wrong for every
row. Spaces around a name or ID number are not part of it; records of empty
fields only (",,") are blank lines.

Exit status: 0 every row granted (now or earlier), 1 some rows failed,
2 configuration error (nothing was sent), 130 interrupted.
]]

local DEFAULTS = { concurrency = 8, rate = 1000, progress = "auto" }
local VALUED = { config = true, stock = true, appid = true, input = true, results = true,
                 concurrency = true, rate = true, amount = true, progress = true }
local FLAGS = { mock = true, help = true, ["another-amount"] = true }

local ConfigError = {}
-- The mock started by --mock, stopped however the run ends.
local mock_server

local function config_error(fmt, ...)
  error(setmetatable({ message = select("#", ...) > 0 and fmt:format(...) or fmt }, ConfigError), 0)
end

--- parse(argv) -> options (raises a config error)
function cli.parse(argv)
  local opts, i = {}, 1
  while i <= #argv do
    local a = argv[i]
    local name, value = a:match("^%-%-([%w%-]+)=(.*)$")
    if not name then name = a:match("^%-%-([%w%-]+)$") end
    if a == "-h" then name = "help" end
    if not name then config_error("unexpected argument %q", a) end
    if FLAGS[name] then
      if value then config_error("--%s takes no value", name) end
      opts[name] = true
    elseif VALUED[name] then
      if not value then
        i = i + 1
        value = argv[i]
        if value == nil then config_error("--%s needs a value", name) end
      end
      opts[name] = value
    else
      config_error("unknown option --%s", name)
    end
    i = i + 1
  end
  if opts.help then return opts end
  for k, v in pairs(DEFAULTS) do
    if opts[k] == nil then opts[k] = v end
  end

  if opts.config and opts.mock then config_error("give --config or --mock, not both") end
  if not opts.config and not opts.mock then config_error("--config FILE is required (or --mock for a demo)") end
  if not opts.stock or opts.stock == "" then config_error("--stock is required: the stock id to grant") end
  if not batch.is_id(opts.stock, 20) then
    config_error("--stock %q is not a stock id (at most 20 letters and digits)", opts.stock)
  end
  if not opts.appid or opts.appid == "" then config_error("--appid is required: the appid of the openids") end
  if not batch.is_id(opts.appid, 32) then
    config_error("--appid %q is not an appid", opts.appid)
  end
  if not opts.input or opts.input == "" then config_error("--input is required: the CSV of users") end
  if not opts.results or opts.results == "" then config_error("--results is required: the CSV of results") end

  local function integer(name, min, max)
    local n = tonumber(opts[name])
    if not n or n % 1 ~= 0 or n < min or n > max then
      config_error("--%s must be a whole number from %d to %.0f, got %q", name, min, max, tostring(opts[name]))
    end
    return n
  end
  opts.concurrency = integer("concurrency", 1, 256)
  opts.rate = integer("rate", 1, 1e9)
  if opts.amount ~= nil then opts.amount = integer("amount", 1, 1e12) end
  if not ({ auto = true, bar = true, lines = true, off = true })[opts.progress] then
    config_error("--progress must be auto, bar, lines or off")
  end
  return opts
end

-- The same file under two names would have its input overwritten.
local function same_file(a, b)
  if a == b then return true end
  local function identity(path)
    local p = io.popen("stat -L -c '%d:%i' '" .. path:gsub("'", "'\\''") .. "' 2>/dev/null")
    if not p then return nil end
    local out = p:read("*a")
    p:close()
    return out:match("^(%d+:%d+)")
  end
  local ia = identity(a)
  return ia ~= nil and ia == identity(b)
end

--- scan(path, want_users) -> columns, record count, users (for --mock) (raises a config error)
local function scan(path, want_users)
  local f, err = io.open(path, "rb")
  if not f then config_error("cannot read --input: %s", err) end
  local probe, rerr = f:read(1)
  if not probe and rerr then
    f:close()
    config_error("cannot read --input %s: %s", path, rerr)
  end
  f:seek("set", 0)
  local head = f:read(2) or ""
  if head == "\255\254" or head == "\254\255" then
    f:close()
    config_error("--input %s is UTF-16 text (Excel's \"Unicode text\"): save it as \"CSV UTF-8\"", path)
  end
  f:seek("set", 0)
  local reader = csv.reader(f)
  local hok, header, hinfo = pcall(reader.next, reader)
  if not hok then
    f:close()
    config_error("cannot read --input %s: %s", path, tostring(header))
  end
  if not header then
    f:close()
    config_error("--input %s is empty: it needs a header line openid,name,id_card_number[,amount]", path)
  end
  if hinfo.malformed then
    f:close()
    config_error("--input %s: the header, line %d, is broken CSV: %s", path, hinfo.line, hinfo.malformed)
  end
  local columns, cerr = batch.columns(header)
  if not columns then
    f:close()
    if #header == 1 and (header[1]:find(";", 1, true) or header[1]:find("\t", 1, true)) then
      cerr = "the header line has no commas: the file must be comma-separated, not by ; or tabs"
    end
    config_error("--input %s: %s", path, cerr)
  end
  local count, users = 0, want_users and {} or nil
  while true do
    local ok, fields, info = pcall(reader.next, reader)
    if not ok then
      f:close()
      config_error("cannot read --input %s: %s", path, tostring(fields))
    end
    if not fields then break end
    if not batch.is_blank(fields, info) then count = count + 1 end
    if users then
      local openid, name, id = fields[columns.openid], fields[columns.name], fields[columns.id_card_number]
      if openid and openid ~= "" and name and id then users[openid] = { name = name, id_card = id } end
    end
  end
  f:close()
  return columns, count, users
end

-- The tool's settings over the configured ones: every grant carries an
-- out_request_no, so timeouts, 429 and 5xx can be retried safely.
local function client_options(options, opts)
  options.max_concurrency = opts.concurrency
  options.rate_limit = opts.rate
  local retry = {}
  if type(options.retry) == "table" then
    for k, v in pairs(options.retry) do retry[k] = v end
  end
  if retry.attempts == nil then retry.attempts = 5 end
  if retry.idempotent == nil then retry.idempotent = true end
  options.retry = retry
  return options
end

local function make_client(opts, users)
  local wechatpay = require("wechatpay")
  if opts.mock then
    local ok, mock = pcall(require, "wechatpay.mock")
    if not ok then config_error("--mock needs the mock's dependencies: %s", tostring(mock)) end
    local server, err = mock.start{ users = users, rate_limit = opts.rate }
    if not server then config_error("cannot start the mock WeChat Pay: %s", tostring(err)) end
    mock_server = server
    local cok, client = pcall(server.client, server, client_options({}, opts))
    if not cok then
      server:stop()
      config_error("mock client: %s", tostring(client))
    end
    return client, server
  end
  local profile, perr = shared_config.load(opts.config)
  if not profile then config_error("%s", perr) end
  local options = client_options(shared_config.client_options(profile), opts)
  local ok, client = pcall(wechatpay.new, options)
  if not ok then config_error("--config %s: %s", opts.config, tostring(client)) end
  return client
end

-- What the failures ask of the user: a re-run for those that may pass
-- then, fixing the input for the rest.
local function failed_note(s, opts)
  if s.failed == 0 then return "" end
  local retry = s.failed - s.invalid
  local parts = {}
  if retry > 0 then parts[#parts + 1] = ("%d to retry: run again"):format(retry) end
  if s.invalid > 0 then
    parts[#parts + 1] = ("%d to fix in %s (invalid, duplicate, or granted before at another amount)")
      :format(s.invalid, opts.input)
  end
  return (" (%s; details in %s)"):format(table.concat(parts, "; "), opts.results)
end

local function summary_text(s, opts, elapsed, total)
  local sent_rate = elapsed > 0 and (s.sent / elapsed) or 0
  local read = s.rows < total and ("%d of %d rows read from %s"):format(s.rows, total, opts.input)
    or ("%d row%s in %s"):format(total, total == 1 and "" or "s", opts.input)
  local lines = {
    ("wechatpay-grant: stock %s, %s"):format(opts.stock, read),
    ("  granted  %d"):format(s.granted),
    ("  skipped  %d (already granted in %s)"):format(s.skipped, opts.results),
    ("  failed   %d%s"):format(s.failed, failed_note(s, opts)),
    ("  elapsed  %.1f s, %.1f requests/s"):format(elapsed, sent_rate),
  }
  return table.concat(lines, "\n") .. "\n"
end

local function run(argv)
  local opts = cli.parse(argv)
  if opts.help then
    io.stdout:write(cli.USAGE)
    return 0
  end
  if same_file(opts.input, opts.results) then config_error("--results must not be the --input file") end
  local columns, total, users = scan(opts.input, opts.mock)
  local previous, rerr = results.load(opts.results)
  if not previous then config_error("%s", rerr) end

  local client, server = make_client(opts, users)
  local core = require("wechatpay.core")
  local started = core.monotonic()
  local writer, werr = results.open(opts.results, previous)
  if not writer then
    if server then server:stop() end
    config_error("%s", werr)
  end
  if server then
    local n = 0
    for _ in pairs(users) do n = n + 1 end
    io.stderr:write(("mock WeChat Pay at %s, %d users seeded from %s, rate limit %d/min\n")
      :format(server.base_url, n, opts.input, opts.rate))
  end
  if previous.ignored > 0 then
    io.stderr:write(("%s: ignoring %d incomplete line%s left by an interrupted run\n")
      :format(opts.results, previous.ignored, previous.ignored == 1 and "" or "s"))
  end

  local mode = opts.progress
  if mode == "auto" then mode = progress.is_terminal(2) and "bar" or "lines" end
  local meter = progress.new{ total = total, mode = mode }
  local f = assert(io.open(opts.input, "rb"))
  local reader = csv.reader(f)
  reader:next()  -- the header, checked by scan
  local summary, err, partial = batch.run{
    client = client, stock_id = opts.stock, appid = opts.appid, amount = opts.amount,
    reader = reader, columns = columns, results = writer, granted = previous.granted, failed = previous.failed,
    coupon_of = previous.coupon_of, another_amount = opts["another-amount"],
    window = opts.concurrency * 4, progress = meter,
  }
  f:close()
  -- the client first: the calls it cancels settle while the results file
  -- is still open (they are not the rows' failures, and are not written)
  client:close()
  writer:close()
  meter:finish()
  if server then server:stop() end
  local elapsed = core.monotonic() - started
  if not summary then
    io.stdout:write(summary_text(partial, opts, elapsed, total))
    if errors.is_interrupt(err) then
      io.stderr:write(("wechatpay-grant: interrupted; every finished row is in %s: run the same command again to resume\n")
        :format(opts.results))
      return 130
    end
    io.stderr:write("wechatpay-grant: stopped: ", results.mask_ids(tostring(err)), "\n")
    return 1
  end
  io.stdout:write(summary_text(summary, opts, elapsed, total))
  return summary.failed > 0 and 1 or 0
end

--- main(argv) -> exit code
function cli.main(argv)
  local ok, code = xpcall(run, function(e)
    if getmetatable(e) == ConfigError then return e end
    if errors.is_interrupt(e) then return { interrupted = true } end
    return debug.traceback(tostring(e), 2)
  end, argv)
  io.stdout:flush()
  if mock_server then
    mock_server:stop()
    mock_server = nil
  end
  if ok then return code end
  if getmetatable(code) == ConfigError then
    io.stderr:write("wechatpay-grant: ", code.message, "\n(nothing was sent; see --help)\n")
    return 2
  end
  if type(code) == "table" and code.interrupted then
    io.stderr:write("wechatpay-grant: interrupted; run the same command again to resume\n")
    return 130
  end
  io.stderr:write("wechatpay-grant: internal error: ", results.mask_ids(tostring(code)), "\n")
  return 1
end

return cli
