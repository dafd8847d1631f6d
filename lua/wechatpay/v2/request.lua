--- APIv2 requests: `client.v2.pay.micropay:post{ xml = {...} [, security = true] }`
-- builds POST https://<host>/pay/micropay (no "v2" in the URL) with a body
-- of signed XML and no Authorization header.  Signed once, in prepare: a
-- v2 signature covers the fields only (no time, no target), so a retry
-- sends the same bytes, which is what makes it a replay WeChat Pay can
-- recognise by its merchant number.
--
--   local prepared = v2request.prepare(settings, "POST", "v2/pay/micropay", opts)
--   local transport_request = v2request.sign(settings, prepared)
local core = require("wechatpay.core")
local config = require("wechatpay.config")
local errors = require("wechatpay.errors")
local headers = require("wechatpay.headers")
local request = require("wechatpay.request")
local sign = require("wechatpay.v2.sign")
local xml = require("wechatpay.v2.xml")

local v2request = {}

local raise = errors.raise

--- true when a chain path is an APIv2 one ("v2/...").
function v2request.is_v2(path)
  return type(path) == "string" and path:find("^/*v2/") ~= nil
end

-- Merchant numbers that make a replay return the first result.
local IDEMPOTENCY_FIELDS = { "out_trade_no", "mch_billno", "out_refund_no" }

-- Endpoints whose 2xx answer is not a flat <xml> (a CSV bill, gzip on
-- request), which answer.check could only call malformed.
local NOT_XML = {
  ["pay/downloadbill"] = "a CSV (or gzip) bill",
  ["pay/downloadfundflow"] = "a CSV (or gzip) fund flow",
  ["sandboxnew/pay/downloadbill"] = "a CSV (or gzip) bill",
}

-- Endpoints that name the merchant `mchid` (with mch_appid), not mch_id:
-- 企业付款到零钱.  The client fills that name for them.
local MCHID_ENDPOINTS = {
  ["mmpaymkttransfers/promotion/transfers"] = true,
}

-- Endpoints WeChat Pay serves only to a client presenting the merchant
-- certificate (refunds, reversals, profit sharing under secapi/; red
-- packets, transfers, coupons sent): a client given merchant_cert presents
-- it there unless told security = false.  Not elsewhere under
-- mmpaymkttransfers/ (a coupon stock query needs none, and a key that
-- nginx cannot present would fail it).
local CERTIFICATE_ENDPOINTS = {}
for name in ([[mmpaymkttransfers/sendredpack mmpaymkttransfers/sendgroupredpack
    mmpaymkttransfers/sendminiprogramhb mmpaymkttransfers/gethbinfo mmpaymkttransfers/promotion/transfers
    mmpaymkttransfers/gettransferinfo mmpaymkttransfers/pay_bank mmpaymkttransfers/query_bank
    mmpaymkttransfers/send_coupon mmpaysptrans/pay_bank mmpaysptrans/query_bank risk/getpublickey]]):gmatch("%S+") do
  CERTIFICATE_ENDPOINTS[name] = true
end
local function wants_certificate(v2path)
  v2path = v2path:gsub("/+$", "")
  return v2path:find("^secapi/") ~= nil or CERTIFICATE_ENDPOINTS[v2path] == true
end

local CALL_OPTIONS = { xml = true, security = true, headers = true, timeout = true, retry = true }

-- Headers a caller may not give: the client writes them from the request.
local OWNED = {
  authorization = true, host = true, ["content-length"] = true, ["transfer-encoding"] = true,
  connection = true, ["keep-alive"] = true, expect = true, te = true, trailer = true, upgrade = true,
  ["content-type"] = true, ["proxy-authorization"] = true, ["proxy-connection"] = true,
}

local function header_lines(settings, given)
  local lines, seen = {}, {}
  if given ~= nil then
    if type(given) ~= "table" then raise("headers must be a table of name -> value") end
    for name, value in pairs(given) do
      if type(name) ~= "string" or type(value) ~= "string" or not headers.valid_name(name)
          or not headers.valid_value(value) then
        raise("headers must map header names to string values without line breaks")
      end
      local lower = name:lower()
      if OWNED[lower] then raise(("headers.%s is set by the client for APIv2 calls"):format(name)) end
      if seen[lower] then raise(("headers.%s is given twice (names are case-insensitive)"):format(name)) end
      seen[lower] = true
      lines[#lines + 1] = name .. ": " .. value
    end
  end
  lines[#lines + 1] = "Content-Type: text/xml; charset=utf-8"
  if not seen.accept then lines[#lines + 1] = "Accept: text/xml" end
  if not seen["user-agent"] then lines[#lines + 1] = "User-Agent: " .. settings.user_agent end
  return lines
end

--- prepare(settings, method, path, opts) -> prepared; raises on a
-- programmer error (no apiv2_key, no xml, a bad field, security without
-- merchant_cert) before anything is queued.
function v2request.prepare(settings, method, path, opts)
  local v2 = settings.v2
  if not (v2 and v2.apiv2_key) then
    raise("APIv2 calls (client.v2...) need apiv2_key in wechatpay.new: the 32-character APIv2 key")
  end
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then raise("request options must be a table") end
  local v2path = path:gsub("^/*v2/", "")
  -- a GET would also count as safe to send again, whatever it asks for
  if method ~= "POST" then raise(("v2/%s: APIv2 calls are POST (:post{ xml = ... }), not %s"):format(v2path, method)) end
  local not_xml = NOT_XML[v2path:gsub("/+$", "")]
  if not_xml then
    raise(("v2/%s answers %s, not XML: not supported yet by client.v2 (v3's bill/tradebill or bill/fundflowbill "
      .. "with client:download serve the same bills)"):format(v2path, not_xml))
  end
  local variables
  for name in pairs(opts) do
    if not CALL_OPTIONS[name] then
      variables = variables or request.template_names(v2path)
      if not variables[name] then
        raise(("unknown request option '%s' for v2/%s: APIv2 calls take xml, security, headers, timeout "
          .. "and retry"):format(tostring(name), v2path))
      end
    end
  end
  if opts.xml == nil then raise(("v2/%s: give the request fields as xml = { ... }"):format(v2path)) end
  if opts.security ~= nil and type(opts.security) ~= "boolean" then raise("security must be true or false") end
  local security = opts.security
  if security == nil then security = v2.tls ~= nil and wants_certificate(v2path) end
  if opts.security and not v2.tls then
    raise(("v2/%s: security = true presents the merchant certificate (mutual TLS): give merchant_cert = "
      .. "\"file:///path/apiclient_cert.pem\" to wechatpay.new"):format(v2path))
  end
  local fields = xml.fields(opts.xml, "xml")
  if fields.sign ~= nil then raise("xml.sign is computed by the client: leave it out") end
  local sign_type = fields.sign_type or sign.MD5
  if not sign.is_type(sign_type) then
    raise(("xml.sign_type must be \"MD5\" or \"HMAC-SHA256\", got %q"):format(sign_type:sub(1, 32)))
  end
  -- filled when absent, never overriding a given value, nor adding one
  -- name beside the other
  if fields.mch_id == nil and fields.mchid == nil then
    if MCHID_ENDPOINTS[v2path:gsub("/+$", "")] then fields.mchid = settings.mchid
    else fields.mch_id = settings.mchid end
  end
  if fields.nonce_str == nil then fields.nonce_str = core.nonce() end
  fields.sign = sign.sign(fields, v2.apiv2_key(), sign_type)
  local idempotent = false
  for _, name in ipairs(IDEMPOTENCY_FIELDS) do
    if fields[name] ~= nil and fields[name] ~= "" then idempotent = true end
  end
  local timeout = settings.timeout
  if opts.timeout ~= nil then timeout = config.number(opts.timeout, "timeout", config.RANGES.timeout, "request") end
  return {
    method = method,
    target = request.expand((v2path:gsub("/+$", "")), opts),   -- no APIv2 endpoint ends in "/"
    body = xml.encode(fields),
    headers = header_lines(settings, opts.headers),
    timeout = timeout,
    idempotent = idempotent,
    retry = config.retry_policy(opts.retry, settings.retry, "request"),
    sign_type = sign_type,
    security = security,
  }
end

--- sign(settings, prepared) -> the transport request (already signed in prepare).
function v2request.sign(settings, prepared)
  return {
    method = prepared.method,
    url = settings.base_url .. prepared.target,
    headers = prepared.headers,
    body = prepared.body,
    timeout = prepared.timeout,
    connect_timeout = settings.connect_timeout,
    client_cert = prepared.security or nil,
  }
end

return v2request
