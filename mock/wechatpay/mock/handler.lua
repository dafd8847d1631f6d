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
local bills = require("wechatpay.mock.bills")
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
-- inside its segment; nil when one is empty ("/v3//x", "/v3/x/"): WeChat Pay
-- routes the path as written and answers 404 for those.
local function split_path(path)
  local segments = {}
  for segment in (path:sub(2) .. "/"):gmatch("([^/]*)/") do
    if segment == "" then
      return nil
    end
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

-- Bills: the first call answers the hash and the download URL of a CSV
-- made on disk (bills.lua; its hash by sha1sum/sha256sum), the download
-- URL serves the file, gzipped when the first call asked tar_type=GZIP.
local function bill_url(name, gzip)
  return "https://" .. (ngx.var.http_host or ngx.var.server_addr) .. "/v3/billdownload/file?token="
    .. name .. (gzip and ".gz" or "")
end

-- The bill's meta, made on first use with a few rows.
local function bill_meta(name)
  local dir = state.config.dir
  return bills.meta(dir, name) or bills.generate(dir, name, { mchid = state.config.mchid })
end

local function bill_answer(req, name, url_field)
  local meta = bill_meta(name)
  local hash = meta[meta.hash_type:lower()]
  if req.fault and req.fault.name == "wrong_hash" then
    hash = (hash:sub(1, 1) == "0" and "1" or "0") .. hash:sub(2)
  end
  return response.ok({
    hash_type = meta.hash_type,
    hash_value = hash,
    [url_field] = bill_url(name, ngx.var.arg_tar_type == "GZIP"),
  })
end

local function bill_apply(req)
  local bill_date = ngx.var.arg_bill_date
  if not bill_date or not bill_date:match("^%d%d%d%d%-%d%d%-%d%d$") then
    return response.error(400, "PARAM_ERROR", "bill_date must be YYYY-MM-DD",
      { field = "bill_date", location = "query" })
  end
  return bill_answer(req, req.kind .. "-" .. bill_date:gsub("%-", ""), "download_url")
end

-- A stock's use/refund/send flow: the same answer, its URL named "url".
local function stock_flow(req)
  if not req.stock_id:match("^[%w_%-]+$") then
    return response.error(400, "PARAM_ERROR", "stock_id is malformed", { field = "stock_id", location = "path" })
  end
  return bill_answer(req, "stock-" .. req.stock_id .. "-" .. req.flow, "url")
end

local function bill_download(req)
  local token = ngx.var.arg_token
  if not token or token == "" then
    return response.error(400, "PARAM_ERROR", "token is required",
      { field = "token", location = "query" })
  end
  local name, gz = token:match("^([%w_%-]+)(%.?g?z?)$")
  if not name or (gz ~= "" and gz ~= ".gz") or not bills.meta(state.config.dir, name) then
    return response.error(404, "RESOURCE_NOT_EXISTS", "no bill for this token")
  end
  -- WeChat Pay does not sign a download URL's answer (the file itself): the
  -- client checks its bytes against the hash_value of the call that gave the URL.
  return { file = bills.file(state.config.dir, name, gz == ".gz") }
end

-- The media type of a header value ("application/json; charset=utf-8" ->
-- "application/json"), lower case; nil for a missing or blank one.
local function media_type(value)
  if type(value) ~= "string" then
    return nil
  end
  local t = value:match("^%s*([^;,%s]+)")
  return t and t:lower()
end

-- Accept and Content-Type, as WeChat Pay's gateway wants them: an Accept
-- that admits JSON (application/json; the official Go SDK sends */* and is
-- answered) on every call, the file download excepted (its answer is no
-- JSON: any Accept); and a body typed application/json, or
-- multipart/form-data on an upload path. Returns nil or the 400.
local function check_media_types(req)
  local accept = req.headers["accept"]
  if type(accept) == "table" then
    accept = table.concat(accept, ",")
  end
  if type(accept) ~= "string" or not accept:find("%S") then
    return response.error(400, "INVALID_REQUEST",
      "the Accept header is required (Accept: application/json)", { field = "Accept", location = "header" })
  end
  if not req.download then
    local admits
    for range in accept:gmatch("[^,]+") do
      local t = media_type(range)
      admits = admits or t == "application/json" or t == "application/*" or t == "*/*"
    end
    if not admits then
      return response.error(400, "INVALID_REQUEST", "the Accept header must admit application/json, got: "
        .. accept, { field = "Accept", location = "header" })
    end
  end
  if req.body ~= "" then
    local want = req.multipart and "multipart/form-data" or "application/json"
    local given = req.headers["content-type"]
    if type(given) == "table" then
      return response.error(400, "INVALID_REQUEST", "the Content-Type header is given more than once",
        { field = "Content-Type", location = "header" })
    end
    if media_type(given) ~= want then
      return response.error(400, "INVALID_REQUEST", "a request body must be sent with Content-Type: " .. want
        .. (given and (", got: " .. given) or ", got none"), { field = "Content-Type", location = "header" })
    end
  end
  return nil
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
  if n == 3 and s[2] == "bill" and (s[3] == "tradebill" or s[3] == "fundflowbill") and method == "GET" then
    return bill_apply, { kind = s[3] == "tradebill" and "trade" or "fundflow" }
  end
  if method == "GET" and ((n == 6 and s[2] == "marketing" and s[3] == "favor" and s[4] == "stocks")
      or (n == 5 and s[2] == "multiuse" and s[3] == "stocks"))
      and (s[n] == "use-flow" or s[n] == "refund-flow" or s[n] == "send-flow") then
    return stock_flow, { stock_id = ngx.unescape_uri(s[n - 1]), flow = s[n]:match("^(%a+)") }
  end
  if n == 3 and s[2] == "billdownload" and s[3] == "file" and method == "GET" then
    return bill_download, { download = true }
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

  local early = response.before_processing(fault)
  if early then return response.send(early, nil) end

  local method = ngx.req.get_method()
  local path, query = request_uri:match("^([^?]*)%??(.*)$")
  local segments = split_path(path)
  local endpoint, req
  if segments then
    endpoint, req = route(method, segments)
  end
  local resp
  if not endpoint then
    resp = response.error(404, "NOT_FOUND", "no such API: " .. method .. " " .. path
      .. (segments and "" or " (an empty path segment)"))
  else
    req.method = method
    req.uri = request_uri
    req.path = path
    req.query = query
    req.body = read_body()
    req.headers = ngx.req.get_headers(200)
    req.signed_body = req.body
    req.fault = fault
    resp = check_media_types(req)
    if req.multipart and not resp then
      local form, err = media.parse(req.headers["content-type"], req.body)
      if form then
        req.form, req.signed_body = form, form.meta.body
      else
        resp = response.error(400, "PARAM_ERROR", "malformed multipart/form-data: " .. err)
      end
    end
    -- under the date fault the server's clock is off: its Date header, and the window it checks
    local clock = name == "date" and ngx.time() + fault.opts.offset or nil
    resp = resp or auth.verify(method, request_uri, req.signed_body, clock) or endpoint(req)
    if req.multipart then media.record(req, resp) end
  end
  if resp.file then
    -- nginx's static handler may take over (ngx.exec), which clears ngx.ctx:
    -- the in-flight count is settled here, not in the log phase
    dicts.stats:incr("in_flight", -1, 0)
    ngx.ctx.wechatpay_mock_in_flight = nil
    return bills.send(resp.file, fault)
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
