--- Media upload (WeChat Pay takes a multipart/form-data POST of a "meta"
-- JSON part, which alone is signed, and the file): the file of a `file = {...}`
-- request option read, typed by its magic bytes, held to the endpoint's
-- limits, and built into the multipart/form-data body WeChat Pay wants.
--
--   local upload, err = media.prepare("v3/merchant/media/upload", { path = "/tmp/a.jpg" })
--   upload.body          the multipart body sent
--   upload.meta          {"filename":"a.jpg","sha256":"..."}: the bytes signed, a part of body
--   upload.content_type  "multipart/form-data; boundary=..."
--
-- Raises on a programmer error (a bad option, a filename that cannot be
-- put into a header); a file that cannot be read, is empty, of a type the
-- endpoint does not take or over its limit is `nil, err` (kind "file"),
-- before anything is sent.
local core = require("wechatpay.core")
local errors = require("wechatpay.errors")
local text = require("wechatpay.text")

local media = {}

local raise = errors.raise

local MB = 1024 * 1024

--- The largest file of each kind, in bytes (WeChat Pay: images 2 MB, videos 5 MB).
media.LIMITS = { image = 2 * MB, video = 5 * MB }

-- The types WeChat Pay lists, as sent in the file part's Content-Type.
local TYPES = {
  jpeg = { name = "JPEG", content_type = "image/jpeg", kind = "image" },
  png = { name = "PNG", content_type = "image/png", kind = "image" },
  bmp = { name = "BMP", content_type = "image/bmp", kind = "image" },
  gif = { name = "GIF", content_type = "image/gif", kind = "image" },
  mp4 = { name = "MP4", content_type = "video/mp4", kind = "video" },
  mov = { name = "MOV", content_type = "video/quicktime", kind = "video" },
  m4v = { name = "M4V", content_type = "video/x-m4v", kind = "video" },
  f4v = { name = "F4V", content_type = "video/x-f4v", kind = "video" },
  avi = { name = "AVI", content_type = "video/x-msvideo", kind = "video" },
  wmv = { name = "WMV", content_type = "video/x-ms-wmv", kind = "video" },
  mpeg = { name = "MPEG", content_type = "video/mpeg", kind = "video" },
  mkv = { name = "MKV", content_type = "video/x-matroska", kind = "video" },
  flv = { name = "FLV", content_type = "video/x-flv", kind = "video" },
  rmvb = { name = "RMVB", content_type = "application/vnd.rn-realmedia-vbr", kind = "video" },
}

local IMAGES = { "jpeg", "png", "bmp" }
local VIDEOS = { "mp4", "mov", "m4v", "f4v", "avi", "wmv", "mpeg", "mkv", "flv", "rmvb" }

-- The filename suffixes WeChat Pay wants for each type (any case), and
-- the longest name it takes (its meta's filename is string[1,128]).
local SUFFIXES = { jpeg = { "jpg", "jpeg" }, png = { "png" }, bmp = { "bmp" } }
media.MAX_FILENAME = 128

--- The upload endpoints WeChat Pay documents, and the types each takes.
-- Any other path given `file` takes every type known here, each kind up
-- to its limit: WeChat Pay then judges the type.
media.ENDPOINTS = {
  ["v3/merchant/media/upload"] = IMAGES,
  ["v3/marketing/favor/media/image-upload"] = IMAGES,
  ["v3/merchant-service/images/upload"] = IMAGES,
  ["v3/merchant/media/video_upload"] = VIDEOS,
}
local ANY = { "jpeg", "png", "bmp", "gif", "mp4", "mov", "m4v", "f4v", "avi", "wmv", "mpeg", "mkv", "flv", "rmvb" }

-- ---- magic bytes ------------------------------------------------------------

local function le32(s, i)
  local a, b, c, d = s:byte(i, i + 3)
  return a + b * 256 + c * 65536 + d * 16777216
end

local function be32(s, i)
  local a, b, c, d = s:byte(i, i + 3)
  return d + c * 256 + b * 65536 + a * 16777216
end

-- The header sizes of the BMP info headers in use (core, v1..v5): two
-- bytes "BM" alone would take any text starting with them.
local BMP_INFO_SIZES = { [12] = true, [40] = true, [52] = true, [56] = true, [64] = true, [108] = true, [124] = true }

-- ISO base media brands (the `ftyp` box): which container a brand means.
local FTYP_BRANDS = {
  ["isom"] = "mp4", ["iso2"] = "mp4", ["iso3"] = "mp4", ["iso4"] = "mp4", ["iso5"] = "mp4", ["iso6"] = "mp4",
  ["mp41"] = "mp4", ["mp42"] = "mp4", ["avc1"] = "mp4", ["dash"] = "mp4", ["MSNV"] = "mp4",
  ["qt  "] = "mov",
  ["M4V "] = "m4v", ["M4VH"] = "m4v", ["M4VP"] = "m4v",
  ["F4V "] = "f4v", ["F4P "] = "f4v",
}
-- QuickTime files from before `ftyp` start with one of these atoms.
local QUICKTIME_ATOMS = { moov = true, mdat = true, wide = true, pnot = true }

local ASF_HEADER = "\48\38\178\117\142\102\207\17\166\217\0\170\0\98\206\108"

--- detect(content) -> type key ("jpeg", "mp4", ...) | nil, from the first bytes.
function media.detect(content)
  local head = content:sub(1, 64)
  if head:sub(1, 3) == "\255\216\255" then return "jpeg" end
  if head:sub(1, 8) == "\137PNG\r\n\26\n" then return "png" end
  if head:sub(1, 6) == "GIF87a" or head:sub(1, 6) == "GIF89a" then return "gif" end
  if head:sub(1, 2) == "BM" and #head >= 18 and BMP_INFO_SIZES[le32(head, 15)] then return "bmp" end
  local box = head:sub(5, 8)
  if box == "ftyp" then return FTYP_BRANDS[head:sub(9, 12)] end
  if QUICKTIME_ATOMS[box] and be32(head, 1) >= 8 then return "mov" end
  if head:sub(1, 4) == "RIFF" and head:sub(9, 12) == "AVI " then return "avi" end
  if head:sub(1, 16) == ASF_HEADER then return "wmv" end
  if head:sub(1, 4) == "\0\0\1\186" or head:sub(1, 4) == "\0\0\1\179" then return "mpeg" end
  if head:sub(1, 4) == "\26\69\223\163" and head:find("matroska", 5, true) then return "mkv" end
  if head:sub(1, 4) == "FLV\1" then return "flv" end
  if head:sub(1, 4) == ".RMF" then return "rmvb" end
  return nil
end

--- content_type(content) -> "image/png" | nil
function media.content_type(content)
  local key = media.detect(content)
  return key and TYPES[key].content_type or nil
end

-- ---- the endpoint's rules ---------------------------------------------------

local function endpoint_of(path)
  local key = path:gsub("^/+", ""):gsub("/+$", "")
  return media.ENDPOINTS[key] or ANY, key
end

local function names_of(accepted)
  local names = {}
  for i, key in ipairs(accepted) do names[i] = TYPES[key].name end
  return table.concat(names, ", ")
end

local function largest_limit(accepted)
  local largest = 0
  for _, key in ipairs(accepted) do largest = math.max(largest, media.LIMITS[TYPES[key].kind]) end
  return largest
end

local function megabytes(n)
  return ("%g MB"):format(n / MB)
end

local function file_error(message, fields)
  return errors.new("file", message, fields)
end

-- ---- the file option ----------------------------------------------------------

local FILE_OPTIONS = { path = true, content = true, filename = true }

-- A filename goes into the file part's Content-Disposition header and,
-- as it is, into the signed meta JSON: what would end the header, the
-- quoted string or the JSON string is refused rather than rewritten, so
-- WeChat Pay sees the name the caller gave.
local function check_filename(filename, origin)
  if type(filename) ~= "string" then raise(("file.filename must be a string, got %s"):format(type(filename))) end
  if filename == "" then raise("file.filename is empty") end
  if not text.is_utf8(filename) then
    raise(("%s is not UTF-8: it is sent in the signed meta JSON, which must be UTF-8 (a name in GBK, say)%s")
      :format(origin, origin == "file.filename" and "" or ": give file.filename"))
  end
  if text.length(filename) > media.MAX_FILENAME then
    raise(("%s has %d characters: WeChat Pay takes at most %d%s"):format(origin, text.length(filename),
      media.MAX_FILENAME, origin == "file.filename" and "" or ": give file.filename"))
  end
  local bad = filename:find('[%z\1-\31\127"\\]')
  if bad then
    raise(("%s holds a %s at byte %d: a filename goes into a multipart header and the signed meta JSON, "
      .. "and may not hold quotes, backslashes, line breaks or other control characters%s")
      :format(origin, filename:sub(bad, bad) == '"' and "quote" or filename:sub(bad, bad) == "\\" and "backslash"
        or ("control character (byte %d)"):format(filename:byte(bad)), bad,
        origin == "file.filename" and "" or ": give file.filename"))
  end
  return filename
end

local function check_file_option(file)
  if type(file) ~= "table" then raise(("file must be a table { path = } or { content =, filename = }, got %s"):format(type(file))) end
  for name in pairs(file) do
    if not FILE_OPTIONS[name] then
      raise(("unknown file option '%s': the options are path, content and filename"):format(tostring(name)))
    end
  end
  if file.path ~= nil and file.content ~= nil then raise("file: give path or content, not both") end
  if file.path == nil and file.content == nil then raise("file: give path (a file to read) or content (its bytes)") end
  if file.path ~= nil then
    if type(file.path) ~= "string" or file.path == "" then raise("file.path must be a non-empty string") end
    if file.path:find("%z") then raise("file.path holds a NUL byte") end
    if file.filename ~= nil then return check_filename(file.filename, "file.filename") end
    local base = file.path:match("([^/]+)/*$")
    if not base then raise(("file.path %q names no file: give file.filename"):format(file.path)) end
    return check_filename(base, ("the base name of file.path (%q)"):format(base))
  end
  if type(file.content) ~= "string" then raise(("file.content must be a string of bytes, got %s"):format(type(file.content))) end
  if file.filename == nil then raise("file.filename is required with file.content (e.g. \"a.png\")") end
  return check_filename(file.filename, "file.filename")
end

-- The bytes of file.path, at most max + 1 of them (one more shows the file
-- is over the limit without reading all of a huge one).  The handle is
-- closed on every path.  -> bytes, size (nil when unknown) | nil, err
local function read_path(path, max)
  local handle, open_err = io.open(path, "rb")
  if not handle then return nil, file_error(("cannot open file.path: %s"):format(open_err), { path = path }) end
  local content, read_err = handle:read(max + 1)
  local size
  if content and #content > max then size = handle:seek("end") end
  handle:close()
  if content == nil and read_err then
    return nil, file_error(("cannot read file.path %s: %s"):format(path, read_err), { path = path })
  end
  return content or "", size
end

-- ---- the multipart body -------------------------------------------------------

local CRLF = "\r\n"
local BOUNDARY_ATTEMPTS = 8

-- A random boundary, drawn again while the file holds it: a boundary in
-- the content would end the part early.
local function boundary_for(content, meta)
  for _ = 1, BOUNDARY_ATTEMPTS do
    local boundary = "wechatpay-lua-" .. core.random_bytes(16):gsub(".", function(c) return ("%02x"):format(c:byte()) end)
    if not content:find(boundary, 1, true) and not meta:find(boundary, 1, true) then return boundary end
  end
  error("wechatpay.media: no boundary absent from the content after " .. BOUNDARY_ATTEMPTS .. " random draws")
end

--- meta_json(filename, sha256_hex) -> the meta part's JSON, written by
-- hand: the filename has nothing to escape (check_filename), and lua-cjson
-- would write '/' as '\/', which the signed bytes must not depend on.
function media.meta_json(filename, sha256_hex)
  return '{"filename":"' .. filename .. '","sha256":"' .. sha256_hex .. '"}'
end

--- multipart(meta, filename, file_content_type, content) -> body, boundary
function media.multipart(meta, filename, file_content_type, content)
  local boundary = boundary_for(content, meta)
  local body = table.concat{
    "--", boundary, CRLF,
    'Content-Disposition: form-data; name="meta"', CRLF,
    "Content-Type: application/json", CRLF,
    CRLF,
    meta, CRLF,
    "--", boundary, CRLF,
    'Content-Disposition: form-data; name="file"; filename="', filename, '"', CRLF,
    "Content-Type: ", file_content_type, CRLF,
    CRLF,
    content, CRLF,
    "--", boundary, "--", CRLF,
  }
  return body, boundary
end

-- A documented endpoint wants the name to end in a suffix of a type it
-- takes (a web framework's temporary file has none): raised before the
-- file is read, as any other fault of the name.
local function check_suffix(filename, accepted, endpoint, file)
  if accepted == ANY then return end
  local suffix = (filename:match("%.([%w]+)$") or ""):lower()
  local wanted = {}
  for _, key in ipairs(accepted) do
    for _, s in ipairs(SUFFIXES[key] or { key }) do
      if s == suffix then return end
      wanted[#wanted + 1] = "." .. s
    end
  end
  raise(("%s: the filename %q must end in %s (WeChat Pay judges the name too)%s"):format(endpoint,
    filename:sub(1, 64), table.concat(wanted, ", "), file.filename and "" or ": give file.filename, e.g. \"a.png\""))
end

--- prepare(path, file) -> { body, meta, content_type, file_content_type,
-- filename, size, sha256 } | nil, err (kind "file").  Raises on a bad option.
function media.prepare(path, file)
  local filename = check_file_option(file)
  local accepted, endpoint = endpoint_of(path)
  check_suffix(filename, accepted, endpoint, file)
  local max = largest_limit(accepted)
  local content, size = file.content, file.content and #file.content
  local shown = file.path or filename
  if file.path then
    local err
    content, err = read_path(file.path, max)
    if not content then return nil, err end
    size = err
  end
  if content == "" then return nil, file_error(("%s is empty"):format(shown), { size = 0 }) end
  local key = media.detect(content)
  local allowed = false
  for _, k in ipairs(accepted) do if k == key then allowed = true end end
  if not allowed then
    local found = key and ("a %s file"):format(TYPES[key].name) or "none of them"
    return nil, file_error(("%s takes %s files; %s is %s (judged by its first bytes, not its name)")
      :format(endpoint, names_of(accepted), shown, found),
      { detected = key and TYPES[key].content_type or nil })
  end
  local kind = TYPES[key].kind
  local limit = media.LIMITS[kind]
  if #content > limit then
    -- a file read up to max + 1 bytes whose size seek could not tell
    local total = size or (#content <= max and #content) or nil
    local told = total and ("%d bytes"):format(total) or ("over %d bytes"):format(max)
    return nil, file_error(("%s takes %s files of at most %s (%d bytes); %s is %s")
      :format(endpoint, kind, megabytes(limit), limit, shown, told), { limit = limit, size = total })
  end
  local sha256 = core.sha256(content)
  local meta = media.meta_json(filename, sha256)
  local file_content_type = TYPES[key].content_type
  local body, boundary = media.multipart(meta, filename, file_content_type, content)
  return {
    body = body,
    meta = meta,
    content_type = "multipart/form-data; boundary=" .. boundary,
    file_content_type = file_content_type,
    filename = filename,
    size = #content,
    sha256 = sha256,
  }
end

return media
