-- The APIv2 endpoints of the mock (worker side): flat XML in and out,
-- signs checked in MD5 and HMAC-SHA256, answers signed as WeChat Pay signs
-- them.  Its own XML writer, signer (luaossl) and parser (lua-expat
-- directly): nothing of the client's v2 modules, so a mistake shared by
-- both sides cannot hide.
--
--   POST /pay/micropay                  payment by the customer's code (idempotent on out_trade_no)
--   POST /pay/unifiedorder              a prepay_id (and code_url for NATIVE)
--   POST /pay/orderquery                by out_trade_no or transaction_id
--   POST /mmpaymkttransfers/sendredpack mutual TLS; MD5 only; answered unsigned, as WeChat Pay does
--   POST /secapi/pay/refund             mutual TLS (idempotent on out_refund_no)
-- Mutual TLS: the client certificate must verify against the mock CA
-- (nginx: ssl_verify_client optional) and carry the merchant serial.
-- Faults (server:fault(name, { path =, count = })): v2_bad_sign (the
-- request's sign is judged wrong), v2_return_fail (return_code FAIL,
-- opts.message), v2_result_fail (result_code FAIL, opts.code/opts.message),
-- v2_tamper_sign (the answer's sign altered after signing), v2_unsigned (a
-- SUCCESS answer without its sign), v2_answer_sign_type (the answer signed
-- with opts.sign_type and saying so, whatever the request's); status, delay,
-- status_after_grant, reset and truncate act as on /v3/.
local cjson = require("cjson.safe")
local digest = require("openssl.digest")
local hmac = require("openssl.hmac")
local lxp = require("lxp")
local faults = require("wechatpay.mock.faults")
local response = require("wechatpay.mock.response")
local state = require("wechatpay.mock.state")
local util = require("wechatpay.mock.util")

local v2 = {}

local function upper_hex(bytes)
  return util.hex(bytes):upper()
end

function v2.sign(fields, key, sign_type)
  local names = {}
  for name, value in pairs(fields) do
    if name ~= "sign" and value ~= "" then names[#names + 1] = name end
  end
  table.sort(names)   -- LuaJIT compares strings byte by byte
  local parts = {}
  for i, name in ipairs(names) do parts[i] = name .. "=" .. fields[name] end
  local text = table.concat(parts, "&") .. "&key=" .. key
  if sign_type == "HMAC-SHA256" then
    return upper_hex(hmac.new(key, "sha256"):final(text))
  end
  local md = digest.new("md5")
  md:update(text)
  return upper_hex(md:final())
end

function v2.encode(fields)
  local out = { "<xml>" }
  for name, value in pairs(fields) do
    out[#out + 1] = "<" .. name .. "><![CDATA[" .. tostring(value):gsub("%]%]>", "]]]]><![CDATA[>")
      .. "]]></" .. name .. ">"
  end
  out[#out + 1] = "</xml>"
  return table.concat(out)
end

-- flat <xml> -> table, or nil, why
function v2.parse(body)
  if body:find("<!DOCTYPE", 1, true) then return nil, "DOCTYPE" end
  local fields, depth, name, text = {}, 0, nil, nil
  local parser = lxp.new({
    StartElement = function(_, tag)
      depth = depth + 1
      if depth == 1 and tag ~= "xml" then error("root") end
      if depth == 2 then name, text = tag, {} end
      if depth > 2 then error("nested") end
    end,
    EndElement = function()
      if depth == 2 then fields[name] = table.concat(text) end
      depth = depth - 1
    end,
    CharacterData = function(_, data)
      if depth == 2 then text[#text + 1] = data end
    end,
  })
  local ok, r1 = pcall(parser.parse, parser, body)
  local ok2, r2 = pcall(parser.parse, parser)
  pcall(parser.close, parser)
  if not (ok and r1 and ok2 and r2) then return nil, "not XML" end
  return fields
end

local function fail(msg)
  return { return_code = "FAIL", return_msg = msg }
end

local function load_record(kind, id)
  local text = state.dicts().data:get("v2:" .. kind .. ":" .. id)
  return text and cjson.decode(text) or nil
end

local function save_record(kind, id, record)
  state.dicts().data:set("v2:" .. kind .. ":" .. id, cjson.encode(record))
end

--- record(kind, id) -> the stored order / redpack / refund, for the admin port
function v2.record(kind, id)
  return load_record(kind, id)
end

local function digits(n)
  local out = {}
  for i = 1, n do out[i] = tostring(math.random(0, 9)) end
  return table.concat(out)
end

local function require_fields(f, names)
  for _, name in ipairs(names) do
    if f[name] == nil or f[name] == "" then return "缺少参数" .. name end
  end
end

local function pay_fields(f, extra)
  local out = { result_code = "SUCCESS", appid = f.appid, mch_id = f.mch_id }
  for k, v in pairs(extra) do out[k] = v end
  return out
end

local function micropay(f)
  local missing = require_fields(f, { "appid", "body", "out_trade_no", "total_fee", "spbill_create_ip", "auth_code" })
  if missing then return fail(missing) end
  if not f.total_fee:match("^[1-9]%d*$") then return fail("total_fee 必须为正整数") end
  local order = load_record("order", f.out_trade_no)
  if order and order.total_fee ~= f.total_fee then
    return { return_code = "SUCCESS", result_code = "FAIL", err_code = "OUT_TRADE_NO_USED", err_code_des = "商户订单号重复" }
  end
  if not order then
    order = { out_trade_no = f.out_trade_no, transaction_id = "42000" .. digits(23), total_fee = f.total_fee,
      trade_state = "SUCCESS", trade_type = "MICROPAY", body = f.body, openid = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" }
    save_record("order", f.out_trade_no, order)
    save_record("txn", order.transaction_id, { out_trade_no = f.out_trade_no })
    state.dicts().stats:incr("v2_payments", 1, 0)
  end
  return pay_fields(f, { out_trade_no = order.out_trade_no, transaction_id = order.transaction_id,
    total_fee = order.total_fee, trade_type = "MICROPAY", openid = order.openid, bank_type = "OTHERS",
    fee_type = "CNY", cash_fee = order.total_fee, time_end = os.date("!%Y%m%d%H%M%S", ngx.time() + 8 * 3600) })
end

local function unifiedorder(f)
  local missing = require_fields(f, { "appid", "body", "out_trade_no", "total_fee", "spbill_create_ip", "notify_url",
    "trade_type" })
  if missing then return fail(missing) end
  local order = load_record("order", f.out_trade_no)
  if not order then
    order = { out_trade_no = f.out_trade_no, total_fee = f.total_fee, trade_state = "NOTPAY",
      trade_type = f.trade_type, prepay_id = "wx" .. digits(30), body = f.body }
    save_record("order", f.out_trade_no, order)
  end
  local out = pay_fields(f, { prepay_id = order.prepay_id, trade_type = order.trade_type })
  if order.trade_type == "NATIVE" then out.code_url = "weixin://wxpay/bizpayurl?pr=" .. digits(7) end
  return out
end

local function orderquery(f)
  local key = f.out_trade_no
  if (key == nil or key == "") and f.transaction_id then
    local link = load_record("txn", f.transaction_id)
    key = link and link.out_trade_no
  end
  if key == nil or key == "" then return fail("缺少参数out_trade_no") end
  local order = load_record("order", key)
  if not order then
    return { return_code = "SUCCESS", result_code = "FAIL", err_code = "ORDERNOTEXIST", err_code_des = "订单不存在" }
  end
  return pay_fields(f, { out_trade_no = order.out_trade_no, transaction_id = order.transaction_id,
    trade_state = order.trade_state, total_fee = order.total_fee, trade_type = order.trade_type })
end

local function sendredpack(f)
  local missing = require_fields(f, { "mch_billno", "wxappid", "send_name", "re_openid", "total_amount", "total_num",
    "wishing", "client_ip", "act_name", "remark" })
  if missing then return fail(missing) end
  local packet = load_record("redpack", f.mch_billno)
  if packet and (packet.re_openid ~= f.re_openid or packet.total_amount ~= f.total_amount) then
    return { return_code = "SUCCESS", result_code = "FAIL", err_code = "PARAM_ERROR", err_code_des = "商户单号重复，参数不一致" }
  end
  if not packet then
    packet = { mch_billno = f.mch_billno, re_openid = f.re_openid, total_amount = f.total_amount,
      wxappid = f.wxappid, send_listid = "1000041701" .. digits(20), act_name = f.act_name }
    save_record("redpack", f.mch_billno, packet)
    state.dicts().stats:incr("redpacks", 1, 0)
  end
  return { return_code = "SUCCESS", return_msg = "发放成功", result_code = "SUCCESS", err_code = "SUCCESS",
    err_code_des = "发放成功", mch_billno = packet.mch_billno, mch_id = f.mch_id, wxappid = packet.wxappid,
    re_openid = packet.re_openid, total_amount = packet.total_amount, send_listid = packet.send_listid }
end

local function refund(f)
  local missing = require_fields(f, { "out_refund_no", "total_fee", "refund_fee" })
  if missing then return fail(missing) end
  local order = f.out_trade_no and load_record("order", f.out_trade_no)
  if not order then
    return { return_code = "SUCCESS", result_code = "FAIL", err_code = "ORDERNOTEXIST", err_code_des = "订单不存在" }
  end
  local record = load_record("refund", f.out_refund_no)
  if not record then
    record = { out_refund_no = f.out_refund_no, out_trade_no = order.out_trade_no, refund_fee = f.refund_fee,
      transaction_id = order.transaction_id, refund_id = "50000" .. digits(23) }
    save_record("refund", f.out_refund_no, record)
    state.dicts().stats:incr("refunds", 1, 0)
  end
  return pay_fields(f, { out_refund_no = record.out_refund_no, out_trade_no = record.out_trade_no,
    transaction_id = record.transaction_id, refund_id = record.refund_id, refund_fee = record.refund_fee,
    total_fee = f.total_fee, cash_fee = f.total_fee })
end

local ROUTES = {
  ["/pay/micropay"] = { run = micropay },
  ["/pay/unifiedorder"] = { run = unifiedorder },
  ["/pay/orderquery"] = { run = orderquery },
  ["/mmpaymkttransfers/sendredpack"] = { run = sendredpack, mtls = true, md5_only = true, unsigned = true },
  ["/secapi/pay/refund"] = { run = refund, mtls = true },
}

--- true when the request path is one of the APIv2 endpoints
function v2.routes(path)
  return ROUTES[path] ~= nil
end

local function read_body()
  ngx.req.read_body()
  return ngx.req.get_body_data() or ""
end

-- The merchant certificate, checked by nginx against the mock CA.
local function client_certificate_problem()
  if ngx.var.ssl_client_verify ~= "SUCCESS" then
    return "证书验证失败: 请求未携带有效的商户API证书 (" .. tostring(ngx.var.ssl_client_verify) .. ")"
  end
  local serial = (ngx.var.ssl_client_serial or ""):upper()
  if serial ~= state.config.merchant_serial then
    return "证书验证失败: 证书序列号与商户号不匹配"
  end
end

local function answer(fields, status)
  return { status = status or 200, body = v2.encode(fields), signed = false, content_type = "text/xml" }
end

local function process(endpoint, fault)
  local name = fault and fault.name
  if ngx.req.get_method() ~= "POST" then return fail("请使用post方法") end
  local f = v2.parse(read_body())
  if not f then return fail("XML格式错误") end
  local config = state.config
  local sign_type = f.sign_type or "MD5"
  if sign_type ~= "MD5" and sign_type ~= "HMAC-SHA256" then return fail("签名类型错误") end
  if endpoint.md5_only and sign_type ~= "MD5" then return fail("签名类型错误: 仅支持MD5") end
  if f.mch_id ~= config.mchid then return fail("mch_id参数错误") end
  if f.nonce_str == nil or f.nonce_str == "" or #f.nonce_str > 32 then return fail("nonce_str参数错误") end
  if name == "v2_bad_sign" or f.sign ~= v2.sign(f, config.apiv2_key, sign_type) then return fail("签名错误") end
  if endpoint.mtls then
    local problem = client_certificate_problem()
    if problem then return fail(problem) end
  end
  if name == "v2_return_fail" then return fail(fault.opts.message or "SYSTEMERROR") end
  local out
  if name == "v2_result_fail" then
    -- return_code SUCCESS: signed like any other such answer
    out = { return_code = "SUCCESS", return_msg = "OK", result_code = "FAIL",
      err_code = fault.opts.code or "SYSTEMERROR", err_code_des = fault.opts.message or "系统超时" }
  else
    out = endpoint.run(f)
  end
  if out.return_code == nil then out.return_code, out.return_msg = "SUCCESS", "OK" end
  -- FAIL answers and the red packet's come unsigned, as WeChat Pay's do
  if out.return_code == "SUCCESS" and not endpoint.unsigned and name ~= "v2_unsigned" then
    out.nonce_str = response.random_alnum(32)
    if name == "v2_answer_sign_type" then
      sign_type = fault.opts.sign_type
      out.sign_type = sign_type
    end
    out.sign = v2.sign(out, config.apiv2_key, sign_type)
    if name == "v2_tamper_sign" then
      out.sign = (out.sign:sub(1, 1) == "A" and "B" or "A") .. out.sign:sub(2)
    end
  end
  return out
end

--- handle(dicts, request_uri): the content phase of an APIv2 request.
function v2.handle(dicts, request_uri)
  dicts.stats:incr("requests", 1, 0)
  dicts.stats:incr("v2_requests", 1, 0)
  local fault = faults.take(dicts.faults, cjson, request_uri)
  local name = fault and fault.name
  local early = response.before_processing(fault)
  if early then return response.send(early, nil) end
  local path = request_uri:match("^[^?]*")
  local out = answer(process(ROUTES[path], fault))
  if name == "status_after_grant" then
    -- the operation happened; the answer is "lost" and replaced by an error
    out = response.from_fault(fault.opts, "mock fault: status after the operation")
  end
  return response.send(out, fault)
end

return v2
