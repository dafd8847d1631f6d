--- The results file of wechatpay-grant: one CSV line per finished row,
-- appended and flushed as each row finishes, so that an interrupted run
-- loses nothing. It is also the memory of a re-run: a row whose
-- out_request_no has a coupon_id here is not sent again.
--
--   row,openid,out_request_no,coupon_id,error_code,error_message
--
-- It never holds a name or an ID number, in plaintext or encrypted.
--
-- Reading it back, a line is either a record the tool wrote, or the start
-- of one cut short by a kill (ignored: its row is sent again, which is
-- safe). Anything else means the file was damaged or edited: load refuses
-- it, naming the line, so that a run never starts from a wrong memory.
local csv = require("wechatpay.grant.csv")

local results = {}

-- A Chinese resident ID number (18 characters, 17 digits and a digit or X,
-- or 15 digits of the old format) is never written in clear: a run of 15 to
-- 18 digits (an X after it included) is taken for one, typos and all.
--   results.has_id(text) -> true when text holds such a run
--   results.mask_ids(text) -> text with each such run replaced by as many "*"
local function looks_like_id(run)
  local digits = #run:match("^%d*")
  return digits >= 15 and digits <= 18
end

function results.has_id(text)
  if type(text) ~= "string" then return false end
  for run in text:gmatch("%d+[Xx]?") do
    if looks_like_id(run) then return true end
  end
  return false
end

function results.mask_ids(text)
  if type(text) ~= "string" then return text end
  return (text:gsub("%d+[Xx]?", function(run)
    if looks_like_id(run) then return ("*"):rep(#run) end
  end))
end

results.COLUMNS = { "row", "openid", "out_request_no", "coupon_id", "error_code", "error_message" }
local NCOL = #results.COLUMNS

local function header_matches(fields)
  if #fields ~= NCOL then return false end
  for i = 1, NCOL do
    if fields[i] ~= results.COLUMNS[i] then return false end
  end
  return true
end

local OUT_REQUEST_NO = "GRANT-" .. ("x"):rep(40)

-- Checks one field: the whole of it, or only its start (a torn field).
local SHAPES = {
  -- row
  function(v, whole)
    if whole then return v:find("^%d+$") ~= nil, "the row column is not a number" end
    return v:find("^%d*$") ~= nil, "the row column is not a number"
  end,
  -- openid
  nil,
  -- out_request_no
  function(v, whole)
    local why = "the out_request_no column is not GRANT- and 40 hex digits"
    if v == "" then return true end
    local prefix, hex = v:sub(1, 6), v:sub(7)
    if whole then return prefix == "GRANT-" and #hex == 40 and hex:find("^%x+$") ~= nil, why end
    if #v <= 6 then return OUT_REQUEST_NO:sub(1, #v) == v, why end
    return prefix == "GRANT-" and #hex <= 40 and hex:find("^%x*$") ~= nil, why
  end,
  -- coupon_id
  function(v)
    return v:find("^[%w_%-%.%+]*$") ~= nil, "the coupon_id column holds characters a coupon id has not"
  end,
}

--- check(fields, info) -> "record" | "torn", or nil, what is wrong
local function check(fields, info)
  if #fields > NCOL then return nil, ("it has %d fields, not %d"):format(#fields, NCOL) end
  -- A quoted field left open by a kill is the one torn case of broken CSV.
  local open_quote = info.malformed and info.malformed:find("not closed", 1, true)
  if info.malformed and not open_quote then return nil, "broken CSV: " .. info.malformed end
  local complete = #fields == NCOL and not info.malformed
  for i = 1, #fields do
    local shape = SHAPES[i]
    if shape then
      local ok, why = shape(fields[i], complete or i < #fields)
      if not ok then return nil, why end
    end
  end
  if complete and fields[4] == "" and fields[5] == "" then
    return nil, "it has neither a coupon_id nor an error_code"
  end
  if complete and info.terminated then return "record" end
  return "torn"
end

--- load(path) -> state | nil, err
--   state.granted[out_request_no] = coupon_id, state.failed[out_request_no]
--   = true (sent or refused, no coupon recorded), state.coupon_of[openid as
--   written] = a coupon_id it was granted, state.lines, state.ignored
--   (records cut short by a kill), state.exists, state.needs_newline
function results.load(path)
  local state = { granted = {}, failed = {}, coupon_of = {}, lines = 0, ignored = 0, exists = false,
                  needs_newline = false }
  local f, err, errno = io.open(path, "rb")
  if not f then
    -- Absent is fine (a first run); present but unreadable is not.
    if errno ~= 2 then return nil, ("cannot read results file: %s"):format(err) end
    local probe = io.open(path, "ab")
    if not probe then return nil, ("cannot open results file %s for writing"):format(path) end
    probe:close()
    os.remove(path)
    return state
  end
  state.exists = true
  local size = f:seek("end")
  if size > 0 then
    f:seek("set", size - 1)
    state.needs_newline = f:read(1) ~= "\n"
  end
  f:seek("set", 0)
  -- The tool writes every record on one line.
  local reader = csv.reader(f, { max_lines = 1 })
  local ok, header = pcall(reader.next, reader)
  if not ok then
    f:close()
    return nil, ("cannot read results file %s: %s"):format(path, tostring(header))
  end
  if header and header_matches(header) then
    while true do
      local rok, fields, rinfo = pcall(reader.next, reader)
      if not rok then
        f:close()
        return nil, ("cannot read results file %s: %s"):format(path, tostring(fields))
      end
      if not fields then break end
      -- The record of a killed run may be cut short: it counts as not written.
      local kind, problem = check(fields, rinfo)
      if kind == "record" then
        state.lines = state.lines + 1
        local out_request_no, coupon_id = fields[3], fields[4]
        if coupon_id ~= "" and out_request_no ~= "" then
          state.granted[out_request_no] = coupon_id
          if fields[2] ~= "" then state.coupon_of[fields[2]] = coupon_id end
        elseif out_request_no ~= "" then
          state.failed[out_request_no] = true
        end
      elseif kind == "torn" then
        state.ignored = state.ignored + 1
      else
        f:close()
        return nil, ("results file %s is damaged at line %d: %s. It is the memory of earlier runs: "
          .. "correct or delete that line (its row is then sent again, safely), then run again")
          :format(path, rinfo.line, problem)
      end
    end
  elseif header then
    f:close()
    return nil, ("%s is not a wechatpay-grant results file (its first line should be %s)")
      :format(path, table.concat(results.COLUMNS, ","))
  end
  f:close()
  return state
end

local Writer = {}
Writer.__index = Writer

--- open(path, state) -> writer | nil, err: appends, writing the header only
-- to an empty file, and first ends a line a killed run left open.
function results.open(path, state)
  local f, err = io.open(path, "ab")
  if not f then return nil, ("cannot open results file: %s"):format(err) end
  local size = f:seek("end")
  local prefix = ""
  if size == 0 then
    prefix = csv.format(results.COLUMNS)
  elseif state and state.needs_newline then
    prefix = "\n"
  end
  if prefix ~= "" then
    local ok, werr = f:write(prefix)
    if ok then ok, werr = f:flush() end
    if not ok then
      f:close()
      return nil, ("cannot write results file %s: %s"):format(path, tostring(werr))
    end
  end
  return setmetatable({ file = f, path = path }, Writer)
end

-- One line of text per field, at most 500 bytes: results stay one line a
-- record. Never an ID number in clear, whatever the field.
local function one_line(text)
  text = results.mask_ids((tostring(text or ""):gsub("[%c]+", " ")))
  if #text > 500 then text = text:sub(1, 497) .. "..." end
  return text
end

--- write{ row =, openid =, out_request_no =, coupon_id =, error_code =, error_message = }
-- -> true | nil, err. Flushed before it returns.
function Writer:write(r)
  local line = csv.format({ r.row, one_line(r.openid), r.out_request_no, r.coupon_id,
    one_line(r.error_code), one_line(r.error_message) }, NCOL)
  local ok, err = self.file:write(line)
  if ok then ok, err = self.file:flush() end
  if not ok then return nil, ("cannot write results file %s: %s"):format(self.path, tostring(err)) end
  return true
end

function Writer:close()
  if self.file then
    self.file:close()
    self.file = nil
  end
end

return results
