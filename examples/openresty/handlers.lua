--- Handlers for examples/openresty/nginx.conf: a grant, an async batch, a
-- grant made later from a timer, and a callback receiver.  Every call here
-- runs on cosockets and yields: the worker keeps serving other requests.
local cjson = require("cjson.safe")
local wechatpay = require("wechatpay")

local handlers = {}
local client

--- init_by_lua: build the client (keys and CA read now, by the master),
-- configured as bin/wechatpay is: the WECHATPAY_* variables nginx.conf lets
-- through (WECHATPAY_PRIVATE_KEY=/path/apiclient_key.pem, ...), or WECHATPAY_CONFIG.
function handlers.init()
  client = wechatpay.new(assert(require("wechatpay.cli.config").configured{
    timeout = 10,
    -- one limit for every worker of this server
    rate_limit = { calls = 1000, per = 60, shared_dict = "wechatpay" },
  }))
end

local function reply(status, value)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(value))
end

local function read_json()
  ngx.req.read_body()
  return cjson.decode(ngx.req.get_body_data() or "") or {}
end

local function grant_body(req)
  return {
    stock_id = req.stock_id, out_request_no = req.out_request_no, appid = req.appid, card_type = "ID_CARD",
    user_name = assert(client:encrypt(req.name)),
    id_card_number = assert(client:encrypt(req.id_card)),
  }
end

--- POST /grant { openid, name, id_card, stock_id, appid, out_request_no }
function handlers.grant()
  local req = read_json()
  local res, err = client.v3.multiuse.users._openid_.coupons:post{ openid = req.openid, json = grant_body(req) }
  if not res then
    -- tostring(err) is one safe line: for logs and for ngx.say
    ngx.log(ngx.WARN, "grant failed: ", tostring(err))
    return reply(err.status or 502, { error = tostring(err), request_id = err.request_id })
  end
  reply(200, res:json())
end

--- POST /grant/batch [ {...}, {...} ]: every grant at once (up to the
-- client's max_concurrency in flight for this request), answered together.
function handlers.batch()
  local list = {}
  for i, req in ipairs(read_json()) do
    list[i] = client.v3.multiuse.users._openid_.coupons:postAsync{ openid = req.openid, json = grant_body(req) }
  end
  local outcomes = wechatpay.settle(list):wait()
  local out = {}
  for i, o in ipairs(outcomes) do
    out[i] = o.res and o.res:json() or { error = tostring(o.err) }
  end
  reply(200, out)
end

--- POST /grant/later {...}: answer at once, grant from a timer (a timer has
-- its own context: cosockets work there, as in a handler).
function handlers.grant_later()
  local req = read_json()
  local json = grant_body(req)
  local ok, err = ngx.timer.at(0, function(premature)
    if premature then return end
    local res, gerr = client.v3.multiuse.users._openid_.coupons:post{ openid = req.openid, json = json }
    if not res then ngx.log(ngx.ERR, "grant ", req.out_request_no, " failed: ", tostring(gerr)) end
  end)
  if not ok then return reply(500, { error = err }) end
  reply(202, { accepted = req.out_request_no })
end

--- POST /wechatpay/notify: WeChat Pay's notifications, one line: the raw
-- body verified, the resource decrypted, each event id handled once across
-- the workers (the shared dict), and the answer WeChat Pay expects (204, or
-- a FAIL body so that it delivers again).
function handlers.notify()
  wechatpay.ngx.notification(client, function(event)
    -- mark the order paid, grant...: true when done; false or an error to be
    -- delivered again
    ngx.log(ngx.INFO, "notification ", event.id, " ", event.event_type)
    ngx.shared.wechatpay_handled:incr(event.id, 1, 0)
    return true
  end, { dedupe = wechatpay.dedupe.shared_dict(ngx.shared.wechatpay_events) })
end

return handlers
