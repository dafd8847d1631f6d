--- How the tools write for a person: colour and indented JSON on a
-- terminal, the bytes as they are everywhere else.
local output = {}

--- is_terminal(fd) -> true when fd is a terminal (`test -t`, on 5.1 and 5.4)
function output.is_terminal(fd)
  local a = os.execute("test -t " .. (fd or 1))
  return a == true or a == 0
end

--- colours(enabled) -> a function paint(name, text); NO_COLOR turns them off.
local CODES = { green = "32", red = "31", yellow = "33", dim = "2", bold = "1" }
function output.colours(enabled)
  if not enabled or (os.getenv("NO_COLOR") or "") ~= "" then
    return function(_, text) return text end
  end
  return function(name, text) return "\27[" .. CODES[name] .. "m" .. text .. "\27[0m" end
end

--- pretty_json(text) -> text indented by two spaces, or nil when it is not
-- one JSON value.  Works on the text itself, so key order and the digits
-- of every number stay as WeChat Pay sent them.
function output.pretty_json(text)
  local ok = pcall(function()
    assert(require("cjson.safe").decode(text) ~= nil or text:match("^%s*null%s*$"))
  end)
  if not ok then return nil end
  local out, depth, i, n = {}, 0, 1, #text
  local function newline() out[#out + 1] = "\n" .. ("  "):rep(depth) end
  while i <= n do
    local c = text:sub(i, i)
    if c == '"' then
      local j = i + 1
      while true do
        local q = text:find('[\\"]', j)
        if text:sub(q, q) == "\\" then j = q + 2 else j = q break end
      end
      out[#out + 1] = text:sub(i, j)
      i = j
    elseif c == "{" or c == "[" then
      local close = c == "{" and "}" or "]"
      local after = text:find("%S", i + 1)
      if text:sub(after, after) == close then
        out[#out + 1] = c .. close
        i = after
      else
        out[#out + 1] = c
        depth = depth + 1
        newline()
      end
    elseif c == "}" or c == "]" then
      depth = depth - 1
      newline()
      out[#out + 1] = c
    elseif c == "," then
      out[#out + 1] = ","
      newline()
    elseif c == ":" then
      out[#out + 1] = ": "
    elseif not c:find("%s") then
      out[#out + 1] = c
    end
    i = i + 1
  end
  return table.concat(out)
end

--- write(...): standard output, as io.stdout:write; the first failure
-- (a full disk, a closed pipe) is kept in output.failed for the exit status:
-- a write past the stdio buffer fails here, not at the final flush.
function output.write(...)
  local ok, err = io.stdout:write(...)
  if not ok and output.failed == nil then output.failed = tostring(err) end
end

return output
