-- The HTTPS API server block (worker side): counters, faults, routing.
--
-- Order for a /v3/ request: count it, take the next armed fault, add the
-- configured latency, apply "before" faults (status, delay), check the
-- Authorization header, run the endpoint, apply "after" faults while sending.
-- An upload's form is parsed before the Authorization check: its signature
-- covers the meta part only (media.lua).
local cjson = require("cjson.safe")
local digest = require("openssl.digest")
local auth = require("wechatpay.mock.auth")
local certs = require("wechatpay.mock.certs")
local coupons = require("wechatpay.mock.coupons")
local faults = require("wechatpay.mock.faults")
local media = require("wechatpay.mock.media")
local response = require("wechatpay.mock.response")
local state = require("wechatpay.mock.state")
local util = require("wechatpay.mock.util")
local v2 = require("wechatpay.mock.v2")
local hex = util.hex

local handler = {}

local function read_body()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if body then
    return body
  end
  -- Bodies over client_body_buffer_size are spooled to a file.
  local path = ngx.req.get_body_file()
  if not path then
    return ""
  end
  local f = io.open(path, "rb")
  if not f then
    return ""
  end
  body = f:read("*a") or ""
  f:close()
  return body
end

-- Raw path segments (percent-encoding kept), so "%2F" inside an openid stays
-- inside its segment.
local function split_path(path)
  local segments = {}
  for segment in path:gmatch("[^/]+") do
    segments[#segments + 1] = segment
  end
  return segments
end

local function echo(req)
  if req.method == "DELETE" then
    return response.no_content()
  end
  local headers = {}
  for name, value in pairs(req.headers) do
    if name ~= "authorization" then
      headers[name] = value
    end
  end
  return response.ok({
    method = req.method,
    uri = req.uri,
    path = req.path,
    query = req.query,
    body = req.body,
    body_base64 = ngx.encode_base64(req.body),
    headers = headers,
  })
end

-- A small deterministic bill per token, so the hash given by the "apply"
-- call can be checked against the downloaded bytes.
local function bill_content(token)
  local lines = {
    "交易时间,公众账号ID,商户号,微信订单号,商户订单号,用户标识,交易状态,应结订单金额",
    "`2024-01-01 10:00:00,`wx0000000000000000,`" .. state.config.mchid
      .. ",`4200000000202401010000000001,`order-1,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`SUCCESS,`1.00",
    "总交易单数,应结订单总金额",
    "`1,`1.00",
    "token," .. token,
  }
  return table.concat(lines, "\r\n") .. "\r\n"
end

local function bill_apply(req)
  local bill_date = ngx.var.arg_bill_date
  if not bill_date or not bill_date:match("^%d%d%d%d%-%d%d%-%d%d$") then
    return response.error(400, "PARAM_ERROR", "bill_date must be YYYY-MM-DD",
      { field = "bill_date", location = "query" })
  end
  local token = "bill" .. bill_date:gsub("%-", "")
  local md = digest.new("sha1")
  md:update(bill_content(token))
  return response.ok({
    hash_type = "SHA1",
    hash_value = hex(md:final()),
    download_url = "https://" .. (ngx.var.http_host or ngx.var.server_addr)
      .. "/v3/billdownload/file?token=" .. token,
  })
end

local function bill_download(req)
  local token = ngx.var.arg_token
  if not token or token == "" then
    return response.error(400, "PARAM_ERROR", "token is required",
      { field = "token", location = "query" })
  end
  -- Download endpoints are not signed (PROTOCOL.md section 2).
  return { status = 200, body = bill_content(ngx.unescape_uri(token)), signed = false,
           content_type = "application/octet-stream" }
end

-- Returns the endpoint function and its request fields, or nil.
local function route(method, segments)
  local n = #segments
  local s = segments
  if s[1] ~= "v3" then
    return nil
  end
  if n == 5 and s[2] == "multiuse" and s[3] == "users" and s[5] == "coupons"
      and method == "POST" then
    return coupons.grant, { openid = ngx.unescape_uri(s[4]) }
  end
  if n == 7 and s[2] == "marketing" and s[3] == "favor" and s[4] == "users"
      and s[6] == "coupons" and method == "GET" then
    return coupons.query, { openid = ngx.unescape_uri(s[5]), coupon_id = ngx.unescape_uri(s[7]) }
  end
  if n == 2 and s[2] == "certificates" and method == "GET" then
    return certs.download, {}
  end
  if n >= 3 and s[2] == "mock" and s[3] == "echo" then
    return echo, {}
  end
  if n == 3 and s[2] == "mock" and s[3] == "no_content" then
    return response.no_content, {}
  end
  if n == 3 and s[2] == "bill" and s[3] == "tradebill" and method == "GET" then
    return bill_apply, {}
  end
  if n == 3 and s[2] == "billdownload" and s[3] == "file" and method == "GET" then
    return bill_download, {}
  end
  if method == "POST" and media.ENDPOINTS["/" .. table.concat(s, "/")] then
    return media.upload, { multipart = true }
  end
  return nil
end

local function handle_api(dicts, request_uri)
  dicts.stats:incr("requests", 1, 0)
  local in_flight = dicts.stats:incr("in_flight", 1, 0)
  ngx.ctx.wechatpay_mock_in_flight = true
  if in_flight > (dicts.stats:get("in_flight_max") or 0) then
    dicts.stats:set("in_flight_max", in_flight)
  end

  local fault = faults.take(dicts.faults, cjson, request_uri)
  local name = fault and fault.name

  local latency = state.setting("latency") or 0
  if latency > 0 then
    ngx.sleep(latency)
  end

  if name == "status" then
    return response.send(response.from_fault(fault.opts, "mock fault: status"), nil)
  end
  if name == "delay" then
    ngx.sleep(fault.opts.seconds)
    if not fault.opts.then_process then
      return response.send(response.from_fault(fault.opts,
        "mock fault: delayed and not processed"), nil)
    end
  end

  local method = ngx.req.get_method()
  local path, query = request_uri:match("^([^?]*)%??(.*)$")
  local endpoint, req = route(method, split_path(path))
  local resp
  if not endpoint then
    resp = response.error(404, "NOT_FOUND", "no such API: " .. method .. " " .. path)
  else
    req.method = method
    req.uri = request_uri
    req.path = path
    req.query = query
    req.body = read_body()
    req.headers = ngx.req.get_headers(200)
    req.signed_body = req.body
    if req.multipart then
      local form, err = media.parse(req.headers["content-type"], req.body)
      if form then
        req.form, req.signed_body = form, form.meta.body
      else
        resp = response.error(400, "PARAM_ERROR", "malformed multipart/form-data: " .. err)
      end
    end
    resp = resp or auth.verify(method, request_uri, req.signed_body) or endpoint(req)
    if req.multipart then media.record(req, resp) end
  end

  if name == "status_after_grant" then
    -- The operation happened; the answer is "lost" and replaced by an error.
    resp = response.from_fault(fault.opts, "mock fault: status after the operation")
  end
  return response.send(resp, fault)
end

-- content_by_lua of the HTTPS server block.
function handler.handle()
  local dicts = state.dicts()
  if tonumber(ngx.var.connection_requests) == 1 then
    dicts.stats:incr("connections", 1, 0)
  end
  if not state.ready then
    return response.send(response.error(500, "SYSTEM_ERROR", "mock keys not loaded"), nil)
  end
  local request_uri = ngx.var.request_uri
  if request_uri:sub(1, 4) == "/v3/" then
    return handle_api(dicts, request_uri)
  end
  if v2.routes(request_uri:match("^[^?]*")) then
    return v2.handle(dicts, request_uri)
  end
  if request_uri == "/" then
    return response.send({ status = 200, body = "wechatpay-lua mock\n", signed = false,
                           content_type = "text/plain" }, nil)
  end
  return response.send(response.error(404, "NOT_FOUND", "not found"), nil)
end

-- log_by_lua: runs once per request however it ended (444 included), so the
-- in-flight counter cannot leak.
function handler.log()
  if ngx.ctx.wechatpay_mock_in_flight then
    state.dicts().stats:incr("in_flight", -1, 0)
  end
end

return handler
