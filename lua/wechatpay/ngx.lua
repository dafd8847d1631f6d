--- wechatpay.ngx: the OpenResty (nginx + its Lua module) side of callbacks
-- and platform certificates.
--
--   location = /wechatpay/notify {
--     content_by_lua_block {
--       require("wechatpay.ngx").notification(client, handler, { dedupe = store })
--     }
--   }
--   init_worker_by_lua_block {
--     require("wechatpay.ngx").refresh_certificates(client, { every = 12 * 3600 })
--   }
--
-- Loading this module outside nginx is harmless; its functions raise there.
local certificates = require("wechatpay.certificates")
local errors = require("wechatpay.errors")
local nginx = require("wechatpay.nginx")
local notification = require("wechatpay.notification")

local M = {}

--- the largest body read as a callback (WeChat Pay's are a few KiB)
M.MAX_BODY = 1024 * 1024

local function need_nginx(what)
  if not nginx.ACTIVE then
    errors.raise(("wechatpay.ngx.%s: runs inside nginx's Lua module (OpenResty) only"):format(what))
  end
end

-- The raw request body, -> body | nil, status.  A body over max is refused
-- by its Content-Length, or by the size of the file nginx spooled it to,
-- before it is read into memory.
local function read_body(max)
  local length = tonumber(ngx.var.http_content_length or "")
  if length and length > max then return nil, 413 end
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if body then
    if #body > max then return nil, 413 end
    return body
  end
  local path = ngx.req.get_body_file()
  if not path then return "" end   -- no body at all
  local f = io.open(path, "rb")
  if not f then return nil, 500 end
  local size = f:seek("end")
  if not size or size > max then
    f:close()
    return nil, size and 413 or 500
  end
  f:seek("set", 0)
  body = f:read(size) or ""
  f:close()
  if #body ~= size then return nil, 500 end
  return body
end

local FAIL = {
  [413] = '{"code":"FAIL","message":"the body is too large for a notification"}',
  [500] = '{"code":"FAIL","message":"the request body could not be read"}',
}

-- Sets the status, writes the body (JSON when there is one), ends the request.
local function answer(status, body)
  ngx.status = status
  if body == nil or body == "" then return ngx.exit(status) end
  ngx.header["Content-Type"] = "application/json"
  ngx.header["Content-Length"] = #body
  ngx.print(body)
  return ngx.exit(ngx.HTTP_OK)   -- the status is already sent
end

local warned_per_worker = false   -- the warning about a per-worker dedupe store, once

local NOTIFICATION_OPTIONS = { dedupe = true, claim_ttl = true, done_ttl = true, max_body = true, log = true }

--- notification(client, handler [, opts]): the whole content handler of a
-- notify_url.  Reads the raw body (also when nginx spooled it to a temp
-- file), takes the headers as received, runs wechatpay.notification.handle
-- and answers with its status and body; ends the request.
-- opts: those of notification.handle (dedupe, claim_ttl, done_ttl), and
--   max_body (MAX_BODY: larger bodies get 413 unread),
--   log (true: a refused or failed callback is logged with ngx.log WARN).
function M.notification(client, handler, opts)
  need_nginx("notification")
  if type(handler) ~= "function" then errors.raise("wechatpay.ngx.notification: handler must be a function") end
  opts = opts or {}
  if type(opts) ~= "table" then errors.raise("wechatpay.ngx.notification: options must be a table") end
  local handle_opts = {}
  for name, value in pairs(opts) do
    if not NOTIFICATION_OPTIONS[name] then
      errors.raise(("wechatpay.ngx.notification: unknown option '%s'"):format(tostring(name)))
    end
    if name ~= "max_body" and name ~= "log" then handle_opts[name] = value end
  end
  notification.check_ttls(opts, "wechatpay.ngx.notification")
  local max = opts.max_body or M.MAX_BODY
  if type(max) ~= "number" or max < 1 then errors.raise("wechatpay.ngx.notification: max_body must be a positive number") end
  local body, refused = read_body(max)
  if not body then
    if opts.log ~= false then
      ngx.log(ngx.WARN, "wechatpay: notification refused: ", refused == 413 and "body over " .. max .. " bytes"
        or "the request body could not be read")
    end
    return answer(refused, FAIL[refused])
  end
  -- raw: the names as received; repeated headers arrive as tables, which
  -- verification refuses
  if opts.dedupe == nil and not warned_per_worker and ngx.worker.count() > 1 then
    -- the default store is one worker's memory: another worker would run a
    -- redelivery of the same event again
    warned_per_worker = true
    ngx.log(ngx.WARN, "wechatpay: notification without a dedupe store under ", ngx.worker.count(), " workers: ",
      "each worker remembers only its own events; give dedupe = wechatpay.dedupe.shared_dict(ngx.shared.NAME)")
  end
  local headers = ngx.req.get_headers(100, true)
  local status, text, detail, store_err = notification.handle(client, headers, body, handler, handle_opts)
  if store_err and opts.log ~= false then
    ngx.log(ngx.WARN, "wechatpay: notification answered ", status, ": ", store_err.message)
  end
  if status >= 400 and opts.log ~= false then
    local message = type(detail) == "table" and detail.message
    if not message and status == 503 and type(detail) == "table" and type(detail.id) == "string" then
      message = "event " .. detail.id:sub(1, 64) .. " is being handled by another delivery; WeChat Pay delivers it again"
    end
    message = message or tostring(detail)
    ngx.log(ngx.WARN, "wechatpay: notification answered ", status, ": ", message)
  end
  return answer(status, text)
end

--- refresh_certificates(client [, opts]) -> true | nil, err.  Call it in
-- init_worker_by_lua: it only schedules timers (never blocks init_worker).
-- A first refresh runs at once, then every opts.every seconds (12 h).  With
-- a shared-dict cert_store, one worker downloads (the dict's lock); the
-- others wait for it and load what it stored, and a worker whose timer
-- comes after another's recent download only loads.
-- opts: every (seconds), delay (of the first refresh, 0), on_result
--   (function(added, err), called in the timer after each refresh).
function M.refresh_certificates(client, opts)
  need_nginx("refresh_certificates")
  opts = opts or {}
  if type(opts) ~= "table" then errors.raise("wechatpay.ngx.refresh_certificates: options must be a table") end
  for name in pairs(opts) do
    if name ~= "every" and name ~= "delay" and name ~= "on_result" then
      errors.raise(("wechatpay.ngx.refresh_certificates: unknown option '%s'"):format(tostring(name)))
    end
  end
  local every = opts.every or certificates.REFRESH_INTERVAL
  if type(every) ~= "number" or every < 1 then
    errors.raise("wechatpay.ngx.refresh_certificates: every must be a number of seconds (>= 1)")
  end
  local delay = opts.delay or 0
  if type(delay) ~= "number" or delay < 0 then
    errors.raise("wechatpay.ngx.refresh_certificates: delay must be a number of seconds")
  end
  local on_result = opts.on_result
  local function run(premature)
    if premature then return end
    -- half the period: the worker whose timer fires first downloads
    local ok, added, err = pcall(client.refresh_certificates, client, { max_age = every / 2 })
    if not ok then added, err = nil, added end
    if not added then
      ngx.log(ngx.WARN, "wechatpay: certificate refresh failed: ",
        type(err) == "table" and tostring(err.message) or tostring(err))
    end
    if on_result then
      local cok, cerr = pcall(on_result, added, err)
      if not cok then ngx.log(ngx.ERR, "wechatpay: refresh_certificates on_result: ", tostring(cerr)) end
    end
  end
  local ok, err = ngx.timer.at(delay, run)
  if not ok then return nil, "wechatpay.ngx.refresh_certificates: " .. tostring(err) end
  ok, err = ngx.timer.every(every, run)
  if not ok then return nil, "wechatpay.ngx.refresh_certificates: " .. tostring(err) end
  return true
end

return M
