--- Text checks shared by what the client writes into JSON and XML.
--
--   text.is_utf8(s)  -- well-formed UTF-8: no overlongs, surrogates or values past U+10FFFF
--   text.length(s)   -- its characters (code points), for UTF-8 text
local text = {}

function text.is_utf8(s)
  if not s:find("[\128-\255]") then return true end
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    local len, lo, hi = 1, 0x80, 0xBF
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then
      len = 3
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      len = 4
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    else return false end
    for k = 1, len - 1 do
      local b = s:byte(i + k)
      if not b or b < (k == 1 and lo or 0x80) or b > (k == 1 and hi or 0xBF) then return false end
    end
    i = i + len
  end
  return true
end

-- every byte but continuation bytes starts a character
function text.length(s)
  local _, continuations = s:gsub("[\128-\191]", "")
  return #s - continuations
end

return text
