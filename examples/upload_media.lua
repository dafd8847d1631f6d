--- Upload an image: POST /v3/merchant/media/upload with `file =`, which
-- sends WeChat Pay's multipart form (meta + file) signed over its meta part,
-- and answers a media_id to put into later requests.  The image is a small
-- PNG this example draws itself.
--
--   lua5.4 examples/upload_media.lua --mock     against the built-in mock (make demo)
--   lua5.4 examples/upload_media.lua            against WeChat Pay, configured by:
--     the variables bin/wechatpay reads (README "The wechatpay command"): WECHATPAY_MCHID,
--     WECHATPAY_PRIVATE_KEY (/path/apiclient_key.pem), WECHATPAY_MERCHANT_CERT (or WECHATPAY_SERIAL),
--     WECHATPAY_PUBLIC_KEY_ID (PUB_KEY_ID_...), WECHATPAY_PUBLIC_KEY (/path/pub_key.pem),
--     and optionally UPLOAD_FILE (a JPEG, PNG or BMP of at most 2 MB; default: the drawn PNG)
local wechatpay = require("wechatpay")

-- ---- a PNG, drawn here: zlib's stored (uncompressed) blocks need no library

-- 32-bit XOR by arithmetic, so the example runs on Lua 5.4 and LuaJIT alike.
local function xor32(a, b)
  local result, bit = 0, 1
  for _ = 1, 32 do
    local x, y = a % 2, b % 2
    if x ~= y then result = result + bit end
    a, b, bit = (a - x) / 2, (b - y) / 2, bit * 2
  end
  return result
end

local CRC_TABLE = {}
for n = 0, 255 do
  local c = n
  for _ = 1, 8 do
    if c % 2 == 1 then c = xor32(0xEDB88320, (c - 1) / 2) else c = c / 2 end
  end
  CRC_TABLE[n] = c
end

local function crc32(s)
  local crc = 0xFFFFFFFF
  for i = 1, #s do
    crc = xor32(CRC_TABLE[xor32(crc, s:byte(i)) % 256], math.floor(crc / 256))
  end
  return xor32(crc, 0xFFFFFFFF)
end

local function be32(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
end

local function chunk(kind, data)
  return be32(#data) .. kind .. data .. be32(crc32(kind .. data))
end

local function zlib_stored(data)
  local out, a, b = { "\120\1" }, 1, 0
  for i = 1, #data do
    a = (a + data:byte(i)) % 65521
    b = (b + a) % 65521
  end
  local pos = 1
  repeat
    local block = data:sub(pos, pos + 65534)
    pos = pos + #block
    local final = pos > #data and 1 or 0
    out[#out + 1] = string.char(final, #block % 256, math.floor(#block / 256), (65535 - #block) % 256,
      math.floor((65535 - #block) / 256)) .. block
  until pos > #data
  out[#out + 1] = be32(b * 65536 + a)
  return table.concat(out)
end

--- draw_png(width, height) -> the bytes of an RGB gradient
local function draw_png(width, height)
  local rows = {}
  for y = 0, height - 1 do
    local row = { "\0" }   -- filter: none
    for x = 0, width - 1 do
      row[#row + 1] = string.char(math.floor(255 * x / width), math.floor(255 * y / height), 160)
    end
    rows[#rows + 1] = table.concat(row)
  end
  return "\137PNG\r\n\26\n"
    .. chunk("IHDR", be32(width) .. be32(height) .. "\8\2\0\0\0")   -- 8-bit RGB
    .. chunk("IDAT", zlib_stored(table.concat(rows)))
    .. chunk("IEND", "")
end

-- ---- the client

local client, server
if arg[1] == "--mock" then
  local mock = require("wechatpay.mock")
  local err
  server, err = mock.start{}
  if not server then
    io.stderr:write("cannot start the mock WeChat Pay: ", tostring(err), "\n")
    os.exit(1)
  end
  client = server:client()
  print(("mock WeChat Pay at %s (mchid %s)"):format(server.base_url, server.mchid))
else
  -- configured as bin/wechatpay is (`bin/wechatpay --help`): WECHATPAY_CONFIG, or the WECHATPAY_*
  -- variables, a key's value a path; the serial WECHATPAY_SERIAL or that of WECHATPAY_MERCHANT_CERT
  local options, profile = require("wechatpay.cli.config").configured()
  if not options then io.stderr:write(profile, " (or run with --mock)\n") os.exit(2) end
  client = wechatpay.new(options)
end

local png = draw_png(64, 48)
local path = os.getenv("UPLOAD_FILE")
local drawn = not path or path == ""
local scratch   -- os.tmpname() makes this file: removed with the PNG
if drawn then
  scratch = os.tmpname()
  path = scratch .. "-gradient.png"
  local f = assert(io.open(path, "wb"))
  f:write(png)
  f:close()
end

local failed = false

-- By path: the file is read in binary, typed by its bytes, and named by
-- its base name unless file.filename says otherwise.
local res, err = client.v3.merchant.media.upload:post{ file = { path = path } }
if res then
  print(("uploaded %s: media_id %s"):format(path:match("[^/]+$"), res:json().media_id))
else
  print("upload failed: " .. tostring(err))
  failed = true
end

if drawn then
  os.remove(path)
  os.remove(scratch)
  -- By content: the same bytes give WeChat Pay's same media_id.
  local again
  again, err = client.v3.merchant.media.upload:post{ file = { content = png, filename = "gradient.png" } }
  if again then
    print(("uploaded the same bytes as gradient.png: media_id %s (%s)"):format(again:json().media_id,
      res and again:json().media_id == res:json().media_id and "the same" or "another"))
  else
    print("upload failed: " .. tostring(err))
    failed = true
  end
end

-- What the endpoint cannot take is refused before anything is sent.
local _, refused = client.v3.merchant.media.upload:post{ file = { content = "plain text, not an image", filename = "a.png" } }
print(("refused before sending (kind %s): %s"):format(refused.kind, refused.message))

if server then server:stop() end
os.exit(failed and 1 or 0)
