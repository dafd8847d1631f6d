--- APIv2 XML: a flat <xml> of name -> text, out and in.
--
--   local xml = require("wechatpay.v2.xml")
--   local fields = xml.fields{ appid = "wx...", total_fee = 1 }   -- checked, every value a string
--   xml.encode(fields)   --> "<xml><appid><![CDATA[wx...]]></appid>...</xml>"
--   xml.decode(text)     --> { return_code = "SUCCESS", ... } | nil, why
--
-- Out: names are [A-Za-z0-9_]; values are strings or integers (written
-- exactly, as WeChat Pay's amounts in fen are integers); anything else is
-- a programmer error.  Every value is CDATA, a "]]>" inside it split over
-- two sections, but a value with a carriage return: escaped text, the CR as
-- &#13;, so the parser at the other end reads the very bytes signed.  In: parsed by expat (Debian's lua-expat, `lxp`), with no
-- DOCTYPE (so no entity of ours is ever declared or expanded), at most
-- MAX_BYTES, one level of elements under <xml> unless asked for more.
local lxp = require("lxp")
local errors = require("wechatpay.errors")
local sign = require("wechatpay.v2.sign")
local text = require("wechatpay.text")

local xml = {}

--- The most an answer or a callback may hold: WeChat Pay's are a few KB.
xml.MAX_BYTES = 256 * 1024

local NAME = "^[A-Za-z0-9_]+$"

local function show_name(name)
  if type(name) ~= "string" then return type(name) end
  return ("%q"):format(name:sub(1, 40))
end

--- fields(params) -> a new table of name -> string; raises on a name that
-- is not [A-Za-z0-9_], or a value that is neither a string nor an integer.
function xml.fields(params, where)
  where = where or "xml"
  if type(params) ~= "table" then errors.raise(("%s must be a table of name -> value"):format(where)) end
  local out = {}
  for name, value in pairs(params) do
    if type(name) ~= "string" or not name:find(NAME) then
      errors.raise(("%s: field name %s must be letters, digits and _ only"):format(where, show_name(name)))
    end
    local tv = type(value)
    if tv == "number" then
      if value ~= value or value % 1 ~= 0 or math.abs(value) >= 2 ^ 53 then
        errors.raise(("%s.%s = %s: a number must be an integer (amounts are in fen); give other values as strings")
          :format(where, name, tostring(value)))
      end
      value = ("%.0f"):format(value)
    elseif tv ~= "string" then
      errors.raise(("%s.%s must be a string or an integer, got %s"):format(where, name, tv))
    elseif value:find("[%z\1-\8\11\12\14-\31]") then
      errors.raise(("%s.%s holds a control character, which XML cannot carry"):format(where, name))
    elseif not text.is_utf8(value) then
      errors.raise(("%s.%s is not UTF-8 text: WeChat Pay's XML is UTF-8"):format(where, name))
    elseif value:find("\239\191[\190\191]") then
      errors.raise(("%s.%s holds U+FFFE or U+FFFF, which XML cannot carry"):format(where, name))
    end
    out[name] = value
  end
  return out
end

-- Byte order whatever the locale, so the same fields give the same bytes.
local bytewise = sign.bytewise

local ESCAPES = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ["\r"] = "&#13;" }

--- encode(fields) -> "<xml>...</xml>"; fields as xml.fields returns them.
function xml.encode(fields)
  local names = {}
  for name in pairs(fields) do names[#names + 1] = name end
  table.sort(names, bytewise)
  local out = { "<xml>" }
  for _, name in ipairs(names) do
    local value = fields[name]
    if type(name) ~= "string" or not name:find(NAME) or type(value) ~= "string" then
      errors.raise("xml.encode: give it what xml.fields returns (string names and values)")
    end
    local text
    if value:find("\r", 1, true) then
      -- an XML parser reads a CR, in CDATA too, as a line feed: WeChat Pay
      -- would check the sign over other text.  A character reference is
      -- read back as the CR itself.
      text = value:gsub("[&<>\r]", ESCAPES)
    else
      text = "<![CDATA[" .. value:gsub("%]%]>", "]]]]><![CDATA[>") .. "]]>"
    end
    out[#out + 1] = "<" .. name .. ">" .. text .. "</" .. name .. ">"
  end
  out[#out + 1] = "</xml>"
  return table.concat(out)
end

--- decode(text [, max_bytes [, root [, nested]]]) -> table | nil, why
-- (never raises on what arrives from the network).  root: the root
-- element's name ("xml"; a refund notification's req_info decrypts to a
-- <root>).  Each field under the root is a string.  nested: a field may
-- hold elements (the few answers that have them, such as gethbinfo's
-- <hblist>): it is then a table, in which an element that holds elements
-- is always a list of its occurrences and any other is a string, e.g.
-- fields.hblist.hbinfo[1].openid.  Without nested, a field holding
-- elements is refused.
xml.MAX_DEPTH = 8   -- elements within elements, the root counted

function xml.decode(text, max_bytes, root, nested)
  root = root or "xml"
  if type(text) ~= "string" then return nil, "XML expected, got " .. type(text) end
  max_bytes = max_bytes or xml.MAX_BYTES
  if #text > max_bytes then return nil, ("XML of %d bytes, more than the %d allowed"):format(#text, max_bytes) end
  -- a DOCTYPE is refused by the parser, where it is one, in any encoding:
  -- the same letters in a field's text (an attach the payer typed) are text
  -- open[d]: the element open at depth d (2 and deeper): its name, its text
  -- pieces, and `inner` once it holds an element
  local result, open, depth, seen_root, problem = {}, {}, 0, false, nil
  local function refuse(why)
    problem = problem or why
    error(why, 0)
  end
  local function short(name) return name:sub(1, 40) end
  local parser = lxp.new({
    StartDoctypeDecl = function() refuse("XML with a DOCTYPE is refused") end,
    EntityDecl = function() refuse("XML with an ENTITY declaration is refused") end,
    StartElement = function(_, name)
      depth = depth + 1
      if depth == 1 then
        if name ~= root then refuse(("the root element is <%s>, not <%s>"):format(short(name), root)) end
        seen_root = true
        return
      end
      if depth == 2 then
        if result[name] ~= nil then refuse(("<%s> appears twice"):format(short(name))) end
      elseif not nested then
        refuse(("<%s> is nested: an APIv2 answer is a flat <xml>"):format(short(name)))
      elseif depth > xml.MAX_DEPTH then
        refuse(("<%s> is nested more than %d deep"):format(short(name), xml.MAX_DEPTH))
      else
        local parent = open[depth - 1]
        if table.concat(parent.parts):find("%S") then refuse(("<%s> holds text and elements"):format(short(parent.name))) end
        parent.inner = parent.inner or {}
      end
      open[depth] = { name = name, parts = {} }
    end,
    EndElement = function()
      if depth >= 2 then
        local element = open[depth]
        open[depth] = nil
        local value = element.inner or table.concat(element.parts)
        if depth == 2 then
          result[element.name] = value
        else
          local siblings = open[depth - 1].inner
          local name = element.name
          if element.inner then
            if siblings[name] ~= nil and type(siblings[name]) ~= "table" then
              refuse(("<%s> appears twice"):format(short(name)))
            end
            local list = siblings[name] or {}
            list[#list + 1] = value
            siblings[name] = list
          elseif siblings[name] ~= nil then
            refuse(("<%s> appears twice"):format(short(name)))
          else
            siblings[name] = value
          end
        end
      end
      depth = depth - 1
    end,
    CharacterData = function(_, data)
      local element = open[depth]
      if element then
        if element.inner and data:find("%S") then refuse(("<%s> holds text and elements"):format(short(element.name))) end
        element.parts[#element.parts + 1] = data
      elseif data:find("%S") then
        refuse("text outside the fields of <xml>")
      end
    end,
  })
  local ok, err = pcall(function()
    local r1, msg, line = parser:parse(text)
    if not r1 then error(("not well-formed XML (%s, line %s)"):format(tostring(msg), tostring(line)), 0) end
    r1, msg, line = parser:parse()
    if not r1 then error(("not well-formed XML (%s, line %s)"):format(tostring(msg), tostring(line)), 0) end
  end)
  pcall(parser.close, parser)   -- raises on an unfinished document, already reported
  if not ok then return nil, problem or tostring(err) end
  if not seen_root then return nil, ("no <%s> element"):format(root) end
  return result
end

return xml
