-- Building and sending responses the way WeChat Pay does (worker side).
--
-- A handler returns a plain table { status, body, signed, content_type };
-- send() turns it into bytes on the wire, applying the armed fault if any.
-- Errors are gateway-shaped and unsigned; 2xx API answers are signed with the
-- platform key over "TIMESTAMP\nNONCE\nBODY\n".
local cjson = require("cjson.safe")
local digest = require("openssl.digest")
local rand = require("openssl.rand")
local state = require("wechatpay.mock.state")

local response = {}

local ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

function response.random_alnum(n)
  local bytes = rand.bytes(n)
  local out = {}
  for i = 1, n do
    -- 248 = 4 * 62: the small bias left is irrelevant for a mock nonce.
    local b = bytes:byte(i) % 62 + 1
    out[i] = ALNUM:sub(b, b)
  end
  return table.concat(out)
end

local function request_id()
  local bytes = rand.bytes(20)
  return (bytes:gsub(".", function(c)
    return string.format("%02X", c:byte())
  end))
end

-- cjson escapes "/" and this build has no switch to turn that off; WeChat does
-- not escape it. Every "/" in cjson output is escaped, so the backslash in
-- front of a "/" is always that escape and can be dropped safely.
function response.json(value)
  local text = assert(cjson.encode(value))
  return (text:gsub("\\/", "/"))
end

local CODE_BY_STATUS = {
  [400] = "PARAM_ERROR",
  [401] = "SIGN_ERROR",
  [403] = "NO_AUTH",
  [404] = "RESOURCE_NOT_EXISTS",
  [429] = "FREQUENCY_LIMITED",
  [500] = "SYSTEM_ERROR",
  [502] = "SERVICE_UNAVAILABLE",
  [503] = "SERVICE_UNAVAILABLE",
  [504] = "SERVICE_UNAVAILABLE",
}

function response.code_for(status)
  return CODE_BY_STATUS[status] or (status < 500 and "INVALID_REQUEST" or "SYSTEM_ERROR")
end

function response.error(status, code, message, detail)
  local body = { code = code or response.code_for(status), message = message }
  if detail ~= nil then
    body.detail = detail
  end
  return { status = status, body = response.json(body), signed = false }
end

function response.ok(value)
  return { status = 200, body = response.json(value), signed = true }
end

function response.no_content()
  return { status = 204, body = "", signed = true }
end

-- The unsigned error a "status"-like fault replies with.
function response.from_fault(opts, default_message)
  local resp = response.error(opts.status, opts.code, opts.message or default_message)
  if opts.retry_after then resp.headers = { { "Retry-After", string.format("%d", opts.retry_after) } } end
  return resp
end

function response.sign(key, timestamp, nonce, body)
  local md = digest.new("sha256")
  md:update(timestamp .. "\n" .. nonce .. "\n" .. body .. "\n")
  return ngx.encode_base64(key:sign(md))
end

-- Flip one character of the body so it stays parseable JSON but no longer
-- matches the signature: the client can only notice through verification.
function response.tamper(body)
  local pos = nil
  for i = #body, 1, -1 do
    if body:sub(i, i):match("%w") then
      pos = i
      break
    end
  end
  if not pos then
    return nil
  end
  local c = body:sub(pos, pos)
  local replacement
  if c:match("%d") then
    replacement = tostring((tonumber(c) + 1) % 10)
  elseif c == "z" then
    replacement = "a"
  elseif c == "Z" then
    replacement = "A"
  else
    replacement = string.char(c:byte() + 1)
  end
  return body:sub(1, pos - 1) .. replacement .. body:sub(pos + 1)
end

-- Adds Wechatpay-* headers to headers (an ordered list of {name, value});
-- returns the body to send (which tamper_body changes after signing).
-- signer: { key, serial } to sign with instead of the configured key.
local function add_signature(headers, body, fault, signer)
  local name = fault and fault.name
  local opts = fault and fault.opts or {}
  local key, serial = state.signing_key()
  if signer then key, serial = signer.key, signer.serial end
  local timestamp = ngx.time()
  if name == "timestamp" then
    timestamp = timestamp + opts.offset
  end
  timestamp = string.format("%d", timestamp)
  local nonce = response.random_alnum(32)
  local signature = response.sign(key, timestamp, nonce, body)
  if name == "signtest" then
    signature = "WECHATPAY/SIGNTEST/" .. ngx.encode_base64(rand.bytes(192))
  elseif name == "unknown_serial" then
    serial = opts.serial or "PUB_KEY_ID_9999999999999999999999999999"
  elseif name == "tamper_body" then
    local tampered = response.tamper(body)
    if tampered then
      body = tampered
    else
      -- Nothing to flip in an empty body: change the nonce instead, which
      -- breaks the signed message just the same.
      nonce = response.random_alnum(32)
    end
  end
  local values = {
    timestamp = timestamp, nonce = nonce, signature = signature, serial = serial,
  }
  local drop = {}
  if name == "missing_headers" then
    for _, short in ipairs(opts.headers or { "timestamp", "nonce", "signature", "serial" }) do
      drop[short] = true
    end
  end
  for _, short in ipairs({ "timestamp", "nonce", "signature", "serial" }) do
    if not drop[short] then
      headers[#headers + 1] = { "Wechatpay-" .. short:sub(1, 1):upper() .. short:sub(2), values[short] }
    end
  end
  return body
end

-- Headers + part of the body, then the connection is closed under the client.
local function send_broken(status, headers, body, declared_length, sent_bytes)
  ngx.status = status
  for _, h in ipairs(headers) do
    ngx.header[h[1]] = h[2]
  end
  ngx.header["Content-Length"] = declared_length
  ngx.send_headers()
  if sent_bytes > 0 then
    ngx.print(body:sub(1, sent_bytes))
  end
  ngx.flush(true)
  -- 444 makes nginx close the connection without sending anything more.
  return ngx.exit(444)
end

function response.send(resp, fault)
  local body = resp.body or ""
  local status = resp.status
  local headers = { { "Request-ID", request_id() } }
  if fault and fault.name == "date" then
    -- a server whose clock is off: only the HTTP Date header moves
    headers[#headers + 1] = { "Date", ngx.http_time(ngx.time() + fault.opts.offset) }
  end
  for _, h in ipairs(resp.headers or {}) do headers[#headers + 1] = h end
  if resp.content_type then
    headers[#headers + 1] = { "Content-Type", resp.content_type }
  elseif body ~= "" then
    headers[#headers + 1] = { "Content-Type", "application/json; charset=utf-8" }
  end
  if resp.signed and status >= 200 and status < 300 then
    body = add_signature(headers, body, fault, resp.signer)
  end

  local name = fault and fault.name
  if name == "reset" then
    if body == "" then
      return ngx.exit(444)
    end
    return send_broken(status, headers, body, #body, math.floor(#body / 2))
  elseif name == "truncate" then
    local missing = fault.opts.missing or 16
    return send_broken(status, headers, body, #body + missing, #body)
  end

  ngx.status = status
  for _, h in ipairs(headers) do
    ngx.header[h[1]] = h[2]
  end
  if status == 204 or status == 304 then
    ngx.send_headers()
    return ngx.exit(status)
  end
  ngx.header["Content-Length"] = #body
  ngx.print(body)
  return ngx.exit(ngx.HTTP_OK)
end

--- Before a request is processed: the configured latency, then the faults
-- that answer in its place.  -> the answer of a `status` fault, or of a
-- `delay` fault without then_process (after its delay); nil to go on.
function response.before_processing(fault)
  local latency = state.setting("latency") or 0
  if latency > 0 then ngx.sleep(latency) end
  local name = fault and fault.name
  if name == "status" then
    return response.from_fault(fault.opts, "mock fault: status")
  end
  if name == "delay" then
    ngx.sleep(fault.opts.seconds)
    if not fault.opts.then_process then
      return response.from_fault(fault.opts, "mock fault: delayed and not processed")
    end
  end
  return nil
end

return response
