--- Granting a stock to the rows of a CSV, streamed: rows are read, checked,
-- encrypted and sent one at a time, with at most `window` grants in flight.
-- What grows with the file is only what guards against a second grant: the
-- numbers of this run's rows and of the earlier runs' grants.
--
--   batch.out_request_no(stock_id, openid, amount_text) -> "GRANT-<40 hex>"
--   batch.columns(header) -> { openid =, name =, id_card_number =, amount = } | nil, err
--   batch.run{ client =, stock_id =, appid =, amount =, reader =, columns =,
--              results = writer, granted = { [out_request_no] = coupon_id },
--              failed = { [out_request_no] = true },   -- sent earlier, no coupon recorded
--              coupon_of = { [openid] = coupon_id },   -- granted by earlier runs, any amount
--              another_amount = false,   -- true: such an openid may get this stock again
--              window =, progress = } -> summary | nil, err, partial summary
local hash = require("wechatpay.hash")
local promise = require("wechatpay.promise")
local errors = require("wechatpay.errors")
local results_file = require("wechatpay.grant.results")
local text = require("wechatpay.text")

local batch = {}

-- Part of every out_request_no: change it and every row becomes a new grant.
local SCHEME = "wechatpay-grant/1"

--- out_request_no(stock_id, openid, amount_text) -> string
-- amount_text: the amount granted (the row's, or --amount), nil for none.
-- The same stock, user and amount always give the same number, so WeChat
-- Pay treats a re-run (or a retry after a kill) as the first grant. The name
-- and ID number are left out on purpose: correcting a typo in them must not
-- turn into a second grant.
function batch.out_request_no(stock_id, openid, amount_text)
  local digest = hash.sha256(table.concat({ SCHEME, stock_id, openid, amount_text or "" }, "\n"))
  return "GRANT-" .. digest:sub(1, 40)
end

local REQUIRED = { "openid", "name", "id_card_number" }
local KNOWN = { openid = true, name = true, id_card_number = true, amount = true }

--- columns(header fields) -> column index by name | nil, err
-- Names are matched case-insensitively, surrounding spaces ignored; other
-- columns are allowed and ignored.
function batch.columns(header)
  local columns = {}
  for i, raw in ipairs(header) do
    local name = raw:lower():gsub("^%s+", ""):gsub("%s+$", "")
    if KNOWN[name] then
      if columns[name] then return nil, ("column %s appears twice in the header"):format(name) end
      columns[name] = i
    end
  end
  local missing = {}
  for _, name in ipairs(REQUIRED) do
    if not columns[name] then missing[#missing + 1] = name end
  end
  if #missing > 0 then
    return nil, ("the header lacks column%s %s (it needs openid,name,id_card_number[,amount])")
      :format(#missing > 1 and "s" or "", table.concat(missing, ", "))
  end
  columns.count = #header
  return columns
end

--- is_id(text, max) -> true for an identifier WeChat Pay writes (openid,
-- stock id, appid, coupon id): 1 to max letters, digits, "_" and "-".
function batch.is_id(text, max)
  return #text <= max and text:find("^[%w_%-]+$") ~= nil
end

-- An openid is shown in the results only when it has an openid's form, so
-- it cannot be something else (a name typed in the wrong column, an ID
-- number with spaces), and never with an ID number's run of digits in it.
local function printable_openid(openid)
  if openid and batch.is_id(openid, 128) then return results_file.mask_ids(openid) end
  return ""
end

-- Well-formed UTF-8: a name saved by Excel in GBK would be sent as
-- garbage and refused.
local is_utf8 = text.is_utf8

--- check(fields, info, columns) -> row | nil, problem, openid shown
function batch.check(fields, info, columns)
  local function field(name)
    local i = columns[name]
    local value = i and fields[i]
    if value == "" then return nil end
    return value
  end
  local openid = field("openid")
  local shown = printable_openid(openid)
  if info and info.malformed then
    return nil, ("broken CSV on line %d: %s"):format(info.line, info.malformed), shown
  end
  if results_file.has_id(openid) then
    return nil, "the openid column holds an ID number (are the columns swapped?); it is not written here", shown
  end
  for i = columns.count + 1, #fields do
    if fields[i] ~= "" then
      return nil, ("%d fields, the header has %d"):format(#fields, columns.count), shown
    end
  end
  local missing = {}
  for _, name in ipairs(REQUIRED) do
    if not field(name) then missing[#missing + 1] = name end
  end
  if #missing > 0 then return nil, "missing " .. table.concat(missing, ", "), shown end
  if not batch.is_id(openid, 128) then
    local what = openid:find("[\128-\255]") and "non-ASCII characters" or "characters other than A-Z a-z 0-9 _ -"
    if #openid > 128 then what = "more than 128 characters" end
    return nil, "openid has " .. what, shown
  end
  -- spaces a spreadsheet left around a value are not part of it (WeChat
  -- Pay compares the name with the ID card's)
  local name = field("name"):gsub("^%s+", ""):gsub("%s+$", "")
  if name == "" then return nil, "missing name", shown end
  if name:find("[\r\n]") then
    local where = info and info.last_line and info.last_line > info.line
      and (" (the row runs over lines %d-%d: a stray quote?)"):format(info.line, info.last_line) or ""
    return nil, "name has a line break" .. where, shown
  end
  if not is_utf8(name) then
    return nil, "name is not UTF-8 text (save the CSV as UTF-8, not GBK)", shown
  end
  local id = field("id_card_number"):gsub("^%s+", ""):gsub("%s+$", "")
  if not id:find("^%d+[%dXx]$") or #id ~= 18 then
    return nil, "id_card_number must be 18 characters: 17 digits and a digit or X", shown
  end
  local amount_text = field("amount")
  local amount
  if amount_text then
    amount = amount_text:find("^%d+$") and tonumber(amount_text)
    if not amount or amount <= 0 or amount > 1e12 then
      return nil, "amount must be a positive whole number of fen", shown
    end
    amount_text = ("%.0f"):format(amount)
  end
  return {
    openid = openid,
    name = name,
    id_card_number = id,
    amount = amount,
    amount_text = amount_text,
  }
end

-- Failures that no re-run can mend: the row must be fixed in the input.
batch.FIX_THE_ROW = { INVALID_ROW = true, DUPLICATE_ROW = true, GRANTED_BEFORE = true }

-- Grants refused as unauthorised one after another before the batch stops.
batch.REFUSED_IN_A_ROW = 5

--- error_fields(err) -> error_code, error_message for the results file
local function error_fields(err)
  if type(err) ~= "table" then return "CLIENT_ERROR", tostring(err) end
  local code = err.code
  if not code then
    code = ({ network = "NETWORK_ERROR", timeout = "TIMEOUT", verify = "VERIFY_FAILED",
              config = "CLIENT_ERROR" })[err.kind] or ("HTTP_" .. tostring(err.status or "ERROR"))
  end
  local message = results_file.mask_ids(tostring(err.message or ""))
  if err.kind == "verify" then
    -- A 2xx that failed verification may still have granted: a re-run
    -- sends the same out_request_no, which is safe.
    message = message .. " (the grant may have happened; a re-run with the same out_request_no is safe)"
  end
  if err.status and err.kind ~= "http" then message = message .. " (HTTP " .. err.status .. ")" end
  if err.request_id then message = message .. " (Request-ID " .. err.request_id .. ")" end
  if err.attempts and err.attempts > 1 then message = message .. (" after %d attempts"):format(err.attempts) end
  return code, message
end
batch.error_fields = error_fields

-- A record whose every field is empty or spaces (",,": spreadsheets export
-- them after the last row) is a blank line, not a row missing its fields.
local function is_blank(fields, info)
  if info and info.malformed then return false end
  for i = 1, #fields do
    if fields[i]:find("%S") then return false end
  end
  return true
end
batch.is_blank = is_blank

--- run(opts) -> summary | nil, err, partial summary
-- err: an interrupt, or the results file could not be written.
function batch.run(opts)
  local client, results, granted, tried = opts.client, opts.results, opts.granted, opts.failed or {}
  local window = opts.window or 32
  local summary = { rows = 0, granted = 0, skipped = 0, failed = 0, invalid = 0, sent = 0 }
  local state = { done = 0, sent = 0, failed = 0 }
  local in_flight, fatal, slot, refused = 0, nil, nil, 0
  -- The results file could not be written: stop at once, nothing more lands.
  local results_failed = false
  -- out_request_no -> the first row that asked for it in this file
  local seen = {}

  -- Wakes the reader waiting for a free place in the window.
  local function wake()
    if slot then
      local s = slot
      slot = nil
      s:resolve(true)
    end
  end

  local function tick()
    state.done = summary.granted + summary.skipped + summary.failed
    state.sent, state.failed = summary.sent, summary.failed
    if opts.progress then opts.progress:update(state) end
  end

  local function record(r)
    local ok, err = results:write(r)
    if not ok then
      results_failed = true
      fatal = fatal or err
    end
  end

  local function fail(rowno, openid, out_request_no, code, message)
    summary.failed = summary.failed + 1
    if batch.FIX_THE_ROW[code] then summary.invalid = summary.invalid + 1 end
    record{ row = rowno, openid = openid, out_request_no = out_request_no,
            error_code = code, error_message = message }
    tick()
  end

  local function finished(rowno, row, out_request_no, res, err)
    in_flight = in_flight - 1
    -- Ctrl-C while the call was made, or the client closed after it: not
    -- the row's failure, the user asked to stop; a re-run sends it again.
    if errors.is_interrupt(err) or (type(err) == "table" and err.kind == "closed") then
      fatal = fatal or err
      wake()
      return
    end
    summary.sent = summary.sent + 1
    -- every grant refused as unauthorised: the configuration is wrong for
    -- all rows alike (a serial, a key, a stock of another merchant); stop
    -- rather than send the rest of the file to the same answer
    if not res and type(err) == "table" and (err.status == 401 or err.status == 403) then
      refused = refused + 1
      if refused >= batch.REFUSED_IN_A_ROW and not fatal then
        local code = error_fields(err)
        fatal = errors.new("http", ("the last %d grants were all refused with %s (HTTP %d): check the merchant "
          .. "serial and key, and that the stock and appid belong to this merchant"):format(refused, code, err.status),
          { status = err.status, code = err.code })
      end
    elseif res or type(err) == "table" and err.status then
      refused = 0
    end
    if res then
      local body = res:json()
      local coupon_id = type(body) == "table" and body.coupon_id
      if type(coupon_id) == "number" then coupon_id = ("%.0f"):format(coupon_id) end
      -- One line of printable text, or the results file could not be read back.
      if type(coupon_id) == "string" and batch.is_id(coupon_id, 128) then
        summary.granted = summary.granted + 1
        record{ row = rowno, openid = row.openid, out_request_no = out_request_no,
                coupon_id = tostring(coupon_id) }
        tick()
      else
        fail(rowno, row.openid, out_request_no, "BAD_RESPONSE", "a 2xx response without a usable coupon_id")
      end
    else
      local code, message = error_fields(err)
      fail(rowno, row.openid, out_request_no, code, message)
    end
    wake()
  end

  local function wait_for_room(limit)
    while in_flight > limit and not fatal do
      slot = promise.new(client)
      slot:wait()
    end
    if fatal then error(fatal, 0) end
  end

  local function send(rowno, row, out_request_no)
    local user_name, key_id = client:encrypt(row.name)
    if not user_name then
      return fail(rowno, row.openid, out_request_no, "INVALID_ROW", "name cannot be encrypted: " .. tostring(key_id))
    end
    local id_card_number, err = client:encrypt(row.id_card_number)
    if not id_card_number then
      return fail(rowno, row.openid, out_request_no, "INVALID_ROW",
        "id_card_number cannot be encrypted: " .. tostring(err))
    end
    local json = {
      stock_id = opts.stock_id,
      out_request_no = out_request_no,
      user_name = user_name,
      id_card_number = id_card_number,
      appid = opts.appid,
      card_type = "ID_CARD",
      amount = row.amount or opts.amount,
    }
    in_flight = in_flight + 1
    client.v3.multiuse.users._openid_.coupons:postAsync{
      openid = row.openid, json = json, headers = { ["Wechatpay-Serial"] = key_id },
    }:next(function(res)
      finished(rowno, row, out_request_no, res, nil)
    end, function(e)
      finished(rowno, row, out_request_no, nil, e)
    end):catch(function(e)
      -- A handler that raised (an interrupt, a bug): stop the batch with it.
      fatal = fatal or e
      wake()
    end)
  end

  -- The amount a row is granted: its own, or --amount.
  local default_amount = opts.amount and ("%.0f"):format(opts.amount)

  -- One record of the CSV: checked, numbered, then skipped, refused or sent.
  local function take(fields, info)
    if is_blank(fields, info) then return end
    summary.rows = summary.rows + 1
    local rowno = summary.rows
    local row, problem, shown = batch.check(fields, info, opts.columns)
    if not row then return fail(rowno, shown, "", "INVALID_ROW", problem) end
    -- numbered by the amount sent, however it was given: a row of amount
    -- 100 and one left empty under --amount 100 are one grant
    local out_request_no = batch.out_request_no(opts.stock_id, row.openid, row.amount_text or default_amount)
    -- what a run before that rule gave a row that took --amount
    local legacy = not row.amount_text and default_amount and batch.out_request_no(opts.stock_id, row.openid, nil)
    local first = seen[out_request_no]
    if first then
      return fail(rowno, row.openid, out_request_no, "DUPLICATE_ROW",
        ("same openid and amount as row %d: one grant per user, stock and amount"):format(first))
    end
    seen[out_request_no] = rowno
    if granted[out_request_no] or (legacy and granted[legacy]) then
      summary.skipped = summary.skipped + 1
      return tick()
    end
    -- granted this stock by an earlier run, at another amount: a changed
    -- --amount or amount cell must not become a second coupon unasked
    local earlier = not opts.another_amount and opts.coupon_of and opts.coupon_of[printable_openid(row.openid)]
    if earlier and not (legacy and tried[legacy]) then
      return fail(rowno, row.openid, out_request_no, "GRANTED_BEFORE", ("this openid already has coupon %s of this "
        .. "stock from an earlier run, at another amount; --another-amount grants it again"):format(earlier))
    end
    -- sent under that rule with no coupon recorded (a timeout, an
    -- interrupt): the same number again, which WeChat Pay answers with the
    -- grant it may have made
    if legacy and tried[legacy] then out_request_no = legacy end
    send(rowno, row, out_request_no)
    wait_for_room(window - 1)
  end

  local ok, err = pcall(function()
    for fields, info in opts.reader:records() do
      take(fields, info)
      if fatal then error(fatal, 0) end
    end
    wait_for_room(0)
  end)
  if not ok then
    -- Let what is in flight land in the results before giving up, unless
    -- the reason is the results file itself or an interrupt.
    if not errors.is_interrupt(err) and not results_failed then
      pcall(wait_for_room, 0)
    end
    return nil, err, summary
  end
  return summary
end

return batch
