-- Media upload endpoints, worker side: WeChat Pay takes a multipart/form-data
-- POST of a "meta" part (JSON: filename, sha256 of the file) and a "file"
-- part.  Here: a parser of the mock's own, the checks WeChat Pay makes
-- (meta JSON, the file's sha256, its type by magic bytes, its size), and a
-- record of every upload for the specs (server:uploads(), server:media(id)).
--
-- The Authorization signature covers the meta part only: handler.lua parses
-- the form first (media.parse) and gives auth.verify the meta part's bytes.
local cjson = require("cjson.safe")
local digest = require("openssl.digest")
local response = require("wechatpay.mock.response")
local state = require("wechatpay.mock.state")
local util = require("wechatpay.mock.util")
local hex = util.hex

local media = {}

local MB = 1024 * 1024

local IMAGE = { kind = "image", limit = 2 * MB, types = { "JPEG", "PNG", "BMP" } }
local VIDEO = { kind = "video", limit = 5 * MB,
  types = { "MP4", "MOV", "M4V", "F4V", "AVI", "WMV", "MPEG", "MKV", "FLV", "RMVB" } }

--- The upload paths the mock serves, and what each takes.
media.ENDPOINTS = {
  ["/v3/merchant/media/upload"] = IMAGE,
  ["/v3/marketing/favor/media/image-upload"] = IMAGE,
  ["/v3/merchant-service/images/upload"] = IMAGE,
  ["/v3/merchant/media/video_upload"] = VIDEO,
}

-- The Content-Type a client may declare for each type (some have two in use).
local MIME = {
  JPEG = { ["image/jpeg"] = true, ["image/jpg"] = true },
  PNG = { ["image/png"] = true },
  BMP = { ["image/bmp"] = true, ["image/x-ms-bmp"] = true },
  MP4 = { ["video/mp4"] = true },
  MOV = { ["video/quicktime"] = true },
  M4V = { ["video/x-m4v"] = true, ["video/mp4"] = true },
  F4V = { ["video/x-f4v"] = true, ["video/mp4"] = true },
  AVI = { ["video/x-msvideo"] = true, ["video/avi"] = true },
  WMV = { ["video/x-ms-wmv"] = true },
  MPEG = { ["video/mpeg"] = true },
  MKV = { ["video/x-matroska"] = true },
  FLV = { ["video/x-flv"] = true },
  RMVB = { ["application/vnd.rn-realmedia-vbr"] = true },
}

-- The type of a file by its first bytes, written apart from the client's
-- detection so that the two can disagree.
local function file_type(bytes)
  local function at(offset, text) return bytes:sub(offset, offset + #text - 1) == text end
  if at(1, "\xFF\xD8\xFF") then return "JPEG" end
  if at(1, "\x89PNG\r\n\x1A\n") then return "PNG" end
  if at(1, "BM") and #bytes >= 26 then return "BMP" end
  if at(1, "GIF8") then return "GIF" end
  if at(5, "ftyp") then
    local brand = bytes:sub(9, 12)
    if brand == "qt  " then return "MOV" end
    if brand:sub(1, 3) == "M4V" then return "M4V" end
    if brand:sub(1, 3) == "F4V" or brand == "F4P " then return "F4V" end
    if brand:find("^iso") or brand:find("^mp4") or brand == "avc1" or brand == "dash" or brand == "MSNV" then
      return "MP4"
    end
    return nil
  end
  if at(5, "moov") or at(5, "mdat") or at(5, "wide") or at(5, "pnot") then return "MOV" end
  if at(1, "RIFF") and at(9, "AVI ") then return "AVI" end
  if at(1, "\x30\x26\xB2\x75\x8E\x66\xCF\x11\xA6\xD9\x00\xAA\x00\x62\xCE\x6C") then return "WMV" end
  if at(1, "\0\0\1\xBA") or at(1, "\0\0\1\xB3") then return "MPEG" end
  if at(1, "\x1A\x45\xDF\xA3") and bytes:sub(1, 64):find("matroska", 1, true) then return "MKV" end
  if at(1, "FLV\1") then return "FLV" end
  if at(1, ".RMF") then return "RMVB" end
  return nil
end

local function param_error(message, field)
  return response.error(400, "PARAM_ERROR", message, field and { field = field, location = "body" } or nil)
end

local function sha256_hex(bytes)
  local md = digest.new("sha256")
  md:update(bytes)
  return hex(md:final())
end

-- 'form-data; name="file"; filename="a.jpg"' -> { name =, filename = }
local function disposition(value)
  if not value or not value:lower():find("^%s*form%-data") then return nil end
  local out = {}
  for key, quoted in value:gmatch(';%s*([%w_%-]+)="([^"]*)"') do out[key:lower()] = quoted end
  return out
end

-- One part's header lines -> { name, filename, content_type } | nil, err
local function part_headers(head)
  local found = {}
  for line in head:gmatch("(.-)\r\n") do
    local name, value = line:match("^([%w%-]+):%s*(.-)%s*$")
    if not name then return nil, "malformed part header line" end
    found[name:lower()] = value
  end
  local d = disposition(found["content-disposition"])
  if not d or not d.name then return nil, "a part without Content-Disposition: form-data; name=..." end
  return { name = d.name, filename = d.filename, content_type = found["content-type"] }
end

--- parse(content_type_header, body) -> { meta = part, file = part } | nil, err
-- A part: { name, filename, content_type, body }.
function media.parse(content_type, body)
  local boundary = type(content_type) == "string"
    and content_type:match('^%s*multipart/form%-data%s*;.-boundary="?([^";]+)"?')
  if not boundary then return nil, "Content-Type must be multipart/form-data with a boundary" end
  local delimiter = "--" .. boundary
  if body:sub(1, #delimiter + 2) ~= delimiter .. "\r\n" then
    return nil, "the body does not start with the boundary"
  end
  local parts, pos = {}, #delimiter + 3
  while true do
    local head_end = body:find("\r\n\r\n", pos, true)
    if not head_end then return nil, "a part whose headers do not end" end
    local part, err = part_headers(body:sub(pos, head_end + 1))
    if not part then return nil, err end
    local close = body:find("\r\n" .. delimiter, head_end + 4, true)
    if not close then return nil, "a part that the boundary does not close" end
    part.body = body:sub(head_end + 4, close - 1)
    if parts[part.name] then return nil, "the part " .. part.name .. " is given twice" end
    parts[part.name] = part
    local after = close + 2 + #delimiter
    local next_two = body:sub(after, after + 1)
    if next_two == "--" then break end
    if next_two ~= "\r\n" then return nil, "text after a boundary" end
    pos = after + 2
  end
  if not parts.meta then return nil, "the meta part is missing" end
  if not parts.file then return nil, "the file part is missing" end
  return parts
end

local function base64url(bytes)
  return (ngx.encode_base64(bytes):gsub("%+", "-"):gsub("/", "_"):gsub("=", ""))
end

-- The same bytes on the same endpoint give the same media_id, as on WeChat Pay.
local function media_id(path, bytes)
  local md = digest.new("sha256")
  md:update(state.config.mchid .. "\n" .. path .. "\n" .. bytes)
  return "MOCK_MEDIA_" .. base64url(md:final())
end

-- The checks after the signature verified; -> response, record fields
local function check(req, endpoint, form)
  local meta = cjson.decode(form.meta.body)
  if type(meta) ~= "table" then return param_error("meta is not a JSON object", "meta") end
  if type(meta.filename) ~= "string" or meta.filename == "" then
    return param_error("meta.filename is required", "filename")
  end
  if type(meta.sha256) ~= "string" or not meta.sha256:match("^%x+$") or #meta.sha256 ~= 64 then
    return param_error("meta.sha256 must be the 64 hex digits of the file's SHA-256", "sha256")
  end
  local file = form.file
  if not file.filename or file.filename == "" then
    return param_error("the file part has no filename", "file")
  end
  local size = #file.body
  if size > endpoint.limit then
    return param_error(("the file is %d bytes, over the %d bytes this endpoint takes"):format(size, endpoint.limit), "file")
  end
  if sha256_hex(file.body) ~= meta.sha256:lower() then
    return param_error("the file's SHA-256 does not match meta.sha256", "sha256")
  end
  local kind = file_type(file.body)
  local accepted = false
  for _, t in ipairs(endpoint.types) do if t == kind then accepted = true end end
  if not accepted then
    return param_error(("the file is %s; this endpoint takes %s"):format(kind or "of an unknown type",
      table.concat(endpoint.types, ", ")), "file")
  end
  local declared = (file.content_type or ""):lower()
  if not MIME[kind][declared] then
    return param_error(("the file part's Content-Type %q does not match its bytes (%s)"):format(declared, kind), "file")
  end
  local id = media_id(req.path, file.body)
  local dict = state.dicts().data
  local stored = dict:get("media:" .. id)
  local record = stored and cjson.decode(stored) or {
    media_id = id, sha256 = meta.sha256, size = size, path = req.path, filename = meta.filename,
    content_type = declared, uploads = 0,
  }
  record.uploads = record.uploads + 1
  dict:set("media:" .. id, cjson.encode(record))
  return response.ok({ media_id = id })
end

--- upload(req): the endpoint; req.form is the parsed form (handler.lua).
function media.upload(req)
  return check(req, media.ENDPOINTS[req.path], req.form)
end

local MAX_LOG = 50
-- a meta part longer than this is kept cut: the log lives in a shared dict
local MAX_META = 4096

--- record(req, resp): notes an upload request and its answer, for the specs.
function media.record(req, resp)
  local form = req.form
  local entry = {
    path = req.path,
    status = resp.status,
    content_type = req.headers["content-type"],
    content_length = tonumber(req.headers["content-length"]),
    body_length = #req.body,
  }
  local answer = cjson.decode(resp.body or "") or {}
  entry.code, entry.media_id = answer.code, answer.media_id
  if form then
    -- the bytes auth.verify checked the signature over (handler.lua)
    entry.signed = req.signed_body:sub(1, MAX_META)
    entry.meta = form.meta.body:sub(1, MAX_META)
    entry.file = { filename = form.file.filename, content_type = form.file.content_type,
                   size = #form.file.body, sha256 = sha256_hex(form.file.body) }
  end
  local dict = state.dicts().data
  local log = cjson.decode(dict:get("uploads") or "[]") or {}
  log[#log + 1] = entry
  if #log > MAX_LOG then table.remove(log, 1) end
  dict:set("uploads", cjson.encode(log))
end

--- uploads() -> the recorded upload requests, oldest first.
function media.uploads()
  return cjson.decode(state.dicts().data:get("uploads") or "[]") or {}
end

--- get(media_id) -> the record of an accepted file, or nil.
function media.get(id)
  local stored = state.dicts().data:get("media:" .. id)
  return stored and cjson.decode(stored) or nil
end

return media
