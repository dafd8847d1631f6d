--- RFC 4180 CSV for wechatpay-grant, streamed one record at a time:
-- quoted fields holding commas, doubled quotes and line breaks, LF or CRLF
-- line ends, a UTF-8 byte order mark before the header. Bytes are kept as
-- they are (UTF-8 names pass through untouched).
--
--   local reader = csv.reader(file [, { max_lines =, max_line_bytes = }])
--   for fields, info in reader:records() do ... end
--     info.line        physical line the record starts on
--     info.last_line   physical line it ends on
--     info.terminated  false for a last record without its line break (a torn write)
--     info.malformed   nil, or why the record is broken
--   csv.format{ "a", "b,c" } -> 'a,"b,c"\n'
--
-- Reading is linear and bounded: the file is read in blocks, a line longer
-- than max_line_bytes is skipped (reported as a broken record, never held
-- whole), and a quoted field may run over at most max_lines lines. A
-- record whose quoting does not close cleanly within that bound is one bad
-- record, its first line; reading goes on with the next line, so a stray
-- quote costs one row, not the rest of the file.
local csv = {}

local BOM = "\239\187\191"
local QUOTE, COMMA, CR = 34, 44, 13
local BLOCK = 65536

csv.MAX_LINES = 10
csv.MAX_LINE_BYTES = 65536

local Reader = {}
Reader.__index = Reader

--- reader(file [, limits]) -> reader over an open file
function csv.reader(file, limits)
  limits = limits or {}
  return setmetatable({
    file = file, buf = "", pos = 1, scan = 1, eof = false,
    line = 0, first = true, pending = {}, pending_head = 1,
    max_lines = limits.max_lines or csv.MAX_LINES,
    max_line_bytes = limits.max_line_bytes or csv.MAX_LINE_BYTES,
  }, Reader)
end

local function more(self)
  if self.eof then return nil end
  local block, err = self.file:read(BLOCK)
  if block == nil then
    if err then error("cannot read: " .. tostring(err), 0) end
    self.eof = true
  end
  return block
end

-- Skips the rest of a line too long to keep; true when it had a line break.
local function skip_line(self)
  while true do
    local block = more(self)
    if not block then
      self.buf, self.pos, self.scan = "", 1, 1
      return false
    end
    local nl = block:find("\n", 1, true)
    if nl then
      self.buf, self.pos, self.scan = block, nl + 1, nl + 1
      return true
    end
  end
end

--- One physical line from the file: { text =, terminated =, number =, too_long = } | nil.
-- text keeps a "\r" before the "\n"; the "\n" is dropped.
local function read_line(self)
  while true do
    local nl = self.buf:find("\n", self.scan, true)
    if nl then
      local text = self.buf:sub(self.pos, nl - 1)
      self.pos, self.scan = nl + 1, nl + 1
      if #text > self.max_line_bytes then return { too_long = true, terminated = true } end
      return { text = text, terminated = true }
    end
    local rest = #self.buf - self.pos + 1
    if rest > self.max_line_bytes then
      return { too_long = true, terminated = skip_line(self) }
    end
    local block = more(self)
    if not block then
      if rest == 0 then return nil end
      local text = self.buf:sub(self.pos)
      self.buf, self.pos, self.scan = "", 1, 1
      return { text = text, terminated = false }
    end
    -- Only the new block can hold the line break: search from there.
    self.buf = self.buf:sub(self.pos) .. block
    self.pos, self.scan = 1, rest + 1
  end
end

-- The next physical line: one handed back by a broken record first.
local function next_line(self)
  local pending = self.pending
  local line = pending[self.pending_head]
  if line then
    pending[self.pending_head] = nil
    self.pending_head = self.pending_head + 1
    return line
  end
  line = read_line(self)
  if not line then return nil end
  self.line = self.line + 1
  line.number = self.line
  if self.first then
    self.first = false
    if line.text and line.text:sub(1, 3) == BOM then line.text = line.text:sub(4) end
  end
  return line
end

-- Hands the lines after a broken record's first back, to be read again.
local function give_back(self, lines)
  local pending, head = self.pending, self.pending_head
  -- they go before anything still pending (there is none: records read in order)
  for i = #lines, 2, -1 do
    head = head - 1
    pending[head] = lines[i]
  end
  self.pending_head = head
end

local function strip_cr(text)
  if text:byte(-1) == CR then return text:sub(1, -2) end
  return text
end

--- reader:next() -> fields, info | nil at the end. Blank lines are not records.
function Reader:next()
  local first
  repeat
    first = next_line(self)
    if not first then return nil end
  until first.too_long or (first.text ~= "" and first.text ~= "\r")
  local start = first.number
  if first.too_long then
    return {}, { line = start, last_line = start, terminated = first.terminated,
                 malformed = ("the line is longer than %d bytes"):format(self.max_line_bytes) }
  end

  local lines = { first }
  local fields, malformed = {}, nil
  local text, pos = first.text, 1
  -- A record broken over lines: its first line alone is the bad record.
  local function broken(why)
    if #lines > 1 then give_back(self, lines) end
    return fields, { line = start, last_line = start, terminated = first.terminated, malformed = why }
  end

  while true do
    if text:byte(pos) == QUOTE then
      local parts, i = {}, pos + 1
      while true do
        local q = text:find('"', i, true)
        if q then
          parts[#parts + 1] = text:sub(i, q - 1)
          if text:byte(q + 1) == QUOTE then
            parts[#parts + 1] = '"'
            i = q + 2
          else
            i = q + 1
            break
          end
        else
          -- The field goes on over the line break, within the bound.
          parts[#parts + 1] = text:sub(i)
          local why
          local nextl = lines[#lines].terminated and #lines < self.max_lines and next_line(self)
          if nextl then lines[#lines + 1] = nextl end
          if #lines >= self.max_lines and not nextl then
            why = ("a quoted field is not closed within %d lines"):format(self.max_lines)
          elseif not nextl then
            why = "a quoted field is not closed before the end of the file"
          elseif nextl.too_long then
            why = ("a quoted field is not closed before a line longer than %d bytes"):format(self.max_line_bytes)
          end
          if why then
            fields[#fields + 1] = table.concat(parts)
            return broken(why)
          end
          parts = { table.concat(parts), "\n" }
          text, i = nextl.text, 1
        end
      end
      local c = text:byte(i)
      if c == CR and i == #text then c = nil end
      if c ~= nil and c ~= COMMA then
        -- Text after the closing quote: keep it, but say the row is broken.
        local comma = text:find(",", i, true)
        parts[#parts + 1] = strip_cr(text:sub(i, (comma or #text + 1) - 1))
        malformed = malformed or ("text after the closing quote of field " .. (#fields + 1))
        i = comma or #text + 1
        c = comma and COMMA or nil
      end
      fields[#fields + 1] = table.concat(parts)
      if malformed and #lines > 1 then
        -- The quote closed lines later, but not cleanly: it was a stray one.
        return broken("a quoted field is not closed on its line (a stray quote?)")
      end
      if c == nil then break end
      pos = i + 1
    else
      local comma = text:find(",", pos, true)
      if comma then
        fields[#fields + 1] = text:sub(pos, comma - 1)
        pos = comma + 1
      else
        fields[#fields + 1] = strip_cr(text:sub(pos))
        break
      end
    end
  end
  local last = lines[#lines]
  return fields, { line = start, last_line = last.number, terminated = last.terminated, malformed = malformed }
end

--- reader:records() -> iterator of fields, info
function Reader:records()
  return function() return self:next() end
end

local function quote(value)
  value = value == nil and "" or tostring(value)
  if value:find('[,"\r\n]') or value:find("^%s") or value:find("%s$") then
    return '"' .. value:gsub('"', '""') .. '"'
  end
  return value
end
csv.quote = quote

--- format(list) -> one CSV line ending in "\n" (nil fields are empty)
function csv.format(list, n)
  local out = {}
  for i = 1, n or #list do out[i] = quote(list[i]) end
  return table.concat(out, ",") .. "\n"
end

return csv
