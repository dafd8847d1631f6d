-- Media upload (`file =`) against the mock over real HTTPS: the multipart
-- form, its meta part as the signed body, the type by magic bytes (held to
-- `file --mime-type`), the size limits at their boundary, path and content,
-- bad options; sha256 values come from `openssl dgst`, signatures are checked
-- with `openssl dgst -verify`, and raw requests signed by the openssl command
-- line show that the mock refuses what the client never sends.
local cjson = require("cjson")
local wechatpay = require("wechatpay")
local media = require("wechatpay.media")
local mock = require("wechatpay.mock")
local merchant = require("support.merchant")
local ossl = require("support.openssl")
local samples = require("support.media_samples")

local MB = 1024 * 1024
local RUN = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

local dir
local function tmp(name) return dir .. "/" .. name end

-- sha256 of bytes by the openssl command line, lower hex
local function openssl_sha256(bytes)
  local path = ossl.write(tmp("digest.bin"), bytes)
  return ossl.run("openssl dgst -sha256 -r " .. ossl.quote(path)):match("^(%x+)")
end

local function mime_by_libmagic(bytes)
  local path = ossl.write(tmp("magic.bin"), bytes)
  return (ossl.run("file -b --mime-type " .. ossl.quote(path)):gsub("%s+$", ""))
end

local function last_upload(server)
  local list = server:uploads()
  return list[#list], #list
end

setup(function() dir = ossl.tmpdir() end)
teardown(function() ossl.remove(dir) end)

describe("media upload", function()
  local server, client

  setup(function()
    server = assert(mock.start{ rate_limit = false })
    client = server:client{ timeout = 10, retry = false }
  end)
  teardown(function() if server then server:stop() end end)
  before_each(function() server:reset() end)

  it("uploads an image by path: media_id, and the mock saw the sha256 openssl computes", function()
    local bytes = samples.bytes("png", 4096, "by-path-" .. RUN)
    local path = ossl.write(tmp("photo.png"), bytes)
    local res, err = client.v3.merchant.media.upload:post{ file = { path = path } }
    assert.is_nil(err)
    local id = res:json().media_id
    assert.is_string(id)
    local record = server:media(id)
    local want = openssl_sha256(bytes)
    assert.equal(want, record.sha256)
    assert.equal("photo.png", record.filename)   -- the path's base name
    assert.equal("image/png", record.content_type)
    assert.equal(4096, record.size)
    local seen = last_upload(server)
    assert.equal(200, seen.status)
    assert.equal('{"filename":"photo.png","sha256":"' .. want .. '"}', seen.meta)
    assert.equal(want, seen.file.sha256)
  end)

  it("the same bytes by content give the same media_id; other bytes another", function()
    local bytes = samples.bytes("jpeg", 10000, "same-" .. RUN)
    local path = ossl.write(tmp("a.jpg"), bytes)
    local first = assert(client.v3.merchant.media.upload:post{ file = { path = path } }):json().media_id
    local again = assert(client["v3/merchant/media/upload"]:post{ file = { content = bytes, filename = "b.jpg" } })
      :json().media_id
    assert.equal(first, again)
    assert.equal(2, server:media(first).uploads)
    local other = assert(client.v3.merchant.media.upload:post{
      file = { content = samples.bytes("jpeg", 10000, "other-" .. RUN), filename = "a.jpg" },
    }):json().media_id
    assert.not_equal(first, other)
  end)

  it("uploads a video to video_upload and an image to the favor image-upload, async too", function()
    local video = samples.bytes("mp4", 3 * MB, "video-" .. RUN)   -- over the image limit
    local res = assert(client.v3.merchant.media.video_upload:post{ file = { content = video, filename = "v.mp4" } })
    local record = server:media(res:json().media_id)
    assert.equal(openssl_sha256(video), record.sha256)
    assert.equal("video/mp4", record.content_type)
    assert.equal("/v3/merchant/media/video_upload", record.path)
    local image = samples.bytes("bmp", 2000, "favor-" .. RUN)
    local p = client.v3.marketing.favor.media["image-upload"]:postAsync{ file = { content = image, filename = "f.bmp" } }
    res = assert(p:wait())
    record = server:media(res:json().media_id)
    assert.equal("/v3/marketing/favor/media/image-upload", record.path)
    assert.equal("image/bmp", record.content_type)
    assert.equal(openssl_sha256(image), record.sha256)
  end)

  it("sends Content-Type multipart/form-data with the boundary, and a Content-Length of the body", function()
    local bytes = samples.bytes("png", 300000, "length-" .. RUN)
    assert(client.v3.merchant.media.upload:post{ file = { content = bytes, filename = "l.png" } })
    local seen = last_upload(server)
    local boundary = seen.content_type:match("^multipart/form%-data; boundary=([%w%-]+)$")
    assert.is_string(boundary)
    assert.is_true(#boundary >= 30)
    assert.equal(seen.body_length, seen.content_length)
    assert.is_true(seen.body_length > 300000)
    assert.equal(300000, seen.file.size)
  end)

  it("draws a fresh random boundary per upload, absent from the content", function()
    local seen = {}
    for i = 1, 5 do
      local bytes = samples.bytes("png", 500, "boundary-" .. i)
      local up = assert(media.prepare("v3/merchant/media/upload", { content = bytes, filename = "a.png" }))
      local boundary = up.content_type:match("boundary=(.+)$")
      assert.is_nil(seen[boundary])
      seen[boundary] = true
      assert.is_nil(bytes:find(boundary, 1, true))
      -- the body is the two parts, in order, closed by the boundary
      assert.equal("--" .. boundary .. "\r\n", up.body:sub(1, #boundary + 4))
      assert.equal("\r\n--" .. boundary .. "--\r\n", up.body:sub(-(#boundary + 8)))
      local meta_at = up.body:find('name="meta"', 1, true)
      local file_at = up.body:find('name="file"; filename="a.png"', 1, true)
      assert.is_true(meta_at < file_at)
    end
  end)

  describe("the type, by the bytes", function()
    it("a .jpg name with PNG bytes is sent as image/png, and kept as named", function()
      local bytes = samples.bytes("png", 1000, "named-jpg-" .. RUN)
      local res = assert(client.v3.merchant.media.upload:post{ file = { content = bytes, filename = "a.jpg" } })
      local record = server:media(res:json().media_id)
      assert.equal("image/png", record.content_type)
      assert.equal("a.jpg", record.filename)
    end)

    it("agrees with `file --mime-type` for every type WeChat Pay lists", function()
      for kind, names in pairs(samples.TYPES) do
        local bytes = samples.bytes(kind, 512)
        local ours = media.content_type(bytes)
        assert.equal(names[1], ours, kind)
        local theirs = mime_by_libmagic(bytes)
        local agreed = false
        for _, name in ipairs(names) do if name == theirs then agreed = true end end
        assert.is_true(agreed, kind .. ": libmagic says " .. theirs .. ", we say " .. tostring(ours))
      end
    end)

    it("refuses, before sending, bytes of no type the endpoint takes, naming what it takes", function()
      local before = server:stats().requests
      local cases = {
        { "v3/merchant/media/upload", "garbage" .. ("x"):rep(100), "none of them" },
        { "v3/merchant/media/upload", ("BM"):rep(40), "none of them" },        -- "BM" alone is no bitmap
        { "v3/merchant/media/upload", samples.bytes("gif", 100), "a GIF file" },
        { "v3/merchant/media/upload", samples.bytes("mp4", 100), "a MP4 file" },
        { "v3/merchant/media/video_upload", samples.bytes("png", 100), "a PNG file" },
        { "v3/marketing/favor/media/image-upload", samples.bytes("avi", 100), "a AVI file" },
        { "v3/merchant/media/upload", "\0\0\0\24ftypM4A \0\0\0\0", "none of them" },   -- audio
      }
      for _, case in ipairs(cases) do
        local name = case[1]:find("video", 1, true) and "x.mp4" or "x.jpg"
        local res, err = client[case[1]]:post{ file = { content = case[2], filename = name } }
        assert.is_nil(res)
        assert.equal("file", err.kind)
        assert.matches(case[1], err.message, 1, true)
        assert.matches(case[3], err.message, 1, true)
        assert.matches("judged by its first bytes", err.message, 1, true)
      end
      assert.matches("takes JPEG, PNG, BMP files", select(2, client.v3.merchant.media.upload:post{
        file = { content = "nope", filename = "x.png" } }).message, 1, true)
      assert.equal(before, server:stats().requests)
    end)
  end)

  it("another upload path takes every known type, each kind up to its own limit", function()
    local path = "v3/some/new/upload"
    assert(media.prepare(path, { content = samples.bytes("gif", 100), filename = "a.gif" }))
    assert(media.prepare(path, { content = samples.bytes("flv", 4 * MB), filename = "a.flv" }))
    local none, err = media.prepare(path, { content = samples.bytes("png", 2 * MB + 1), filename = "a.png" })
    assert.is_nil(none)
    assert.matches("image files of at most 2 MB", err.message, 1, true)
    none, err = media.prepare(path, { content = "text", filename = "a.txt" })
    assert.is_nil(none)
    assert.matches("takes JPEG, PNG, BMP, GIF, MP4", err.message, 1, true)
  end)

  describe("size limits, before any network call", function()
    it("an image of exactly 2 MB is sent; 2 MB + 1 is refused naming the limit and the size", function()
      local exact = samples.bytes("jpeg", 2 * MB, "exact-" .. RUN)
      local res = assert(client.v3.merchant.media.upload:post{ file = { content = exact, filename = "e.jpg" } })
      assert.equal(2 * MB, server:media(res:json().media_id).size)
      local before = server:stats().requests
      local over = samples.bytes("jpeg", 2 * MB + 1)
      local none, err = client.v3.merchant.media.upload:post{ file = { content = over, filename = "o.jpg" } }
      assert.is_nil(none)
      assert.equal("file", err.kind)
      assert.matches("at most 2 MB (2097152 bytes)", err.message, 1, true)
      assert.matches("o.jpg is 2097153 bytes", err.message, 1, true)
      assert.equal(2 * MB, err.limit)
      assert.equal(2 * MB + 1, err.size)
      local path = ossl.write(tmp("over.jpg"), over)
      none, err = client.v3.merchant.media.upload:post{ file = { path = path } }
      assert.is_nil(none)
      assert.matches("is 2097153 bytes", err.message, 1, true)
      assert.equal(before, server:stats().requests)
    end)

    it("a video of exactly 5 MB is sent; 5 MB + 1 is refused", function()
      local exact = samples.bytes("mkv", 5 * MB, "exact-" .. RUN)
      assert(client.v3.merchant.media.video_upload:post{ file = { content = exact, filename = "e.mkv" } })
      local before = server:stats().requests
      local none, err = client.v3.merchant.media.video_upload:post{
        file = { content = samples.bytes("mkv", 5 * MB + 1), filename = "o.mkv" },
      }
      assert.is_nil(none)
      assert.matches("video files of at most 5 MB (5242880 bytes); o.mkv is 5242881 bytes", err.message, 1, true)
      assert.equal(before, server:stats().requests)
    end)

    it("a huge file is judged without reading it all, and its size told", function()
      local path = ossl.write(tmp("huge.png"), samples.HEADERS.png)
      ossl.run("truncate -s 1G " .. ossl.quote(path))   -- sparse: no gigabyte written
      local out = ossl.run_lua(([[
        local media = require("wechatpay.media")
        local none, err = media.prepare("v3/merchant/media/upload", { path = %q })
        io.write(tostring(none), "|", err.message)
      ]]):format(path), { seconds = 20, memory_kb = 400000 })
      assert.matches("^nil|", out)
      assert.matches("is 1073741824 bytes", out, 1, true)
      os.remove(path)
    end)
  end)

  describe("path and content", function()
    it("reads the file in binary, every byte value included", function()
      local all = {}
      for i = 0, 255 do all[#all + 1] = string.char(i) end
      local bytes = samples.HEADERS.png .. table.concat(all):rep(40) .. "\r\n\26\r\n"
      local path = ossl.write(tmp("bytes.png"), bytes)
      local res = assert(client.v3.merchant.media.upload:post{ file = { path = path, filename = "given.png" } })
      local record = server:media(res:json().media_id)
      assert.equal(openssl_sha256(bytes), record.sha256)
      assert.equal(#bytes, record.size)
      assert.equal("given.png", record.filename)
    end)

    it("a missing, unreadable or empty file, or a folder, is a file error naming it", function()
      local before = server:stats().requests
      local empty = ossl.write(tmp("empty.png"), "")
      local cases = {
        { tmp("missing.png"), "No such file" },
        { dir, "Is a directory" },
        { empty, "empty.png is empty" },
      }
      local locked = ossl.write(tmp("locked.png"), samples.bytes("png", 100))
      ossl.run("chmod 000 " .. ossl.quote(locked))
      if not io.open(locked, "rb") then cases[#cases + 1] = { locked, "Permission denied" } end   -- root reads it anyway
      for _, case in ipairs(cases) do
        local res, err = client.v3.merchant.media.upload:post{ file = { path = case[1], filename = "a.png" } }
        assert.is_nil(res)
        assert.equal("file", err.kind)
        assert.matches(case[2], err.message, 1, true)
      end
      assert.equal(before, server:stats().requests)
    end)

    it("leaves no file handle open when it refuses a file", function()
      local pid = ossl.read("/proc/self/stat"):match("^(%d+)")
      -- descriptors of this process open on the spec's own folder
      local function open_fds()
        local count = 0
        for line in ossl.run("ls -l /proc/" .. pid .. "/fd"):gmatch("[^\n]+") do
          if line:find(dir, 1, true) then count = count + 1 end
        end
        return count
      end
      local over = ossl.write(tmp("leak-over.png"), samples.bytes("png", 2 * MB + 10))
      local garbage = ossl.write(tmp("leak-garbage.png"), ("g"):rep(100))
      local empty = ossl.write(tmp("leak-empty.png"), "")
      collectgarbage()
      collectgarbage("stop")   -- a leaked handle would otherwise be closed by its __gc
      local before = open_fds()
      for _ = 1, 30 do
        for _, path in ipairs{ over, garbage, empty, dir } do
          assert.is_nil((media.prepare("v3/merchant/media/upload", { path = path, filename = "a.png" })))
        end
      end
      local after = open_fds()
      collectgarbage("restart")
      assert.equal(0, before)
      assert.equal(0, after)
    end)

    it("the filename: the path's base name, UTF-8 and '/' kept as they are in the signed meta", function()
      local bytes = samples.bytes("png", 800, "utf8-" .. RUN)
      local path = ossl.write(tmp("照片 1.png"), bytes)
      assert(client.v3.merchant.media.upload:post{ file = { path = path } })
      local seen = last_upload(server)
      assert.equal('{"filename":"照片 1.png","sha256":"' .. openssl_sha256(bytes) .. '"}', seen.meta)
      assert.equal("照片 1.png", seen.file.filename)
      assert(client.v3.merchant.media.upload:post{ file = { content = bytes, filename = "dir/a.png" } })
      seen = last_upload(server)
      assert.equal('{"filename":"dir/a.png","sha256":"' .. openssl_sha256(bytes) .. '"}', seen.meta)
      assert.equal(200, seen.status)   -- the mock verified the signature over these very bytes
    end)

    it("refuses a filename that would break the header or the meta JSON", function()
      local bytes = samples.bytes("png", 100)
      for _, name in ipairs{ 'a"b.png', "a\r\nX-Injected: 1.png", "a\n.png", "a\0.png", "a\\b.png", "a\tb.png", "" } do
        local ok, err = pcall(client.v3.merchant.media.upload.post, client.v3.merchant.media.upload,
          { file = { content = bytes, filename = name } })
        assert.is_false(ok)
        assert.matches("file.filename", tostring(err), 1, true)
      end
      local odd = ossl.write(tmp('q"uote.png'), bytes)
      local ok, err = pcall(media.prepare, "v3/merchant/media/upload", { path = odd })
      assert.is_false(ok)
      assert.matches("base name of file.path", err, 1, true)
      assert.matches("give file.filename", err, 1, true)
      assert(media.prepare("v3/merchant/media/upload", { path = odd, filename = "quote.png" }))
    end)

    it("holds the filename to WeChat Pay's rules before reading the file: suffix, length, UTF-8", function()
      local bytes = samples.bytes("png", 100)
      local function refused(path, file)
        local ok, err = pcall(media.prepare, path, file)
        assert.is_false(ok)
        return err
      end
      -- a web framework's temporary file has no suffix
      local temp = ossl.write(tmp("lua_upload_Xy12"), bytes)
      local err = refused("v3/merchant/media/upload", { path = temp })
      assert.matches('the filename "lua_upload_Xy12" must end in .jpg, .jpeg, .png, .bmp', err, 1, true)
      assert.matches('give file.filename, e.g. "a.png"', err, 1, true)
      assert(media.prepare("v3/merchant/media/upload", { path = temp, filename = "upload.PNG" }))
      assert.matches("must end in .mp4", refused("v3/merchant/media/video_upload",
        { content = samples.bytes("mp4", 100), filename = "v.png" }), 1, true)
      assert.matches("must end in .jpg", refused("v3/merchant/media/upload", { content = bytes, filename = "a.gif" }),
        1, true)
      -- 128 characters, counted as characters: 124 Chinese ones and ".png" are 128
      assert(media.prepare("v3/merchant/media/upload", { content = bytes, filename = ("照"):rep(124) .. ".png" }))
      assert.matches("has 129 characters: WeChat Pay takes at most 128", refused("v3/merchant/media/upload",
        { content = bytes, filename = ("照"):rep(125) .. ".png" }), 1, true)
      -- 照片 in GBK: the signed meta JSON would not be UTF-8
      assert.matches("is not UTF-8", refused("v3/merchant/media/upload", { content = bytes, filename = "\213\213\198\172.png" }),
        1, true)
      -- an endpoint WeChat Pay has not documented here judges the name itself
      assert(media.prepare("v3/some/new/upload", { content = bytes, filename = "no-suffix" }))
    end)
  end)

  describe("bad options", function()
    local node
    before_each(function() node = client.v3.merchant.media.upload end)

    local function raises(opts, text, method)
      local ok, err = pcall(function() return client:request(method or "POST", "v3/merchant/media/upload", opts) end)
      assert.is_false(ok)
      assert.matches(text, tostring(err), 1, true)
      -- reported at the caller's line, not inside the library
      assert.matches("media_spec.lua", tostring(err), 1, true)
    end

    it("are programmer errors, raised before anything is sent", function()
      local before = server:stats().requests
      local png = samples.bytes("png", 100)
      raises({ file = { content = png, filename = "a.png" }, json = { a = 1 } }, "give file, or json or body, not both")
      raises({ file = { content = png, filename = "a.png" }, body = "x" }, "give file, or json or body, not both")
      raises({ file = { content = png, filename = "a.png", path = "/x.png" } }, "give path or content, not both")
      raises({ file = {} }, "give path (a file to read) or content")
      raises({ file = { content = png, filename = "a.png", mime = "image/png" } }, "unknown file option 'mime'")
      raises({ file = { content = 42, filename = "a.png" } }, "file.content must be a string")
      raises({ file = { content = png } }, "file.filename is required with file.content")
      raises({ file = { path = 7 } }, "file.path must be a non-empty string")
      raises({ file = { path = "/tmp/a\0.png" } }, "file.path holds a NUL byte")
      raises({ file = { path = "/" } }, "names no file")
      raises({ file = "a.png" }, "file must be a table")
      raises({ file = { content = png, filename = "a.png" } }, "file is uploaded with POST, not PUT", "PUT")
      raises({ file = { content = png, filename = "a.png" }, headers = { ["content-type"] = "image/png" } },
        "set by the client for a file upload")
      assert.equal(before, server:stats().requests)
      assert.truthy(getmetatable(node.post).__call)   -- the node still answers :post
    end)
  end)

  describe("the signature", function()
    it("covers exactly the meta part (openssl verifies our Authorization over it)", function()
      local transport = merchant.recording_transport()
      local recorder = wechatpay.new(merchant.options{ transport = transport, retry = false })
      local bytes = samples.bytes("jpeg", 5000, "sig-" .. RUN)
      recorder.v3.merchant.media.upload:post{ file = { content = bytes, filename = "s.jpg" } }
      local request = transport.requests[1]
      local authorization
      for _, line in ipairs(request.headers) do
        authorization = authorization or line:match("^Authorization: (.*)$")
      end
      local meta = '{"filename":"s.jpg","sha256":"' .. openssl_sha256(bytes) .. '"}'
      local _, _, verified = merchant.check_authorization(authorization, "POST", "/v3/merchant/media/upload", meta)
      assert.is_true(verified)
      _, _, verified = merchant.check_authorization(authorization, "POST", "/v3/merchant/media/upload", request.body)
      assert.is_false(verified)
      -- the signed bytes are the meta part's body, between its headers and the next boundary
      local boundary = request.body:match("^%-%-([^\r]+)\r\n")
      assert.is_truthy(request.body:find('Content-Disposition: form-data; name="meta"\r\nContent-Type: application/json\r\n\r\n'
        .. meta .. "\r\n--" .. boundary .. "\r\n", 1, true))
    end)

    it("is what the mock checks: the meta part, and never the whole body", function()
      assert(client.v3.merchant.media.upload:post{ file = { content = samples.bytes("png", 700), filename = "m.png" } })
      assert.equal(200, last_upload(server).status)
    end)
  end)

  -- Requests our client would never send, built and signed by hand (the
  -- openssl command line) and sent with the curl command line.
  describe("the mock, sent what the client refuses", function()
    local function raw_upload(path, file_bytes, opts)
      opts = opts or {}
      local sha = opts.sha256 or openssl_sha256(file_bytes)
      local meta = '{"filename":"r.png","sha256":"' .. sha .. '"}'
      local boundary = "raw-boundary-" .. RUN
      local body = table.concat{
        "--", boundary, "\r\n", 'Content-Disposition: form-data; name="meta"\r\n',
        "Content-Type: application/json\r\n\r\n", meta, "\r\n",
        "--", boundary, "\r\n", 'Content-Disposition: form-data; name="file"; filename="r.png"\r\n',
        "Content-Type: ", opts.content_type or "image/png", "\r\n\r\n", file_bytes, "\r\n",
        "--", boundary, "--\r\n",
      }
      -- a nonce per request: the mock refuses one it has seen, as a replay
      local timestamp, nonce = tostring(os.time()), require("wechatpay.core").nonce(32)
      local signed = opts.sign_body and body or meta
      ossl.write(tmp("raw_msg.bin"), "POST\n" .. path .. "\n" .. timestamp .. "\n" .. nonce .. "\n" .. signed .. "\n")
      ossl.run("openssl dgst -sha256 -sign " .. ossl.quote(server.merchant_key_file) .. " -out "
        .. ossl.quote(tmp("raw_sig.bin")) .. " " .. ossl.quote(tmp("raw_msg.bin")))
      local signature = ossl.base64_file(tmp("raw_sig.bin"))
      local authorization = ('WECHATPAY2-SHA256-RSA2048 mchid="%s",nonce_str="%s",signature="%s",timestamp="%s",serial_no="%s"')
        :format(server.mchid, nonce, signature, timestamp, server.merchant_serial)
      ossl.write(tmp("raw_body.bin"), body)
      local out = ossl.run("curl -sS --cacert " .. ossl.quote(server.cafile) .. " -o " .. ossl.quote(tmp("raw_out.json"))
        .. " -w '%{http_code}' -H " .. ossl.quote("Authorization: " .. authorization)
        .. " -H " .. ossl.quote("Content-Type: multipart/form-data; boundary=" .. boundary)
        .. " -H 'Accept: application/json' --data-binary @" .. ossl.quote(tmp("raw_body.bin"))
        .. " " .. ossl.quote(server.base_url:gsub("/$", "") .. path))
      return tonumber(out), cjson.decode(ossl.read(tmp("raw_out.json")))
    end

    it("accepts a well-formed raw upload: the hand-made request is right", function()
      local status, answer = raw_upload("/v3/merchant/media/upload", samples.bytes("png", 900, "raw-ok-" .. RUN))
      assert.equal(200, status)
      assert.is_string(answer.media_id)
    end)

    it("refuses a body that is no multipart form: 400 INVALID_REQUEST (its Content-Type), recorded", function()
      ossl.write(tmp("raw_json.bin"), '{"filename":"a.png"}')
      local status = ossl.run("curl -sS --cacert " .. ossl.quote(server.cafile) .. " -o /dev/null -w '%{http_code}'"
        .. " -H 'Content-Type: application/json' --data-binary @" .. ossl.quote(tmp("raw_json.bin"))
        .. " " .. ossl.quote(server.base_url .. "v3/merchant/media/upload"))
      assert.equal("400", status)
      local seen = last_upload(server)
      assert.equal("INVALID_REQUEST", seen.code)
      assert.is_nil(seen.signed)
    end)

    it("refuses a signature over the whole body: 401 SIGN_ERROR", function()
      local status, answer = raw_upload("/v3/merchant/media/upload", samples.bytes("png", 900), { sign_body = true })
      assert.equal(401, status)
      assert.equal("SIGN_ERROR", answer.code)
    end)

    it("refuses a sha256 mismatch, a wrong type, a false Content-Type and a file over the limit: 400 PARAM_ERROR", function()
      local png = samples.bytes("png", 900)
      local cases = {
        { "/v3/merchant/media/upload", png, { sha256 = openssl_sha256(png .. "x") }, "SHA%-256" },
        { "/v3/merchant/media/upload", "not an image at all", {}, "unknown type" },
        { "/v3/merchant/media/upload", samples.bytes("gif", 900), { content_type = "image/gif" }, "GIF" },
        { "/v3/merchant/media/video_upload", png, {}, "PNG" },
        { "/v3/merchant/media/upload", png, { content_type = "image/jpeg" }, "does not match its bytes" },
        { "/v3/merchant/media/upload", samples.bytes("png", 2 * MB + 1), {}, "2097153 bytes, over the 2097152" },
        { "/v3/merchant/media/video_upload", samples.bytes("mp4", 5 * MB + 1), { content_type = "video/mp4" },
          "5242881 bytes" },
      }
      for i, case in ipairs(cases) do
        local status, answer = raw_upload(case[1], case[2], case[3])
        assert.equal(400, status, "case " .. i)
        assert.equal("PARAM_ERROR", answer.code, "case " .. i)
        assert.matches(case[4], answer.message, nil, false)
      end
      local exact_status = raw_upload("/v3/merchant/media/upload", samples.bytes("png", 2 * MB, "raw-exact-" .. RUN))
      assert.equal(200, exact_status)
    end)
  end)

  describe("answers and retries", function()
    it("a refusal by WeChat Pay is an http error with its code, and nothing secret", function()
      server:fault("status", { status = 400, code = "PARAM_ERROR", message = "图片格式不正确", path = "/media/upload" })
      local marker = "CONTENT-MARKER-" .. RUN
      local res, err = client.v3.merchant.media.upload:post{
        file = { content = samples.bytes("png", 500, marker), filename = "a.png" },
      }
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.equal("PARAM_ERROR", err.code)
      local text = tostring(err) .. err.message
      assert.is_nil(text:find(marker, 1, true))
      assert.is_nil(text:find("WECHATPAY2", 1, true))
      assert.is_nil(text:find("PRIVATE KEY", 1, true))
    end)

    it("file errors hold neither the content nor the key", function()
      local marker = "CONTENT-MARKER-" .. RUN
      local key = ossl.read(server.merchant_key_file)
      for _, content in ipairs{ marker .. ("x"):rep(100), samples.bytes("png", 2 * MB + 1, marker) } do
        local _, err = client.v3.merchant.media.upload:post{ file = { content = content, filename = "a.png" } }
        local text = tostring(err) .. err.message
        assert.is_nil(text:find(marker, 1, true))
        assert.is_nil(text:find(key:sub(40, 80), 1, true))
      end
    end)

    it("an upload is idempotent: retried on 500 with retry.idempotent, never without", function()
      local bytes = samples.bytes("png", 700, "retry-" .. RUN)
      local retrying = server:client{ timeout = 10, retry = { attempts = 3, backoff = 0.01, idempotent = true } }
      server:fault("status", { status = 500, path = "/media/upload" })
      local res = assert(retrying.v3.merchant.media.upload:post{ file = { content = bytes, filename = "r.png" } })
      assert.equal(2, server:stats().requests)
      assert.equal(openssl_sha256(bytes), server:media(res:json().media_id).sha256)
      server:reset()
      local plain = server:client{ timeout = 10, retry = { attempts = 3, backoff = 0.01 } }
      server:fault("status", { status = 500, path = "/media/upload" })
      local none, err = plain.v3.merchant.media.upload:post{ file = { content = bytes, filename = "r.png" } }
      assert.is_nil(none)
      assert.equal(500, err.status)
      assert.equal(1, server:stats().requests)
    end)

    it("a refused file rejects the promise of an async call; nothing is queued", function()
      local p = client.v3.merchant.media.upload:postAsync{ file = { content = "nope", filename = "a.png" } }
      local caught
      p:catch(function(e) caught = e end)
      assert.equal("file", caught.kind)
      assert.same({ 0, 0 }, { client:pending() })
      local res, err = p:wait()
      assert.is_nil(res)
      assert.equal("file", err.kind)
    end)
  end)
end)

describe("media upload inside nginx (the cosocket transport)", function()
  local nginx = require("support.nginx")
  local server, app

  setup(function()
    server = assert(mock.start{ rate_limit = false })
    app = nginx.start(server, { workers = 1 })
  end)
  teardown(function()
    if app then app:stop() end
    if server then server:stop() end
  end)

  it("uploads from a content handler: right sha256, boundary and Content-Length", function()
    local size, tag = 1500000, "ngx-" .. RUN   -- over nginx's default body buffer
    local status, body = app:get("/upload?size=" .. size .. "&tag=" .. tag .. "&filename=n.png")
    assert.equal(200, status, cjson.encode(body))
    local record = server:media(body.media_id)
    assert.equal(openssl_sha256(samples.bytes("png", size, tag)), record.sha256)
    assert.equal("image/png", record.content_type)
    local seen = server:uploads()[1]
    assert.matches("^multipart/form%-data; boundary=", seen.content_type)
    assert.equal(seen.body_length, seen.content_length)
  end)

  it("a refused file answers the handler with a file error, and sends nothing", function()
    local before = server:stats().requests
    local status, body = app:get("/upload?size=" .. (2 * MB + 1) .. "&tag=x&filename=o.png")
    assert.equal(502, status)
    assert.equal("file", body.kind)
    assert.matches("2097153 bytes", body.error, 1, true)
    assert.equal(before, server:stats().requests)
  end)
end)
