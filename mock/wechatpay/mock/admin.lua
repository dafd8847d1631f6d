-- The plain-HTTP admin server block (worker side), reached only by the
-- launcher: it listens on loopback and wants the random token the launcher
-- wrote into the config.
--
--   GET    /ping            -> {"ready":true}   (500 while keys are not loaded)
--   GET    /stats           -> counters
--   POST   /reset           -> zero counters, forget grants and faults
--   POST   /faults          {"name":..., "opts":{...}} -> {"armed":n}
--   DELETE /faults          -> clear
--   GET    /faults          -> the pending queue
--   GET    /coupons/{id}    -> the grant record, or 404
--   POST   /configure       {"latency":..., "rate_limit":...}
--   POST   /rotate          -> {"serial": the certificate that signs from now on}
--   POST   /notify          {"url":..., "resource":{...}, ...} -> {"n":..., "id":...}
--   GET    /notify/{n}      -> the deliveries and attempts of notification n
--   GET    /uploads         -> {"uploads":[...]}: the media upload requests seen, oldest first
--   GET    /media/{id}      -> the record of an uploaded file, or 404
local cjson = require("cjson.safe")
local coupons = require("wechatpay.mock.coupons")
local faults = require("wechatpay.mock.faults")
local media = require("wechatpay.mock.media")
local notify = require("wechatpay.mock.notify")
local state = require("wechatpay.mock.state")

local admin = {}

local function reply(status, value)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.print(cjson.encode(value))
  return ngx.exit(ngx.HTTP_OK)
end

local function read_json()
  ngx.req.read_body()
  local text = ngx.req.get_body_data() or "{}"
  local value = cjson.decode(text)
  if type(value) ~= "table" then
    return nil
  end
  return value
end

local STAT_NAMES = { "connections", "requests", "grants", "in_flight_max", "in_flight",
  "certificate_downloads", "notifications" }

local function stats(dicts)
  local out = {}
  for _, name in ipairs(STAT_NAMES) do
    out[name] = dicts.stats:get(name) or 0
  end
  return out
end

local function reset(dicts)
  dicts.data:flush_all()
  dicts.data:flush_expired()
  faults.clear(dicts.faults)
  local in_flight = dicts.stats:get("in_flight") or 0
  for _, name in ipairs({ "connections", "requests", "grants", "certificate_downloads", "notifications" }) do
    dicts.stats:set(name, 0)
  end
  -- Requests still running will decrement in_flight later: keep it.
  dicts.stats:set("in_flight_max", in_flight)
end

function admin.handle()
  if ngx.var.http_x_mock_token ~= state.config.admin_token then
    return reply(403, { error = "forbidden" })
  end
  local dicts = state.dicts()
  local method = ngx.req.get_method()
  local uri = ngx.var.uri

  if uri == "/ping" then
    if not state.ready then
      return reply(500, { error = state.load_error or "not ready" })
    end
    return reply(200, { ready = true })
  elseif uri == "/stats" and method == "GET" then
    return reply(200, stats(dicts))
  elseif uri == "/reset" and method == "POST" then
    reset(dicts)
    return reply(200, { ok = true })
  elseif uri == "/faults" and method == "POST" then
    local req = read_json()
    if not req then
      return reply(400, { error = "body must be a JSON object" })
    end
    local opts, err = faults.check(req.name, req.opts)
    if not opts then
      return reply(400, { error = err })
    end
    return reply(200, { armed = faults.arm(dicts.faults, cjson, req.name, opts) })
  elseif uri == "/faults" and method == "DELETE" then
    faults.clear(dicts.faults)
    return reply(200, { ok = true })
  elseif uri == "/faults" and method == "GET" then
    return reply(200, { pending = faults.pending(dicts.faults, cjson) })
  elseif uri == "/configure" and method == "POST" then
    local req = read_json()
    if not req then
      return reply(400, { error = "body must be a JSON object" })
    end
    if type(req.latency) == "number" then
      dicts.settings:set("latency", req.latency)
    end
    if type(req.rate_limit) == "number" then
      dicts.settings:set("rate_limit", req.rate_limit)
    end
    return reply(200, { ok = true })
  elseif uri == "/rotate" and method == "POST" then
    local generation = (dicts.settings:get("cert_generation") or 2) + 1
    if not state.certs[generation] then
      return reply(409, { error = "no further certificate to rotate to" })
    end
    dicts.settings:set("cert_generation", generation)
    return reply(200, { serial = state.certs[generation].serial })
  elseif uri == "/notify" and method == "POST" then
    local req = read_json()
    if not req then
      return reply(400, { error = "body must be a JSON object" })
    end
    local n, id = notify.start(req)
    if not n then
      return reply(400, { error = id })
    end
    return reply(200, { n = n, id = id })
  elseif method == "GET" and uri:match("^/notify/%d+$") then
    local record = notify.get(tonumber(uri:match("%d+$")))
    if not record then
      return reply(404, { error = "no such notification" })
    end
    record.spec = nil
    return reply(200, record)
  elseif uri == "/uploads" and method == "GET" then
    return reply(200, { uploads = media.uploads() })
  elseif method == "GET" and uri:match("^/media/[^/]+$") then
    local record = media.get(ngx.unescape_uri(uri:match("^/media/([^/]+)$")))
    if not record then
      return reply(404, { error = "no such media" })
    end
    return reply(200, record)
  elseif method == "GET" then
    local coupon_id = uri:match("^/coupons/([^/]+)$")
    if coupon_id then
      local record = coupons.record(ngx.unescape_uri(coupon_id))
      if not record then
        return reply(404, { error = "no such coupon" })
      end
      return reply(200, record)
    end
  end
  return reply(404, { error = "no such admin call" })
end

return admin
