--- The results file of wechatpay-grant: one CSV line per finished row,
-- appended and flushed as each row finishes, so that an interrupted run
-- loses nothing. It is also the memory of a re-run: a row whose
-- out_request_no has a coupon_id here is not sent again.
--
--   row,openid,out_request_no,coupon_id,error_code,error_message
--
-- It never holds a name or an ID number, in plaintext or encrypted.
local csv = require("wechatpay.grant.csv")

local results = {}

results.COLUMNS = { "row", "openid", "out_request_no", "coupon_id", "error_code", "error_message" }
local NCOL = #results.COLUMNS

local function header_matches(fields)
  if #fields ~= NCOL then return false end
  for i = 1, NCOL do
    if fields[i] ~= results.COLUMNS[i] then return false end
  end
  return true
end

--- load(path) -> state | nil, err
--   state.granted[out_request_no] = coupon_id, state.lines, state.ignored
--   (records cut short by a kill), state.exists, state.needs_newline
function results.load(path)
  local state = { granted = {}, lines = 0, ignored = 0, exists = false, needs_newline = false }
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
  local reader = csv.reader(f)
  local header = reader:next()
  if header and header_matches(header) then
    for fields, rinfo in reader:records() do
      -- The last record of a killed run may be cut short: it counts as not written.
      if rinfo.terminated and not rinfo.malformed and #fields == NCOL then
        state.lines = state.lines + 1
        local out_request_no, coupon_id = fields[3], fields[4]
        if coupon_id ~= "" and out_request_no ~= "" then state.granted[out_request_no] = coupon_id end
      else
        state.ignored = state.ignored + 1
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

-- One line of text per field, at most 500 bytes: results stay one line a record.
local function one_line(text)
  text = tostring(text or ""):gsub("[%c]+", " ")
  if #text > 500 then text = text:sub(1, 497) .. "..." end
  return text
end

--- write{ row =, openid =, out_request_no =, coupon_id =, error_code =, error_message = }
-- -> true | nil, err. Flushed before it returns.
function Writer:write(r)
  local line = csv.format({ r.row, r.openid, r.out_request_no, r.coupon_id,
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
