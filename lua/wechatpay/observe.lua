--- The on_call hook: one record per call, made of what a merchant may log.
--
--   wechatpay.new{ ..., on_call = function(record) ... end }
--
-- record = {
--   method = "POST", path = "v3/multiuse/users/{openid}/coupons",
--   status = 200 | nil, code = "PARAM_ERROR" | nil, error = "http" | nil (an errors.KINDS name),
--   request_id = "08F4..." | nil, attempts = 1, failovers = 0, host = "api.mch.weixin.qq.com",
--   queue_time =, sign_time =, network_time =, verify_time =, total_time =   (seconds)
-- }
--
-- Nothing a call carries reaches it: no header, body, query or error
-- message (a server's message may quote what was sent).  The path is the
-- template; a literal segment that is not an API word (an openid or an
-- order number a caller put in the path itself) shows as {?}.  WeChat Pay's
-- code and Request-ID pass only when they have their usual shape.
local errors = require("wechatpay.errors")
local nginx = require("wechatpay.nginx")

local observe = {}

--- The segment shown in place of a value that may identify someone.
observe.HIDDEN = "{?}"

local VARIABLE = "{%+?[%a_][%w_]*}"

-- API words are lower-case (multiuse, out-trade-no, profitsharing) with at
-- most one trailing digit (v3, h5); openids are mixed case, order and
-- coupon numbers have digits: those are hidden.
local function api_word(text)
  return #text <= 40 and text:find("^[a-z][a-z_-]*%d?$") ~= nil
end

local function shown_segment(segment)
  if segment:find("{", 1, true) then
    local literal = segment:gsub(VARIABLE, "")
    if literal == "" or api_word(literal) then return segment end
    return observe.HIDDEN
  end
  if api_word(segment) then return segment end
  return observe.HIDDEN
end

--- template(path) -> the path as the record shows it: "v3/multiuse/users/{openid}/coupons"
-- as written; "v3/multiuse/users/oUpF8.../coupons" as "v3/multiuse/users/{?}/coupons".
function observe.template(path)
  local out = {}
  for segment in path:gmatch("[^/]+") do out[#out + 1] = shown_segment(segment) end
  return table.concat(out, "/")
end

local function token(value, max)
  if type(value) == "string" and #value <= max and value:find("^[%w_.:-]+$") then return value end
  return nil
end

--- start(method, path) -> the record of a call just made, its timings at zero.
-- The dispatcher adds queue_time, sign_time and network_time (dispatcher.lua).
function observe.start(method, path, now)
  return {
    method = method, path = observe.template(path),
    attempts = 0, failovers = 0,
    queue_time = 0, sign_time = 0, network_time = 0, verify_time = 0, total_time = 0,
    started = now,
  }
end

--- finish(record, res, err, host, now): fills in the outcome.
function observe.finish(record, res, err, host, now)
  record.total_time = now - record.started
  record.started, record.since = nil, nil
  record.host = host
  if res then
    record.status = res.status
    record.request_id = token(res.headers and res.headers["request-id"], 128)
  else
    record.error = err.kind
    record.status = type(err.status) == "number" and err.status or nil
    record.code = token(err.code, 64)
    record.request_id = token(err.request_id, 128)
  end
  return record
end

local function warn(message)
  if nginx.ACTIVE then
    nginx.warn(message)
  else
    io.stderr:write(message, "\n")
  end
end

--- deliver(hook, record, warned) -> warned [, interrupt]: calls the hook;
-- one that raises is reported once (warned says whether it was already)
-- and never fails the call.  An interrupt (Ctrl-C) it raised is returned,
-- for the caller to raise again once the call is settled.
function observe.deliver(hook, record, warned)
  local ok, err = pcall(hook, record)
  -- Ctrl-C while the hook ran: given back, for the caller to raise once
  -- the call is settled
  if not ok and errors.is_interrupt(err) then return warned, err end
  if ok or warned then return warned end
  -- what it raised may not print either (a __tostring that raises or gives no string)
  local printed, text = pcall(tostring, err)
  if not printed or type(text) ~= "string" then text = "(a " .. type(err) .. " that does not print)" end
  text = text:gsub("[%z\1-\31\127]", " "):sub(1, 300)
  warn("wechatpay: the on_call hook raised (reported once per client; the call itself is not affected): " .. text)
  return true
end

return observe
