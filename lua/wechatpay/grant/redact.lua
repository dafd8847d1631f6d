--- What must never be written in clear by wechatpay-grant: a Chinese
-- resident ID number (18 characters, 17 digits and a digit or X, or 15
-- digits of the old format). A run of 15 to 18 digits (an X after it
-- included) is taken for one, typos and all, wherever it sits in a text.
--
--   redact.has_id(text) -> true when text holds such a run
--   redact.ids(text)    -> text with each such run replaced by as many "*"
local redact = {}

local function looks_like_id(run)
  local digits = #run:match("^%d*")
  return digits >= 15 and digits <= 18
end

function redact.has_id(text)
  if type(text) ~= "string" then return false end
  for run in text:gmatch("%d+[Xx]?") do
    if looks_like_id(run) then return true end
  end
  return false
end

function redact.ids(text)
  if type(text) ~= "string" then return text end
  return (text:gsub("%d+[Xx]?", function(run)
    if looks_like_id(run) then return ("*"):rep(#run) end
  end))
end

return redact
