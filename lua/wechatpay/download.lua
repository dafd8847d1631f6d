--- Bill downloads: what to fetch, where it may be
-- fetched from, and the consumer that inflates, hashes and stores the
-- bytes as they arrive, so a bill never sits whole in memory.
--
--   local source = download.source(bill)                 -- url, hash_type, hash_value
--   local target = download.target(source.url, base_url) -- "/v3/billdownload/file?token=..." | nil, err
--   local consumer = download.consumer(source, to)       -- to: a path or function(bytes)
--   transport request.on_chunk = consumer.on_chunk; then consumer:finish() or consumer:abort(err)
--
-- The hash WeChat Pay gives is of the bill itself: of the inflated bytes
-- when the file comes gzipped (tar_type = "GZIP"), as the official Java SDK
-- checks it.  A file sink writes to a temporary name in the same directory
-- and renames it over `to` only once the hash matches.
local core = require("wechatpay.core")
local errors = require("wechatpay.errors")
local request = require("wechatpay.request")

local download = {}

local HASHES = { SHA1 = "sha1", SHA256 = "sha256" }

-- The URL without its query (the token is a credential for the file).
local function shown(url)
  return (tostring(url):match("^[^?#]*"))
end

--- source(bill) -> { url, hash_type, hash_value } | nil, err
-- bill: the first call's response object, its decoded table, or any table
-- with download_url (or url, as the stock flows name it), hash_type and
-- hash_value.  Raises on what is not such a thing.
function download.source(bill)
  if type(bill) == "table" and type(bill.json) == "function" and bill.status ~= nil then
    local decoded, why = bill:json()
    if type(decoded) ~= "table" then
      return nil, errors.new("malformed", "the bill response holds no download URL: " .. tostring(why))
    end
    bill = decoded
  end
  if type(bill) ~= "table" then
    errors.raise("download: the bill must be the response of the bill call, its decoded table, or "
      .. "{ download_url =, hash_type =, hash_value = }, got " .. type(bill))
  end
  local url = bill.download_url or bill.url
  if type(url) ~= "string" or type(bill.hash_type) ~= "string" or type(bill.hash_value) ~= "string" then
    errors.raise("download: the bill needs download_url (or url), hash_type and hash_value as strings")
  end
  local hash = HASHES[bill.hash_type:upper()]
  if not hash then
    return nil, errors.new("integrity", ("hash_type %q is not one this client checks (SHA1, SHA256): the bill "
      .. "at %s would be unverified"):format(bill.hash_type:sub(1, 32), shown(url)))
  end
  if not bill.hash_value:match("^%x+$") then
    return nil, errors.new("integrity", "hash_value is not hexadecimal: the bill at " .. shown(url)
      .. " cannot be checked")
  end
  return { url = url, hash_type = bill.hash_type:upper(), hash = hash, hash_value = bill.hash_value:lower() }
end

-- scheme, host, port of an absolute URL (lower case; the default port of
-- the scheme filled in), and the rest.
local function origin(url)
  local scheme, authority, rest = url:match("^(%a[%w+.-]*)://([^/?#]*)(.*)$")
  if not scheme then return nil end
  scheme = scheme:lower()
  local host, port = authority:match("^(%[[%x:.]+%]):?(%d*)$")
  if not host then host, port = authority:match("^([^:@]+):?(%d*)$") end
  if not host then return nil end
  port = tonumber(port) or (scheme == "https" and 443 or scheme == "http" and 80 or nil)
  return scheme .. "://" .. host:lower() .. ":" .. tostring(port), rest
end

-- What a download URL's path may hold to be sent exactly as it reads and
-- signed as sent: no braces (path variables), spaces, controls or non-ASCII.
-- Its query is held to request.lua's rules for a raw query.
local PATH_CHARS = "[^%w%-%._~!%$&'%(%)%*%+,;=:@%%/]"

-- Why a target cannot be requested as it is, or nil.
local function unsendable(path, query)
  if path:find(PATH_CHARS) or (query and query:find(request.QUERY_CHARS)) then
    return "holds a byte that would not be sent as it reads"
  end
  if request.bare_percent(path .. "?" .. (query or "")) then return "holds a % that starts no %XX escape" end
  if request.empty_segment(path) then return "holds an empty path segment" end
  local piece = request.dot_segment(path)
  if piece then return "holds a '" .. piece .. "' path segment" end
  return nil
end

--- target(url, base_url) -> "/path?query" to request on the client's own
-- origin | nil, err (kind "malformed").  base_url is a string or a list of
-- them.  The URL comes from WeChat Pay's answer, so one of another scheme,
-- host or port (the signed GET carries the merchant's Authorization
-- header, which goes nowhere but to the API), or one whose path could not
-- be sent exactly as it reads, is an error, shown without its token.
function download.target(url, base_url)
  local own, rest = origin(url)
  local allowed = type(base_url) == "table" and base_url or { base_url }
  for _, base in ipairs(allowed) do
    if own and own == origin(base) and rest:find("^/") then
      local target = rest:gsub("#.*$", "")
      local path, query = target:match("^([^?]*)%??(.*)$")
      local why = unsendable(path, query ~= "" and query or nil)
      if why then
        return nil, errors.new("malformed", ("the bill's download URL %s %s: it is not requested"):format(shown(url), why))
      end
      return target
    end
  end
  local names = {}
  for i, base in ipairs(allowed) do names[i] = shown(base) end
  return nil, errors.new("malformed", ("the bill's download URL %s is not on the client's API origin (%s): the "
    .. "download is signed, and the Authorization header is never sent to another host"):format(shown(url),
    table.concat(names, ", ")))
end

--- split(target) -> path without its leading "/", query string | nil
function download.split(target)
  local path, query = target:match("^/([^?]*)%??(.*)$")
  return path, query ~= "" and query or nil
end

-- ---- sinks ------------------------------------------------------------------

-- A file sink: a temporary file beside `to`, renamed over it by commit.
-- It is made 0600 (or with the permissions of the bill it replaces), and
-- removed when its owner is collected without having committed it: a download
-- inside nginx can be killed where no Lua code runs again.
local function file_sink(to)
  local dir = to:match("^(.*/)") or ""
  local name = to:sub(#dir + 1)
  if name == "" then errors.raise("download: to = " .. to .. " names a directory, not a file") end
  local suffix = core.random_bytes(6):gsub(".", function(c) return ("%02x"):format(c:byte()) end)
  local temp = dir .. "." .. name .. "." .. suffix .. ".part"
  local guard, err = core.temp_file(temp, to)
  if not guard then
    return nil, errors.new("file", "cannot write the bill to " .. to .. ": " .. tostring(err) .. "; nothing was sent")
  end
  local sink = { path = to, temp = temp, guard = guard }
  function sink.write(bytes)
    return guard:write(bytes)
  end
  -- temp:commit: synced, given its final permissions, renamed over `to`
  -- (a crash leaves the old bill or the whole new one), the directory synced
  function sink.commit()
    local committed, cerr = guard:commit(to)
    if not committed then return nil, "cannot put the bill at " .. to .. ": " .. cerr end
    return true
  end
  function sink.abort()
    guard:remove()
  end
  return sink
end

-- A function sink: every inflated piece, in order, before the hash is
-- known (the caller discards what it got when download fails).  What it
-- raises ends the download as "internal", except an interrupt (Ctrl-C),
-- which goes on up: the transport cancels the transfer and raises it again.
local function function_sink(fn)
  local sink = {}
  function sink.write(bytes)
    local ok, raised = pcall(fn, bytes)
    if not ok and errors.is_interrupt(raised) then error(raised, 0) end
    if not ok then return nil, raised, true end
    return true
  end
  function sink.commit() return true end
  function sink.abort() end
  return sink
end

-- ---- the consumer -------------------------------------------------------------

local GZIP_MAGIC = "\31\139"
-- A CSV bill deflates about tenfold; a stream that inflates a hundredfold
-- past its first 16 MiB is a gzip bomb (deflate reaches 1032 to 1 on
-- zeros), stopped before it fills the disk.
download.MAX_INFLATION = 100
local INFLATION_FREE = 16 * 1024 * 1024

--- consumer(source, to) -> consumer | nil, err
-- consumer.on_chunk(bytes) -> true to go on (the transport's callback);
-- consumer:finish() -> info | nil, err once the transfer succeeded;
-- consumer:abort() after any failure.  Nothing is left on disk by a failure;
-- a file is synced to disk (temp:commit) before it is renamed over `to`.
function download.consumer(source, to)
  local sink, err
  if type(to) == "string" and to ~= "" then
    sink, err = file_sink(to)
    if not sink then return nil, err end
  elseif type(to) == "function" then
    sink = function_sink(to)
  else
    errors.raise("download: `to` must be a file path or a function(bytes), got " .. type(to))
  end
  local hasher = core.hasher(source.hash)
  local inflater, head = nil, ""
  local self = { bytes = 0, received = 0 }

  local function fail(kind, message, raised)
    if not self.err then
      self.err = raised and errors.from_raise(raised, "in the download's sink")
        or errors.new(kind, message .. " (" .. shown(source.url) .. ")")
    end
    return false
  end

  local function emit(bytes)
    if bytes == "" then return true end
    hasher:update(bytes)
    self.bytes = self.bytes + #bytes
    local ok, why, raised = sink.write(bytes)
    if not ok then return fail("file", tostring(why), raised and why) end
    return true
  end

  local function inflate(bytes)
    local pos = 1
    repeat
      local out, next_pos, more = inflater:update(bytes, pos)
      if not out then return fail("integrity", next_pos .. " after " .. self.received .. " bytes") end
      if not emit(out) then return false end
      if self.bytes > INFLATION_FREE and self.bytes > download.MAX_INFLATION * self.received then
        return fail("integrity", ("the gzip stream inflated %d bytes into %d, more than %d times: not a bill")
          :format(self.received, self.bytes, download.MAX_INFLATION))
      end
      pos = next_pos
    until pos > #bytes and not more
    return true
  end

  -- Whether the body is gzip is told by its first two bytes (a CSV bill
  -- never starts with 0x1f), not by the tar_type asked for.
  local function take(bytes)
    if head then
      head = head .. bytes
      if #head < 2 then return true end
      bytes, head = head, nil
      if bytes:sub(1, 2) == GZIP_MAGIC then inflater = core.inflater() end
    end
    if inflater then return inflate(bytes) end
    return emit(bytes)
  end

  function self.on_chunk(bytes)
    if self.err then return false end
    self.received = self.received + #bytes
    local before = self.bytes
    local more = take(bytes)
    -- Each piece becomes garbage at once; LuaJIT's collector, paced by
    -- object counts, would let hundreds of MB of them pile up on a large
    -- bill.  A step as large as what this piece allocated keeps pace.
    collectgarbage("step", math.ceil((#bytes + self.bytes - before) / 1024))
    return more
  end

  function self.finish()
    if not self.err and head and head ~= "" then
      local short = head   -- a one-byte body never got past the gzip check
      head = nil
      emit(short)
    end
    if not self.err and inflater then
      local ended, why = inflater:finish()
      if not ended then fail("integrity", why .. " after " .. self.received .. " bytes") end
    end
    local actual = not self.err and hasher:final()
    if actual and actual ~= source.hash_value then
      fail("integrity", ("%s of the bill is %s, not the %s WeChat Pay gave: the file is damaged or incomplete")
        :format(source.hash_type, actual, source.hash_value))
    end
    if not self.err then
      local ok, why = sink.commit()
      if not ok then fail("file", why) end
    end
    if self.err then return self.abort() end
    hasher:close()
    return { bytes = self.bytes, hash_type = source.hash_type, hash_value = actual, path = sink.path,
             gzip = inflater ~= nil, received = self.received }
  end

  --- abort([err]) -> nil, err: removes the temporary file; the first error
  -- wins.  Without one (an interrupt, a raise) a sentinel is set, so a
  -- piece that still arrives is refused at once, never written.
  function self.abort(failure)
    if not self.err then
      self.err = failure or errors.new("internal", "the download was aborted (" .. shown(source.url) .. ")")
    end
    if not self.aborted then   -- once: finish() aborts itself on a failure, the caller may again
      self.aborted = true
      sink.abort()
      if inflater then inflater:close() end
      hasher:close()
    end
    return nil, self.err
  end

  return self
end

return download
