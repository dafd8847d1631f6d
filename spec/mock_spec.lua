-- The mock WeChat Pay server, exercised WITHOUT wechatpay.core: the client
-- side of these tests signs, encrypts and verifies with luaossl and talks
-- HTTPS through the curl command line, so nothing here shares code with the
-- SDK under test.
local mock = require("wechatpay.mock")
local cjson = require("cjson")
local mime = require("mime")
local pkey = require("openssl.pkey")
local digest = require("openssl.digest")
local rand = require("openssl.rand")
local socket = require("socket")
local ossl = require("support.openssl")

local read_file, write_file, file_exists, shell_quote = ossl.read, ossl.write, ossl.exists, ossl.quote

local function b64(s)
  return (mime.b64(s))
end

local function unb64(s)
  return (mime.unb64(s))
end

local ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
local function nonce32()
  local bytes = rand.bytes(32)
  return (bytes:gsub(".", function(c)
    local i = c:byte() % 62 + 1
    return ALNUM:sub(i, i)
  end))
end

---------------------------------------------------------------------------
-- a tiny client made of luaossl + curl

local function authorization(server, method, uri, body, over)
  over = over or {}
  local key = pkey.new(read_file(server.merchant_key_file))
  local timestamp = over.timestamp or tostring(os.time())
  local nonce = over.nonce or nonce32()
  local md = digest.new("sha256")
  md:update(method .. "\n" .. uri .. "\n" .. timestamp .. "\n" .. nonce .. "\n" .. body .. "\n")
  local signature = over.signature or b64(key:sign(md))
  return string.format(
    'WECHATPAY2-SHA256-RSA2048 mchid="%s",nonce_str="%s",signature="%s",timestamp="%s",serial_no="%s"',
    over.mchid or server.mchid, nonce, signature, timestamp, over.serial_no or server.merchant_serial)
end

local function oaep(pem_file, plaintext)
  local key = pkey.new(read_file(pem_file))
  return b64(key:encrypt(plaintext, { rsaPadding = pkey.RSA_PKCS1_OAEP_PADDING }))
end

local function parse_headers(text)
  local headers = {}
  -- With several responses in one file, keep the last block.
  for line in text:gmatch("[^\r\n]+") do
    if line:match("^HTTP/") then
      headers = {}
    else
      local name, value = line:match("^([^:]+):%s*(.-)%s*$")
      if name then
        headers[name:lower()] = value
      end
    end
  end
  return headers
end

-- One curl invocation running every request in reqs over one connection
-- when it can (--next keeps the connection pool). Each req: method, uri,
-- body, headers (list of "Name: value"), auth (false to omit), auth_over,
-- accept and content_type (the header's value; "" sends none).
-- opts.parallel: run them at once (curl -Z); opts.max_time: per transfer.
local function curl_many(server, reqs, opts)
  opts = opts or {}
  local tmp_base = os.tmpname()
  local args = { opts.parallel and "-s -Z" or "" }
  for i, req in ipairs(reqs) do
    local body = req.body or ""
    local method = req.method or (body ~= "" and "POST" or "GET")
    local uri = req.uri
    local base = tmp_base .. "." .. i
    if i > 1 then
      args[#args + 1] = "--next"
    end
    args[#args + 1] = "-sS --max-time " .. (opts.max_time or 10)
      .. " --cacert " .. shell_quote(server.cafile)
    args[#args + 1] = "-X " .. method
    args[#args + 1] = "-D " .. shell_quote(base .. ".h") .. " -o " .. shell_quote(base .. ".b")
    args[#args + 1] = "-w '%{http_code}\\n'"
    local accept = req.accept or "application/json"
    args[#args + 1] = "-H 'Expect:' -H " .. shell_quote("Accept:" .. (accept ~= "" and " " .. accept or ""))
    if req.auth ~= false then
      args[#args + 1] = "-H " .. shell_quote("Authorization: "
        .. authorization(server, method, uri, body, req.auth_over))
    end
    for _, h in ipairs(req.headers or {}) do
      args[#args + 1] = "-H " .. shell_quote(h)
    end
    if body ~= "" then
      write_file(base .. ".in", body)
      local content_type = req.content_type or "application/json"
      args[#args + 1] = "-H " .. shell_quote("Content-Type:" .. (content_type ~= "" and " " .. content_type or ""))
        .. " --data-binary @" .. shell_quote(base .. ".in")
    end
    args[#args + 1] = shell_quote(server.base_url:sub(1, -2) .. uri)
  end
  local p = assert(io.popen("curl " .. table.concat(args, " ") .. " 2>&1; echo \"rc=$?\""))
  local out = p:read("*a")
  p:close()
  local statuses = {}
  for code in out:gmatch("(%d%d%d)\n") do
    statuses[#statuses + 1] = tonumber(code)
  end
  local results = {}
  for i = 1, #reqs do
    local base = tmp_base .. "." .. i
    local headers = file_exists(base .. ".h") and parse_headers(read_file(base .. ".h")) or {}
    local body = file_exists(base .. ".b") and read_file(base .. ".b") or ""
    for _, suffix in ipairs({ ".h", ".b", ".in" }) do
      os.remove(base .. suffix)
    end
    results[i] = { status = statuses[i], headers = headers, body = body,
                   rc = tonumber(out:match("rc=(%d+)")), output = out }
  end
  os.remove(tmp_base)
  return results
end

local function curl(server, req, opts)
  return curl_many(server, { req }, opts)[1]
end

-- SHA256withRSA over TIMESTAMP\nNONCE\nBODY\n with the WeChat Pay public key.
local function verify_response(server, res)
  local h = res.headers
  if not (h["wechatpay-timestamp"] and h["wechatpay-nonce"] and h["wechatpay-signature"]) then
    return false
  end
  local signature = h["wechatpay-signature"]
  if signature:find("^WECHATPAY/SIGNTEST/") then
    return false
  end
  local key = pkey.new(read_file(server.platform_public_key_file))
  local md = digest.new("sha256")
  md:update(h["wechatpay-timestamp"] .. "\n" .. h["wechatpay-nonce"] .. "\n" .. res.body .. "\n")
  return key:verify(unb64(signature), md) == true
end

local OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"

local function grant_request(server, fields, over)
  over = over or {}
  local user = server.users[OPENID]
  local body = {
    stock_id = "9856000",
    out_request_no = "REQ_1",
    user_name = oaep(server.platform_public_key_file, over.name or user.name),
    id_card_number = oaep(server.platform_public_key_file, over.id_card or user.id_card),
    appid = "wxd678efh567hg6787",
    card_type = "ID_CARD",
  }
  for k, v in pairs(fields or {}) do
    if v == cjson.null then
      body[k] = nil
    else
      body[k] = v
    end
  end
  return {
    method = "POST",
    uri = "/v3/multiuse/users/" .. (over.openid or OPENID) .. "/coupons",
    body = cjson.encode(body),
    headers = { "Wechatpay-Serial: " .. (over.serial or server.platform_key_id) },
  }
end

local function decode(res)
  return cjson.decode(res.body)
end

---------------------------------------------------------------------------

describe("wechatpay.mock", function()
  local server

  setup(function()
    local err
    server, err = mock.start()
    assert(server, err)
  end)

  teardown(function()
    if server then
      server:stop()
    end
  end)

  before_each(function()
    server:reset()
  end)

  it("exposes its keys and identifiers", function()
    assert.matches("^https://127%.0%.0%.1:%d+/$", server.base_url)
    assert.equals("1900000001", server.mchid)
    assert.matches("^%x+$", server.merchant_serial)
    assert.equals(server.merchant_serial:upper(), server.merchant_serial)
    assert.matches("^PUB_KEY_ID_%d+$", server.platform_key_id)
    assert.equals(39, #server.platform_key_id)
    assert.matches("BEGIN PRIVATE KEY", read_file(server.merchant_key_file))
    assert.matches("BEGIN PUBLIC KEY", read_file(server.platform_public_key_file))
    assert.matches("BEGIN CERTIFICATE", read_file(server.platform_cert_file))
    assert.matches("BEGIN CERTIFICATE", read_file(server.cafile))
    assert.is_table(server.users[OPENID])
  end)

  it("grants a coupon with a signed 200 that verifies with the platform key", function()
    local res = curl(server, grant_request(server))
    assert.equals(200, res.status, res.body)
    assert.matches("^%d+$", decode(res).coupon_id)
    assert.equals(server.platform_key_id, res.headers["wechatpay-serial"])
    assert.equals(32, #res.headers["wechatpay-nonce"])
    assert.truthy(res.headers["request-id"])
    assert.is_true(verify_response(server, res))
    local record = server:coupon(decode(res).coupon_id)
    assert.same({ "9856000", OPENID, "REQ_1" },
      { record.stock_id, record.openid, record.out_request_no })
    assert.is_nil(server:coupon("1"))
    assert.equals(1, server:stats().grants)

    -- And the granted coupon can be queried.
    local query = curl(server, { uri = "/v3/marketing/favor/users/" .. OPENID .. "/coupons/"
      .. record.coupon_id .. "?appid=wxd678efh567hg6787" })
    assert.equals(200, query.status, query.body)
    assert.is_true(verify_response(server, query))
    assert.equals("SENDED", decode(query).status)
  end)

  it("decrypts only with a certificate in service: not the next before it is issued, none for a public-key-only merchant", function()
    local own = assert(mock.start{ rate_limit = false })
    finally(function() own:stop() end)
    local function encrypted_for(srv, cert_file, serial, number)
      local req = grant_request(srv, { out_request_no = number }, { serial = serial })
      local body = cjson.decode(req.body)
      local key = require("openssl.x509").new(read_file(cert_file)):getPublicKey()
      local function enc(s) return b64(key:encrypt(s, { rsaPadding = pkey.RSA_PKCS1_OAEP_PADDING })) end
      body.user_name = enc(srv.users[OPENID].name)
      body.id_card_number = enc(srv.users[OPENID].id_card)
      req.body = cjson.encode(body)
      return curl(srv, req)
    end
    local next_file = own.dir .. "/platform_cert_next.pem"
    local early = encrypted_for(own, next_file, own.platform_cert_next_serial, "NEXT-1")
    assert.equals(400, early.status, early.body)
    own:rotate_certificates()
    local issued = encrypted_for(own, next_file, own.platform_cert_next_serial, "NEXT-2")
    assert.equals(200, issued.status, issued.body)

    local pk_only = assert(mock.start{ rate_limit = false, public_key_only = true })
    finally(function() pk_only:stop() end)
    local refused = encrypted_for(pk_only, pk_only.platform_cert_file, pk_only.platform_cert_serial, "PKONLY-1")
    assert.equals(400, refused.status, refused.body)
  end)

  it("accepts fields encrypted with the platform certificate key", function()
    local req = grant_request(server, { out_request_no = "CERT-1" }, {
      serial = server.platform_cert_serial })
    local body = cjson.decode(req.body)
    local cert_key = require("openssl.x509").new(read_file(server.platform_cert_file)):getPublicKey()
    local function enc(s)
      return b64(cert_key:encrypt(s, { rsaPadding = pkey.RSA_PKCS1_OAEP_PADDING }))
    end
    body.user_name = enc(server.users[OPENID].name)
    body.id_card_number = enc(server.users[OPENID].id_card)
    req.body = cjson.encode(body)
    -- the serial exactly as WeChat Pay issues it, upper-case hex: another
    -- spelling names no certificate (the client must normalise what it was given)
    for _, spelled in ipairs{ server.platform_cert_serial:lower(), server.platform_cert_serial:sub(1, -2):lower()
        .. server.platform_cert_serial:sub(-1) } do
      req.headers = { "Wechatpay-Serial: " .. spelled }
      local res = curl(server, req)
      assert.equals(400, res.status, res.body)
      assert.equals("Wechatpay-Serial", decode(res).detail.field)
    end
    assert.equals(0, server:stats().grants)
    req.headers = { "Wechatpay-Serial: " .. server.platform_cert_serial }
    local res = curl(server, req)
    assert.equals(200, res.status, res.body)
    -- Encrypted for the certificate, so the public key id cannot decrypt it.
    req.headers = { "Wechatpay-Serial: " .. server.platform_key_id }
    res = curl(server, req)
    assert.equals(400, res.status)
    assert.matches("decrypt failed", decode(res).message)
  end)

  it("is idempotent on out_request_no", function()
    local first = curl(server, grant_request(server))
    assert.equals(200, first.status, first.body)
    -- New nonce, new OAEP ciphertexts: still the same request.
    local again = curl(server, grant_request(server))
    assert.equals(200, again.status, again.body)
    assert.equals(decode(first).coupon_id, decode(again).coupon_id)
    assert.equals(1, server:stats().grants)

    local changed = curl(server, grant_request(server, { stock_id = "9856001" }))
    assert.equals(400, changed.status)
    assert.equals("INVALID_REQUEST", decode(changed).code)
    assert.matches("out_request_no reused", decode(changed).message)
    assert.equals(1, server:stats().grants)
  end)

  it("refuses an Authorization whose nonce is not 32 of [0-9A-Za-z], timestamp not 10 digits or base64 unpadded", function()
    local cases = {
      { { nonce = "short" }, "nonce_str in Authorization must be 32" },
      { { nonce = ("a"):rep(31) .. "-" }, "nonce_str in Authorization must be 32" },
      { { timestamp = "0" .. os.time() }, "10 digits" },
    }
    for _, case in ipairs(cases) do
      local req = grant_request(server)
      req.auth_over = case[1]
      local res = curl(server, req)
      assert.equals(401, res.status)
      assert.matches(case[2], decode(res).message, 1, true)
    end
    local req = grant_request(server)
    -- the same signature without its "==" padding
    local header = authorization(server, "POST", req.uri, req.body):gsub('(signature="[^"]-)=*"', '%1"')
    assert.is_nil(header:find('=="', 1, true))
    req.auth = false
    req.headers[#req.headers + 1] = "Authorization: " .. header
    local res = curl(server, req)
    assert.equals(401, res.status)
    assert.matches("standard base64, padded", decode(res).message, 1, true)
    assert.equals(0, server:stats().grants)
  end)

  it("refuses a nonce used again within 300 s (a retry must be signed anew), even over the same bytes", function()
    local req = grant_request(server)
    req.auth_over = { nonce = nonce32(), timestamp = tostring(os.time()) }
    local first = curl(server, req)
    assert.equals(200, first.status, first.body)
    local replayed = curl(server, req)   -- the same Authorization header, the same body
    assert.equals(401, replayed.status)
    assert.equals("SIGN_ERROR", decode(replayed).code)
    assert.matches("nonce_str was already used", decode(replayed).message, 1, true)
    assert.equals(1, server:stats().grants)
  end)

  it("refuses a bad signature with 401 SIGN_ERROR echoing the expected message", function()
    local req = grant_request(server)
    req.auth_over = { signature = b64(string.rep("x", 256)), nonce = "fixednonce123" .. ("0"):rep(19) }
    local res = curl(server, req)
    assert.equals(401, res.status)
    local err = decode(res)
    assert.equals("SIGN_ERROR", err.code)
    assert.truthy(err.detail.expect:find("POST\n" .. req.uri .. "\n", 1, true))
    assert.truthy(err.detail.expect:find("\nfixednonce123" .. ("0"):rep(19) .. "\n", 1, true))
    assert.truthy(res.headers["request-id"])
    -- Gateway errors are unsigned, and never echo the Authorization header.
    assert.is_nil(res.headers["wechatpay-signature"])
    assert.is_nil(res.headers["wechatpay-serial"])
    assert.falsy(res.body:find("WECHATPAY2-SHA256-RSA2048", 1, true))
    assert.falsy(res.body:find(b64(string.rep("x", 256)), 1, true))
    assert.equals(0, server:stats().grants)

    local tampered = grant_request(server)
    tampered.auth_over = { signature = "not base64!" }
    assert.equals(401, curl(server, tampered).status)
  end)

  it("refuses a wrong mchid, a wrong serial_no and a malformed header", function()
    local req = grant_request(server)
    req.auth_over = { mchid = "1900000002" }
    local res = curl(server, req)
    assert.equals(401, res.status)
    assert.matches("mchid", decode(res).message)

    req.auth_over = { serial_no = "0123456789ABCDEF" }
    res = curl(server, req)
    assert.equals(401, res.status)
    assert.matches("serial_no", decode(res).message)

    req.auth = false
    req.headers[#req.headers + 1] = "Authorization: WECHATPAY2-SHA256-RSA2048 mchid=1900000001"
    res = curl(server, req)
    assert.equals(401, res.status)
    assert.equals("SIGN_ERROR", decode(res).code)
  end)

  it("refuses a stale timestamp", function()
    local req = grant_request(server)
    req.auth_over = { timestamp = tostring(os.time() - 301) }
    local res = curl(server, req)
    assert.equals(401, res.status)
    assert.matches("timestamp", decode(res).message)
    req.auth_over = { timestamp = tostring(os.time() + 250) }
    assert.equals(200, curl(server, req).status)
  end)

  it("names a missing or malformed field with 400 PARAM_ERROR", function()
    local res = curl(server, grant_request(server, { appid = cjson.null }))
    assert.equals(400, res.status)
    assert.equals("PARAM_ERROR", decode(res).code)
    assert.matches("appid", decode(res).message)
    assert.equals("appid", decode(res).detail.field)

    res = curl(server, grant_request(server, { amount = -5 }))
    assert.equals(400, res.status)
    assert.equals("amount", decode(res).detail.field)

    res = curl(server, grant_request(server, { out_request_no = "bad no!" }))
    assert.equals(400, res.status)
    assert.equals("out_request_no", decode(res).detail.field)

    local req = grant_request(server)
    req.headers = {}
    res = curl(server, req)
    assert.equals(400, res.status)
    assert.matches("Wechatpay%-Serial", decode(res).message)
  end)

  it("refuses a real-name mismatch without echoing plaintext", function()
    local res = curl(server, grant_request(server, nil, { name = "李鬼" }))
    assert.equals(400, res.status)
    assert.equals("PARAM_ERROR", decode(res).code)
    assert.matches("real name mismatch", decode(res).message)
    assert.falsy(res.body:find("李鬼", 1, true))
    assert.falsy(res.body:find(server.users[OPENID].id_card, 1, true))

    res = curl(server, grant_request(server, nil, { openid = "oNoSuchUser_x-1" }))
    assert.equals(400, res.status)
    assert.equals("USER_NOT_EXIST", decode(res).code)
    assert.equals(0, server:stats().grants)
  end)

  it("replies an unsigned 500 for a status fault, without granting", function()
    server:fault("status", { status = 500 })
    local res = curl(server, grant_request(server))
    assert.equals(500, res.status)
    assert.equals("SYSTEM_ERROR", decode(res).code)
    assert.is_nil(res.headers["wechatpay-signature"])
    assert.equals(0, server:stats().grants)
    -- The fault was used up: the retry goes through.
    res = curl(server, grant_request(server))
    assert.equals(200, res.status)
    assert.equals(1, server:stats().grants)
  end)

  it("status_after_grant performs the grant and loses the answer", function()
    server:fault("status_after_grant", { status = 503 })
    local res = curl(server, grant_request(server))
    assert.equals(503, res.status)
    assert.equals("SERVICE_UNAVAILABLE", decode(res).code)
    assert.equals(1, server:stats().grants)
    res = curl(server, grant_request(server))
    assert.equals(200, res.status)
    assert.equals(1, server:stats().grants)
  end)

  it("signature faults produce 2xx responses that do not verify", function()
    local echo = { uri = "/v3/mock/echo/x" }
    server:fault("tamper_body")
    local res = curl(server, echo)
    assert.equals(200, res.status)
    assert.is_table(decode(res))
    assert.is_false(verify_response(server, res))

    server:fault("signtest")
    res = curl(server, echo)
    assert.matches("^WECHATPAY/SIGNTEST/", res.headers["wechatpay-signature"])

    server:fault("timestamp", { offset = -400 })
    res = curl(server, echo)
    assert.is_true(verify_response(server, res))
    assert.is_true(os.time() - tonumber(res.headers["wechatpay-timestamp"]) >= 399)

    server:fault("unknown_serial")
    res = curl(server, echo)
    assert.equals("PUB_KEY_ID_9999999999999999999999999999", res.headers["wechatpay-serial"])
    assert.is_true(verify_response(server, res))

    server:fault("missing_headers", { headers = { "Wechatpay-Signature" } })
    res = curl(server, echo)
    assert.equals(200, res.status)
    assert.is_nil(res.headers["wechatpay-signature"])
    assert.truthy(res.headers["wechatpay-nonce"])

    -- No fault left: back to normal.
    assert.is_true(verify_response(server, curl(server, echo)))
  end)

  it("path-restricted faults only hit matching requests", function()
    server:fault("status", { status = 429, path = "/coupons$" , count = 2 })
    assert.equals(200, curl(server, { uri = "/v3/mock/echo/a" }).status)
    local res = curl(server, grant_request(server))
    assert.equals(429, res.status)
    assert.equals("FREQUENCY_LIMITED", decode(res).code)
    assert.equals(429, curl(server, grant_request(server)).status)
    assert.equals(200, curl(server, grant_request(server)).status)
  end)

  it("reset and truncate faults end in a client error, not a hang", function()
    server:fault("reset")
    local res = curl(server, { uri = "/v3/mock/echo/reset" })
    assert.are_not.equals(0, res.rc)
    server:fault("truncate")
    res = curl(server, { uri = "/v3/mock/echo/truncate" })
    assert.are_not.equals(0, res.rc)
    assert.equals(0, curl(server, { uri = "/v3/mock/echo/ok" }).rc)
  end)

  it("echoes what was sent, without the Authorization header", function()
    local uri = "/v3/mock/echo/o-Ab_C?q=%E4%B8%AD%E6%96%87&b=1+2"
    local res = curl(server, { method = "PATCH", uri = uri, body = '{"name":"中文"}',
      headers = { "Wechatpay-Serial: " .. server.platform_key_id } })
    assert.equals(200, res.status, res.body)
    assert.is_true(verify_response(server, res))
    local echo = decode(res)
    assert.equals("PATCH", echo.method)
    assert.equals(uri, echo.uri)
    assert.equals("q=%E4%B8%AD%E6%96%87&b=1+2", echo.query)
    assert.equals('{"name":"中文"}', echo.body)
    assert.equals(server.platform_key_id, echo.headers["wechatpay-serial"])
    assert.is_nil(echo.headers.authorization)

    res = curl(server, { method = "DELETE", uri = "/v3/mock/echo/thing" })
    assert.equals(204, res.status)
    assert.equals("", res.body)
    assert.is_true(verify_response(server, res))
  end)

  it("serves unsigned downloads and 404s unknown paths", function()
    local apply = curl(server, { uri = "/v3/bill/tradebill?bill_date=2024-01-01" })
    assert.equals(200, apply.status)
    assert.is_true(verify_response(server, apply))
    local url = decode(apply).download_url
    local path = url:match("^https://[^/]+(/.*)$")
    local file = curl(server, { uri = path })
    assert.equals(200, file.status)
    assert.is_nil(file.headers["wechatpay-signature"])
    local md = digest.new("sha1")
    md:update(file.body)
    local hash = md:final():gsub(".", function(c) return string.format("%02x", c:byte()) end)
    assert.equals(decode(apply).hash_value, hash)

    local res = curl(server, { uri = "/v3/no/such/thing" })
    assert.equals(404, res.status)
    assert.equals("NOT_FOUND", decode(res).code)
  end)

  it("answers 404 NOT_FOUND for a path with an empty segment, as WeChat Pay routes the path as written", function()
    local good = grant_request(server, { out_request_no = "EMPTY-1" })
    for _, uri in ipairs{
      "/v3//multiuse/users/" .. OPENID .. "/coupons",
      "/v3/multiuse/users/" .. OPENID .. "/coupons/",
      "/v3/multiuse//users/" .. OPENID .. "//coupons",
      "/v3/mock/echo/a/", "/v3/mock//echo/a", "/v3/mock/echo//",
    } do
      local req = { method = good.method, uri = uri, body = good.body, headers = good.headers }
      local res = curl(server, req)
      assert.equals(404, res.status, uri .. " " .. res.body)
      assert.equals("NOT_FOUND", decode(res).code)
      assert.matches("empty path segment", decode(res).message, 1, true)
    end
    assert.equals(0, server:stats().grants)
    assert.equals(200, curl(server, good).status)
  end)

  it("wants Accept to admit JSON and a body typed application/json (multipart on uploads), else 400", function()
    local function refused(req, field, text)
      local res = curl(server, req)
      assert.equals(400, res.status, res.body)
      assert.equals("INVALID_REQUEST", decode(res).code)
      assert.equals(field, decode(res).detail.field)
      assert.matches(text, decode(res).message, 1, true)
    end
    local function grant(no, over)
      local req = grant_request(server, { out_request_no = no })
      for k, v in pairs(over) do req[k] = v end
      return req
    end
    refused(grant("CT-1", { accept = "" }), "Accept", "the Accept header is required")
    refused(grant("CT-2", { accept = "text/html" }), "Accept", "must admit application/json, got: text/html")
    refused(grant("CT-3", { content_type = "" }), "Content-Type", "Content-Type: application/json, got none")
    refused(grant("CT-4", { content_type = "application/x-www-form-urlencoded" }), "Content-Type",
      "got: application/x-www-form-urlencoded")
    refused(grant("CT-5", { content_type = "text/plain" }), "Content-Type", "application/json")
    refused({ uri = "/v3/mock/echo/x", accept = "" }, "Accept", "required")
    refused({ method = "POST", uri = "/v3/merchant/media/upload", body = '{"filename":"a.png"}' },
      "Content-Type", "Content-Type: multipart/form-data, got: application/json")
    assert.equals(0, server:stats().grants)
    -- what the official SDKs send is answered: */* (Go), a charset parameter, a list
    for i, over in ipairs{ { accept = "*/*" }, { accept = "text/html, application/json;q=0.9" },
                           { content_type = "Application/JSON; charset=utf-8" }, { accept = "application/*" } } do
      local res = curl(server, grant("CT-OK-" .. i, over))
      assert.equals(200, res.status, res.body)
    end
    -- a GET needs no Content-Type; the bill file takes any Accept (it is no JSON)
    local apply = curl(server, { uri = "/v3/bill/tradebill?bill_date=2024-01-02" })
    assert.equals(200, apply.status, apply.body)
    local path = decode(apply).download_url:match("^https://[^/]+(/.*)$")
    assert.equals(200, curl(server, { uri = path, accept = "application/octet-stream" }).status)
    refused({ uri = path, accept = "" }, "Accept", "required")
  end)

  it("grants only a seeded stock, to an openid of the appid named", function()
    for _, stock in ipairs{ "9856999", "9856000.0" } do
      local res = curl(server, grant_request(server, { out_request_no = "STOCK-" .. stock:gsub("%.", "_"), stock_id = stock }))
      assert.equals(404, res.status, res.body)
      assert.equals("RESOURCE_NOT_EXISTS", decode(res).code)
      assert.equals("stock_id", decode(res).detail.field)
    end
    local res = curl(server, grant_request(server, { out_request_no = "APPID-1", appid = "wxdeadbeefdeadbeef" }))
    assert.equals(400, res.status, res.body)
    assert.equals("PARAM_ERROR", decode(res).code)
    assert.equals("appid", decode(res).detail.field)
    assert.matches("does not belong to appid wxdeadbeefdeadbeef", decode(res).message, 1, true)
    assert.equals(0, server:stats().grants)
    for _, appid in ipairs(mock.DEFAULT_APPIDS) do
      res = curl(server, grant_request(server, { out_request_no = "APPID-" .. appid, appid = appid }))
      assert.equals(200, res.status, res.body)
    end
    assert.equals(200, curl(server, grant_request(server, { out_request_no = "STOCK-2", stock_id = "9856001" })).status)

    -- configured: stocks added and removed, a user's own appid
    local own = assert(mock.start{ rate_limit = false, stocks = { S_EXTRA = true, ["9856001"] = false },
      users = { [OPENID] = { name = "张三", id_card = "110101199003071234", appid = "wxown0000000000001" } } })
    finally(function() own:stop() end)
    assert.same({ S_EXTRA = true, ["9856000"] = true }, own.stocks)
    local function own_grant(no, fields)
      fields.out_request_no = no
      return curl(own, grant_request(own, fields))
    end
    assert.equals(200, own_grant("O-1", { stock_id = "S_EXTRA", appid = "wxown0000000000001" }).status)
    assert.equals(404, own_grant("O-2", { stock_id = "9856001", appid = "wxown0000000000001" }).status)
    assert.equals(400, own_grant("O-3", { appid = "wxd678efh567hg6787" }).status)
    assert.has_error(function() mock.start{ stocks = { ["a b"] = true } } end,
      "wechatpay.mock: stocks keys must be stock ids (letters, digits, _ and -, at most 20)")
    assert.has_error(function() mock.start{ stocks = { x = 1 } } end, "wechatpay.mock: stocks[x] must be true or false")
    assert.has_error(function() mock.start{ users = { o = { name = "a", id_card = "b", appids = {} } } } end,
      "wechatpay.mock: users[o]: appids must be a non-empty list of strings")
  end)

  it("counts connections, requests and concurrency", function()
    local reqs = {}
    for i = 1, 5 do
      reqs[i] = { uri = "/v3/mock/echo/" .. i }
    end
    local results = curl_many(server, reqs)
    for i = 1, 5 do
      assert.equals(200, results[i].status)
    end
    local stats = server:stats()
    assert.equals(1, stats.connections)
    assert.equals(5, stats.requests)
    assert.equals(1, stats.in_flight_max)
    assert.equals(0, stats.in_flight)

    curl(server, { uri = "/v3/mock/echo/again" })
    assert.equals(2, server:stats().connections)

    server:reset()
    assert.same({ connections = 0, requests = 0, grants = 0, in_flight = 0, in_flight_max = 0,
      certificate_downloads = 0, notifications = 0 }, server:stats())
  end)

  it("adds latency, and counts concurrent requests", function()
    server:configure({ latency = 0.3 })
    local reqs = {}
    for i = 1, 3 do
      reqs[i] = { uri = "/v3/mock/echo/parallel-" .. i }
    end
    local started = socket.gettime()
    local results = curl_many(server, reqs, { parallel = true })
    local elapsed = socket.gettime() - started
    server:configure({ latency = 0 })
    for i = 1, 3 do
      assert.equals(200, results[i].status, results[i].output)
    end
    assert.is_true(elapsed >= 0.3)
    local stats = server:stats()
    assert.equals(3, stats.in_flight_max)
    assert.equals(3, stats.connections)
    assert.equals(0, stats.in_flight)
  end)

  it("delay exceeds a client timeout; then_process grants after it anyway", function()
    -- long enough that a stalled spec still asks before the grant lands
    server:fault("delay", { seconds = 1.5, then_process = true })
    local res = curl(server, grant_request(server), { max_time = 0.2 })
    assert.equals(28, res.rc) -- curl: operation timed out
    assert.equals(0, server:stats().grants)
    -- The server keeps going after the client gave up.
    local deadline = socket.gettime() + 4
    while server:stats().grants == 0 and socket.gettime() < deadline do
      socket.sleep(0.05)
    end
    assert.equals(1, server:stats().grants)
    -- The retry (same out_request_no, re-signed) gets the first grant.
    res = curl(server, grant_request(server))
    assert.equals(200, res.status)
    assert.equals(1, server:stats().grants)
  end)

  it("raises on unknown faults and bad options", function()
    assert.has_error(function() server:fault("no_such_fault") end)
    assert.has_error(function() server:fault("timestamp") end)
    assert.has_error(function() server:fault("status", { status = 200 }) end)
    assert.has_error(function() mock.start({ no_such_option = 1 }) end)
  end)
end)

describe("wechatpay.mock rate limit and stop", function()
  it("answers 429 FREQUENCY_LIMITED past rate_limit grant calls (replays and refused ones count), and stops cleanly", function()
    local server = assert(mock.start({ rate_limit = 3 }))
    -- the mock counts grants per clock minute: start well inside one, so
    -- the four grants below fall in the same minute
    local second = os.time() % 60
    if second > 50 then socket.sleep(61 - second) end
    local ok, err = pcall(function()
      -- WeChat Pay limits calls: a grant, its replay and a refused call are three
      local res = curl(server, grant_request(server, { out_request_no = "RL-1" }))
      assert.equals(200, res.status, res.body)
      assert.equals(200, curl(server, grant_request(server, { out_request_no = "RL-1" })).status)
      res = curl(server, grant_request(server, { out_request_no = "RL-2", card_type = cjson.null }))
      assert.equals(400, res.status, res.body)
      res = curl(server, grant_request(server, { out_request_no = "RL-3" }))
      assert.equals(429, res.status, res.body)
      assert.equals("FREQUENCY_LIMITED", decode(res).code)
      -- a replay past the limit is limited too
      assert.equals(429, curl(server, grant_request(server, { out_request_no = "RL-1" })).status)
      assert.equals(1, server:stats().grants)
      -- the limit is the grant endpoint's: other calls neither count nor are limited
      assert.equals(200, curl(server, { uri = "/v3/mock/echo/x" }).status)
    end)
    local dir, base_url = server.dir, server.base_url
    server:stop()
    assert(ok, err)
    assert.is_false(file_exists(dir .. "/nginx.conf"))
    assert.is_false(file_exists(dir))
    local res = curl({ cafile = "/dev/null", base_url = base_url },
      { uri = "/v3/mock/echo/x", auth = false })
    assert.are_not.equals(0, res.rc)
    assert.matches("Failed to connect", res.output)
    -- stop() is idempotent.
    assert.is_true(server:stop())
  end)
end)
