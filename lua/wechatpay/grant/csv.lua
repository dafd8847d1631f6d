--- RFC 4180 CSV for wechatpay-grant, streamed one record at a time:
-- quoted fields holding commas, doubled quotes and line breaks, LF or CRLF
-- line ends, a UTF-8 byte order mark before the header. Bytes are kept as
-- they are (UTF-8 names pass through untouched).
--
--   local reader = csv.reader(file)
--   for fields, info in reader:records() do ... end
--     info.line        physical line the record starts on
--     info.terminated  false for a last record without its line break (a torn write)
--     info.malformed   nil, or why the quoting is broken
--   csv.format{ "a", "b,c" } -> 'a,"b,c"\n'
local csv = {}

local BOM = "\239\187\191"
local QUOTE, COMMA = 34, 44

--- parse(text) -> fields, complete, malformed
-- text is one record without its final line break; complete is false when a
-- quoted field runs on past the end (the next line belongs to it).
local function parse(text)
  local fields, pos, malformed = {}, 1, nil
  while true do
    if text:byte(pos) == QUOTE then
      local parts, i = {}, pos + 1
      while true do
        local q = text:find('"', i, true)
        if not q then return fields, false, malformed end
        parts[#parts + 1] = text:sub(i, q - 1)
        if text:byte(q + 1) == QUOTE then
          parts[#parts + 1] = '"'
          i = q + 2
        else
          i = q + 1
          break
        end
      end
      local c = text:byte(i)
      if c ~= nil and c ~= COMMA then
        -- Text after the closing quote: keep it, but say the row is broken.
        local comma = text:find(",", i, true)
        parts[#parts + 1] = text:sub(i, (comma or #text + 1) - 1)
        malformed = malformed or ("text after the closing quote of field " .. (#fields + 1))
        i = comma or #text + 1
        c = comma and COMMA or nil
      end
      fields[#fields + 1] = table.concat(parts)
      if c == nil then return fields, true, malformed end
      pos = i + 1
    else
      local comma = text:find(",", pos, true)
      if comma then
        fields[#fields + 1] = text:sub(pos, comma - 1)
        pos = comma + 1
      else
        fields[#fields + 1] = text:sub(pos)
        return fields, true, malformed
      end
    end
  end
end
csv.parse = parse

local function strip_line_end(raw)
  if raw:sub(-2) == "\r\n" then return raw:sub(1, -3), true end
  if raw:sub(-1) == "\n" then return raw:sub(1, -2), true end
  return raw, false
end

local Reader = {}
Reader.__index = Reader

--- reader(file) -> reader over an open file (read with "*L", so LuaJIT and 5.4 alike)
function csv.reader(file)
  return setmetatable({ file = file, line = 0, first = true }, Reader)
end

--- reader:next() -> fields, info | nil at the end. Blank lines are not records.
function Reader:next()
  while true do
    local raw = self.file:read("*L")
    if raw == nil then return nil end
    self.line = self.line + 1
    local start = self.line
    if self.first then
      self.first = false
      if raw:sub(1, 3) == BOM then raw = raw:sub(4) end
    end
    if raw ~= "\n" and raw ~= "\r\n" and raw ~= "" then
      while true do
        local text, terminated = strip_line_end(raw)
        local fields, complete, malformed = parse(text)
        if complete then
          return fields, { line = start, terminated = terminated, malformed = malformed }
        end
        local more = self.file:read("*L")
        if more == nil then
          return fields, { line = start, terminated = false,
                           malformed = "a quoted field is not closed before the end of the file" }
        end
        self.line = self.line + 1
        raw = raw .. more
      end
    end
  end
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
