--- Building a request: the target, the body and the headers, checked and
-- encoded once (prepare), then signed at each attempt (sign).  The bytes
-- signed are the bytes sent: whatever the transport or a server would
-- rewrite (dot segments, a fragment, a bare %, a 15-digit JSON number) is
-- encoded or refused here, before anything is queued.  The one exception is
-- a media upload (`file =`, wechatpay.media): its multipart body is sent and
-- its meta part alone is signed, as WeChat Pay wants.
--
--   local prepared = request.prepare(settings, "POST", "v3/multiuse/users/{openid}/coupons", opts)
--   local transport_request = request.sign(settings, prepared)
local cjson = require("cjson")
local core = require("wechatpay.core")
local config = require("wechatpay.config")
local errors = require("wechatpay.errors")
local headers = require("wechatpay.headers")
local media = require("wechatpay.media")
local retry = require("wechatpay.retry")

local request = {}

local raise = errors.raise

-- ---- the target --------------------------------------------------------------

local function percent_encode(value, keep)
  return (value:gsub(keep, function(c) return ("%%%02X"):format(c:byte()) end))
end

-- A % that does not start an escape is itself encoded: a server would
-- otherwise decode it differently from what was signed.
local function encode_bare_percent(value)
  return (value:gsub("%%(%x?%x?)", function(hex) if #hex < 2 then return "%25" .. hex end end))
end

-- Unreserved characters (RFC 3986) stay; everything else is encoded.
local ENCODE_SEGMENT = "[^%w%-%._~]"
-- {+name}: reserved characters and escapes stay, except # (it would end
-- the path: curl would not send what follows).
local ENCODE_RESERVED = "[^%w%-%._~:/%?%[%]@!%$&'%(%)%*%+,;=%%]"
-- Literal segments keep what a path may hold; bytes that may not (spaces,
-- non-ASCII, ? and #) are encoded so the target is what goes on the wire.
local ENCODE_LITERAL = "[^%w%-%._~!%$&'%(%)%*%+,;=:@%%]"

local math_type = math.type or function() return "float" end   -- LuaJIT: every number a double

--- number_text(value, what) -> the number as a path segment, query or
-- header value: an integer in full, a whole float without ".0" (lua-cjson
-- decodes ids as floats on Lua 5.4: 9856000, never "9856000.0"), any other
-- in the fewest digits that read back as it.  Raises on NaN, infinities and
-- a whole float of 2^53 or more, which may not be the number meant (on
-- LuaJIT every number is a float: 1234567890123456789 is ...784).
function request.number_text(value, what)
  if value ~= value or value == math.huge or value == -math.huge then
    raise(("%s is not a finite number"):format(what))
  end
  if math_type(value) == "integer" then return ("%d"):format(value) end
  if value % 1 == 0 then
    if math.abs(value) >= 2 ^ 53 then
      raise(("%s is a whole number of 2^53 or more held as a float, which may not be the number meant: "
        .. "give it as a string"):format(what))
    end
    return value == 0 and "0" or ("%.0f"):format(value)   -- -0.0 too
  end
  for digits = 15, 16 do
    local text = ("%." .. digits .. "g"):format(value)
    if tonumber(text) == value then return text end
  end
  return ("%.17g"):format(value)
end

local CALL_OPTIONS = { json = true, body = true, file = true, query = true, headers = true, timeout = true, retry = true }

-- The options of a call, v3's and APIv2's (xml, security): a path variable
-- of one of these names would be filled with the option (/v3/x/{query}
-- with query's text).
local OPTION_NAMES = { xml = true, security = true }
for name in pairs(CALL_OPTIONS) do OPTION_NAMES[name] = true end

local function template_value(path, name, opts)
  if OPTION_NAMES[name] then
    raise(("path variable {%s} of %s has the name of a call option, which would fill it: name it otherwise")
      :format(name, path))
  end
  local value = opts[name]
  if value == nil then
    raise(("missing path variable '%s' for %s: pass it as the request option %s = ..."):format(name, path, name))
  end
  if type(value) ~= "string" and type(value) ~= "number" then
    raise(("path variable '%s' must be a string or number, got %s"):format(name, type(value)))
  end
  if type(value) == "number" then value = request.number_text(value, ("path variable '%s'"):format(name)) end
  if value == "" then raise(("path variable '%s' is empty"):format(name)) end
  return value
end

local function literal(path, piece)
  if piece:find("[{}]") then
    raise(("malformed path template in %s: unmatched brace in '%s'"):format(path, piece))
  end
  -- sent encoded, it would reach another resource than the one meant
  local mark = piece:match("[?#]")
  if mark then
    raise(("path %s holds a '%s': give the query as the request option query = { ... } (or a string)")
      :format(path, mark))
  end
  return encode_bare_percent(percent_encode(piece, ENCODE_LITERAL))
end

--- dot_segment(path) -> "." or ".." when the path has one as a segment,
-- written as it is or percent-encoded ("%2e%2e"), else nil.  They are steps
-- in a path, not names: a server (or curl) resolves them, one that decodes
-- first as well, and the call would reach another resource than the one signed.
function request.dot_segment(path)
  for piece in (path .. "/"):gmatch("([^/]*)/") do
    local decoded = piece:gsub("%%2[eE]", ".")
    if decoded == "." or decoded == ".." then return piece end
  end
  return nil
end

--- empty_segment(path) -> true when the path has an empty segment
-- ("v3//x", "//v3/x", "v3/x//") or is empty: one leading "/" is the root,
-- and one trailing "/" is part of a few endpoints' names (see expand);
-- nothing else may be empty.  A server routes the path as written (WeChat
-- Pay answers 404), and collapsing it would send another path than given.
function request.empty_segment(path)
  local inner = path:gsub("^/", ""):gsub("/$", "")
  return inner == "" or ("/" .. inner .. "/"):find("//", 1, true) ~= nil
end

--- refuse_empty_segments(path, expanded [, who]): raises when expanded (the
-- path as it would be sent) has an empty segment, naming path; who ("chain")
-- prefixes the message.
function request.refuse_empty_segments(path, expanded, who)
  if not request.empty_segment(expanded) then return end
  local prefix = who and (who .. ": ") or ""
  if path:gsub("^/", "") == "" then
    raise(("%spath %q is empty: give the API path, \"v3/...\""):format(prefix, path))
  end
  local by_variable = expanded ~= path and not request.empty_segment(path)
  raise(("%spath %s has an empty segment%s: segments are joined by one \"/\" (a leading \"/\" and a "
    .. "trailing one are allowed)"):format(prefix, path,
    by_variable and (" once its variables are filled (" .. expanded .. ")") or ""))
end
local refuse_empty_segments = request.refuse_empty_segments

local function refuse_dot_segments(path, expanded, origin)
  local piece = request.dot_segment(expanded)
  if piece then
    raise(("%s of %s is the segment '%s', which a server resolves as a directory step"):format(origin, path, piece))
  end
end

local function expand_segment(path, segment, opts)
  local out, pos = {}, 1
  while true do
    local s, e, plus, name = segment:find("{(%+?)([%a_][%w_]*)}", pos)
    if not s then break end
    out[#out + 1] = literal(path, segment:sub(pos, s - 1))
    local value = template_value(path, name, opts)
    if plus == "+" then
      value = encode_bare_percent(percent_encode(value, ENCODE_RESERVED))
    else
      value = percent_encode(value, ENCODE_SEGMENT)
    end
    out[#out + 1] = value
    pos = e + 1
  end
  out[#out + 1] = literal(path, segment:sub(pos))
  local expanded = table.concat(out)
  refuse_dot_segments(path, expanded, "a path segment")
  return expanded
end

--- template_names(path) -> set of the {name} and {+name} variables.
function request.template_names(path)
  local names = {}
  for name in path:gmatch("{%+?([%a_][%w_]*)}") do names[name] = true end
  return names
end

--- expand(path, opts) -> "/v3/..." as sent and signed.  A trailing "/"
-- stays: a few endpoints end in one (POST /v3/applyment4sub/applyment/),
-- and without it WeChat Pay answers 404.
function request.expand(path, opts)
  refuse_empty_segments(path, path)
  local out = {}
  for segment in path:gmatch("[^/]+") do
    out[#out + 1] = expand_segment(path, segment, opts)
  end
  local trailing = (#out > 0 and path:find("/$")) and "/" or ""
  local expanded = "/" .. table.concat(out, "/") .. trailing
  refuse_empty_segments(path, expanded)   -- a {+name} value may hold "//" or end in "/"
  return expanded
end

--- segment(value) -> value as one literal path segment: every byte a
-- segment may not hold as data ("/", "%", "?", "#", braces, spaces,
-- non-ASCII...) percent-encoded, so an id indexed into a chain can never
-- add a segment, start a template or carry an escape the server decodes.
local ENCODE_DATA = "[^%w%-%._~!%$&'%(%)%*%+,;=:@]"
function request.segment(value)
  return percent_encode(value, ENCODE_DATA)
end

-- A byte a raw query string may not hold as it is (outside RFC 3986's
-- query characters): a pattern for string.find.
request.QUERY_CHARS = "[^%w%-%._~!%$&'%(%)%*%+,;=:@/%?%%]"

--- bare_percent(text) -> the byte of the first "%" that starts no %XX
-- escape, else nil (a server would decode something else than was signed).
function request.bare_percent(text)
  local at = text:find("%", 1, true)
  while at do
    if not text:find("^%%%x%x", at) then return at end
    at = text:find("%", at + 1, true)
  end
  return nil
end

local function query_string(query)
  local bad = query:find(request.QUERY_CHARS)
  if bad then
    raise(("query string holds %q at byte %d, which would not be sent as signed: "
      .. "percent-encode it, or give query as a table"):format(query:sub(bad, bad), bad))
  end
  local escape = request.bare_percent(query)
  if escape then
    raise(("query string holds a %% at byte %d that starts no %%XX escape"):format(escape))
  end
  return query ~= "" and query or nil
end

local function query_value(k, v)
  local tv = type(v)
  if tv == "number" then
    return request.number_text(v, ("query value of '%s'"):format(k))
  elseif tv == "string" or tv == "boolean" then
    return tostring(v)
  end
  raise(("query value of '%s' must be a string, number or boolean, got %s"):format(k, tv))
end

-- The items of an array value, refusing holes (ipairs would stop at the
-- first and silently drop the rest).
local function query_list(k, list)
  local n, count = #list, 0
  for i in pairs(list) do
    if type(i) ~= "number" or i % 1 ~= 0 or i < 1 or i > n then
      raise(("query value of '%s' must be a list without holes (index %s)"):format(k, tostring(i)))
    end
    count = count + 1
  end
  if count ~= n then raise(("query value of '%s' is a list with holes"):format(k)) end
  return list
end

--- encode_query(query) -> "a=1&b=2" | nil: a table's keys sorted, lists
-- repeated; a string passed as it is once checked.
function request.encode_query(query)
  if query == nil then return nil end
  if type(query) == "string" then return query_string(query) end
  if type(query) ~= "table" then raise(("query must be a table or a string, got %s"):format(type(query))) end
  local keys = {}
  for k in pairs(query) do
    if type(k) ~= "string" or k == "" then raise("query keys must be non-empty strings") end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local v = query[k]
    local items = type(v) == "table" and query_list(k, v) or { v }
    for _, item in ipairs(items) do
      out[#out + 1] = percent_encode(k, ENCODE_SEGMENT) .. "=" .. percent_encode(query_value(k, item), ENCODE_SEGMENT)
    end
  end
  if #out == 0 then return nil end
  return table.concat(out, "&")
end

-- ---- the body ----------------------------------------------------------------

-- lua-cjson writes numbers with at most 14 significant digits (2.1.0;
-- OpenResty's fork allows 16): use the most it allows, and refuse a number
-- it would round, rather than send another amount than the one given.
local json = cjson.new()
local JSON_DIGITS = 14
for _, digits in ipairs{ 16, 15 } do
  if pcall(json.encode_number_precision, digits) then JSON_DIGITS = digits break end
end
if JSON_DIGITS == 14 then json.encode_number_precision(14) end
local JSON_FORMAT = "%." .. JSON_DIGITS .. "g"

-- Fields WeChat Pay takes only as RSA-OAEP ciphertext (client:encrypt):
-- the real name and ID-document numbers under the names the coupon and
-- identity APIs give them.  Other APIs name such fields otherwise (a
-- receiver's `name`, `contact_id_number`, ...), which this check does not
-- know: encrypting those stays the caller's part.  Sent in plaintext they
-- would reach WeChat Pay's logs before being refused.
local ENCRYPTED_FIELDS = { user_name = true, id_card_number = true, user_id_card = true,
  id_card_name = true, id_doc_number = true }

-- OAEP ciphertext in standard base64: a 2048-bit key gives 344 characters.
local function looks_encrypted(text)
  return #text >= 344 and #text % 4 == 0 and text:find("^[%w+/]+=?=?$") ~= nil
end

-- Refuses a number lua-cjson would round and a field of ENCRYPTED_FIELDS
-- that is not ciphertext, naming the field and never its value (it may be
-- an ID number).
local function check_body(value, where, depth)
  if depth > 64 then return end   -- deeper than any API body: cjson refuses cycles itself
  for k, v in pairs(value) do
    local tv = type(v)
    if ENCRYPTED_FIELDS[k] and (tv == "number" or (tv == "string" and v ~= "" and not looks_encrypted(v))) then
      raise(("json %s.%s is not encrypted: WeChat Pay takes it only as RSA-OAEP ciphertext, "
        .. "made by client:encrypt(plaintext); nothing was sent"):format(where, k))
    elseif tv == "number" then
      if v == v and v ~= math.huge and v ~= -math.huge and tonumber(JSON_FORMAT:format(v)) ~= v then
        raise(("json %s.%s is a number lua-cjson cannot send exactly (it writes %d significant digits): "
          .. "give it as a string"):format(where, tostring(k), JSON_DIGITS))
      end
      -- exact, but written 1e+14: an integer field's parser refuses that
      if v % 1 == 0 and math.abs(v) >= 10 ^ JSON_DIGITS then
        raise(("json %s.%s is a whole number of %d digits or more, which lua-cjson writes with an exponent "
          .. "(1e+%d): give it as a string"):format(where, tostring(k), JSON_DIGITS + 1, JSON_DIGITS))
      end
    elseif tv == "table" then
      check_body(v, where .. "." .. tostring(k), depth + 1)
    end
  end
end

--- encode_json(value) -> text; raises on what JSON cannot carry exactly,
-- and on a sensitive field in plaintext.
function request.encode_json(value)
  check_body(value, "body", 1)
  local ok, text = pcall(json.encode, value)
  if not ok then raise("json cannot be encoded: " .. tostring(text):gsub("^[^:]*:%d+: ", "")) end
  return text
end

-- ---- the headers ---------------------------------------------------------------

-- Headers the client writes from the request itself: a caller's value
-- would desynchronise the connection or contradict the signature.
local OWNED = {
  authorization = "is made by the client from the request it signs",
  host = "is set from base_url",
  ["content-length"] = "is set by the client from the body it sends",
  ["transfer-encoding"] = "is set by the client from the body it sends",
  connection = "is managed by the client's connection pool",
  ["keep-alive"] = "is managed by the client's connection pool",
  ["proxy-connection"] = "is managed by the client's connection pool",
  expect = "is managed by the client",
  te = "is managed by the client",
  trailer = "is managed by the client",
  upgrade = "is managed by the client",
  ["proxy-authorization"] = "belongs in the proxy URL",
}

-- content_type: the default Content-Type of the body (nil without one);
-- multipart: the body is a media upload, whose Content-Type names its
-- boundary and cannot be given.
local function header_lines(settings, given, content_type, multipart)
  local defaults = {
    { "Accept", "application/json" },
    { "User-Agent", settings.user_agent },
  }
  if content_type then defaults[#defaults + 1] = { "Content-Type", content_type } end
  if settings.encryption_key_id then defaults[#defaults + 1] = { "Wechatpay-Serial", settings.encryption_key_id } end
  local seen, lines = {}, {}
  if given ~= nil then
    if type(given) ~= "table" then raise("headers must be a table of name -> value") end
    for name, value in pairs(given) do
      if type(name) ~= "string" or (type(value) ~= "string" and type(value) ~= "number") then
        raise("headers must map string names to string values")
      end
      if not headers.valid_name(name) then
        raise(("headers[%q]: a header name is a token: no space, colon or control character"):format(name))
      end
      local lower = name:lower()
      if OWNED[lower] then raise(("headers.%s %s"):format(name, OWNED[lower])) end
      if multipart and lower == "content-type" then
        raise(("headers.%s is set by the client for a file upload: it names the multipart boundary"):format(name))
      end
      if seen[lower] then raise(("headers.%s is given twice (names are case-insensitive)"):format(name)) end
      if type(value) == "number" then value = request.number_text(value, ("headers.%s"):format(name)) end
      if not headers.valid_value(value) then
        raise(("headers.%s: a value holds a line break or NUL"):format(name))
      end
      seen[lower] = true
      lines[#lines + 1] = name .. ": " .. value
    end
  end
  for _, pair in ipairs(defaults) do
    if not seen[pair[1]:lower()] then lines[#lines + 1] = pair[1] .. ": " .. pair[2] end
  end
  return lines
end

-- ---- prepare and sign -------------------------------------------------------------


local function check_options(path, opts)
  local variables
  for name in pairs(opts) do
    if not CALL_OPTIONS[name] then
      variables = variables or request.template_names(path)
      if not variables[name] then
        raise(("unknown request option '%s' for %s: the options are json, body, file, query, headers, "
          .. "timeout and retry, plus the path's {variables}"):format(tostring(name), path))
      end
    end
  end
end

--- prepare(settings, method, path, opts) -> prepared | nil, err: everything
-- that does not depend on the moment of sending.  Raises on a programmer
-- error; err (kind "file") for a file to upload that cannot be sent.
function request.prepare(settings, method, path, opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then raise("request options must be a table") end
  check_options(path, opts)
  local target = request.expand(path, opts)
  local query = request.encode_query(opts.query)
  if query then target = target .. "?" .. query end
  local body, signed_body, content_type, idempotent
  if opts.json ~= nil and opts.body ~= nil then raise("give json or body, not both") end
  if opts.file ~= nil then
    if opts.json ~= nil or opts.body ~= nil then
      raise("give file, or json or body, not both: an upload's body is the multipart form made from file")
    end
    if method ~= "POST" then raise(("file is uploaded with POST, not %s"):format(method)) end
    local upload, err = media.prepare(path, opts.file)
    if not upload then return nil, err end
    -- upload.meta is the meta part's body, byte for byte (media.multipart
    -- builds the part from this very string): it is what is signed
    body, signed_body, content_type = upload.body, upload.meta, upload.content_type
    -- WeChat Pay answers the same media_id for the same bytes: a replay
    -- duplicates nothing.
    idempotent = true
  elseif opts.json ~= nil then
    if type(opts.json) ~= "table" then raise("json must be a table") end
    body = request.encode_json(opts.json)
  elseif opts.body ~= nil then
    if type(opts.body) ~= "string" then raise("body must be a string") end
    body = opts.body
  else
    body = ""
  end
  if not content_type and body ~= "" then content_type = "application/json" end
  local timeout = settings.timeout
  if opts.timeout ~= nil then timeout = config.number(opts.timeout, "timeout", config.RANGES.timeout, "request") end
  return {
    method = method,
    target = target,
    body = body,
    signed_body = signed_body,   -- nil: the body itself is signed
    headers = header_lines(settings, opts.headers, content_type, signed_body ~= nil),
    timeout = timeout,
    idempotent = idempotent or retry.is_idempotent(method, type(opts.json) == "table" and opts.json or nil, body),
    retry = config.retry_policy(opts.retry, settings.retry, "request"),
  }
end

--- sign(settings, prepared) -> the transport request, signed now with a
-- fresh timestamp and nonce: every attempt of a retried call is signed anew.
-- The body is signed, or, for an upload, the meta part it holds.
function request.sign(settings, prepared)
  local lines = {}
  for i = 1, #prepared.headers do lines[i] = prepared.headers[i] end
  lines[#lines + 1] = "Authorization: " .. core.authorization(settings.private_key,
    settings.mchid, settings.serial, prepared.method, prepared.target, prepared.signed_body or prepared.body)
  return {
    method = prepared.method,
    url = settings.base_url .. prepared.target,
    headers = lines,
    body = prepared.body ~= "" and prepared.body or nil,
    timeout = prepared.timeout,
    connect_timeout = settings.connect_timeout,
    on_chunk = prepared.on_chunk,   -- a streamed download's consumer (client:download)
  }
end

return request
