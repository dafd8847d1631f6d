-- Callbacks (worker side): server:notify() POSTs a signed notification with
-- an encrypted resource to the merchant's URL, from an ngx.timer, and
-- delivers it again on anything but a 2xx, on a compressed schedule.  Every
-- attempt is recorded under the notification's number in the data dict.
--
-- Faults (opts.fault): tamper_body, stale_timestamp, signtest,
-- unknown_serial (each on every attempt), duplicate (a second delivery of
-- the same event after the first ends), concurrent (two deliveries at once).
local cjson = require("cjson.safe")
local gcm = require("wechatpay.mock.gcm")
local response = require("wechatpay.mock.response")
local state = require("wechatpay.mock.state")

local notify = {}

notify.FAULTS = { tamper_body = true, stale_timestamp = true, signtest = true, unknown_serial = true,
  duplicate = true, concurrent = true }
-- seconds before each attempt after the first (WeChat Pay: 15 s, 15 s, 30 s, 3 m, ...)
notify.SCHEDULE = { 0.1, 0.2, 0.4, 0.8 }

local function record_key(n) return "notify:" .. n end

local function load(n)
  local text = state.dicts().data:get(record_key(n))
  return text and cjson.decode(text)
end

local function save(n, record)
  state.dicts().data:set(record_key(n), cjson.encode(record))
end

-- No yield between load and save: one worker, so this is atomic.
-- A record that server:reset() flushed meanwhile is not written again.
local function update(n, fn)
  local record = load(n)
  if not record then return end
  fn(record)
  save(n, record)
end

--- notify.get(n) -> the record or nil
notify.get = load

-- The body and headers of one attempt, signed now.
local function message(spec)
  local body = spec.body
  local key, serial = state.signing_key()
  local timestamp = ngx.time()
  -- Well outside the 300 s window, not at its edge: ngx.time() comes from
  -- gettimeofday, while the receiver's os.time() is the kernel's coarse
  -- clock, which turns to the next second a few milliseconds later.  At
  -- -301 a delivery made in those milliseconds was 300 s old, and accepted.
  if spec.fault == "stale_timestamp" then timestamp = timestamp - 330 end
  timestamp = string.format("%d", timestamp)
  local nonce = response.random_alnum(32)
  local signature = response.sign(key, timestamp, nonce, body)
  if spec.fault == "signtest" then
    signature = "WECHATPAY/SIGNTEST/" .. ngx.encode_base64(response.random_alnum(192))
  elseif spec.fault == "unknown_serial" then
    serial = spec.serial or "PUB_KEY_ID_9999999999999999999999999999"
  elseif spec.fault == "tamper_body" then
    body = response.tamper(body)
  end
  return body, {
    ["Wechatpay-Timestamp"] = timestamp, ["Wechatpay-Nonce"] = nonce,
    ["Wechatpay-Signature"] = signature, ["Wechatpay-Serial"] = serial,
  }
end

-- POST body to url; returns status, answer body | nil, err.
local function post(url, body, headers)
  local scheme, host, port, path = url:match("^(https?)://([^/:]+):?(%d*)(.*)$")
  if not scheme then return nil, "bad url" end
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  if path == "" then path = "/" end
  local sock = ngx.socket.tcp()
  sock:settimeout(5000)
  local ok, err = sock:connect(host, port)
  if not ok then return nil, "connect: " .. tostring(err) end
  if scheme == "https" then
    ok, err = sock:sslhandshake(nil, host, false)
    if not ok then sock:close() return nil, "tls: " .. tostring(err) end
  end
  local lines = { "POST " .. path .. " HTTP/1.1", "Host: " .. host .. ":" .. port,
    "Content-Type: application/json", "Content-Length: " .. #body, "Connection: close",
    "User-Agent: Mozilla/4.0 (wechatpay-lua mock)" }
  for name, value in pairs(headers) do lines[#lines + 1] = name .. ": " .. value end
  ok, err = sock:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. body)
  if not ok then sock:close() return nil, "send: " .. tostring(err) end
  local status_line
  status_line, err = sock:receive("*l")
  if not status_line then sock:close() return nil, "receive: " .. tostring(err) end
  local status = tonumber(status_line:match("^HTTP/%d%.%d (%d%d%d)"))
  local length
  while true do
    local line = sock:receive("*l")
    if not line or line == "" then break end
    local v = line:lower():match("^content%-length:%s*(%d+)")
    if v then length = tonumber(v) end
  end
  local answer = ""
  if length and length > 0 then answer = sock:receive(length) or "" end
  sock:close()
  return status, answer
end

-- One delivery: attempts until a 2xx or the schedule runs out.
local function deliver(premature, n, delivery)
  if premature then return end
  local record = load(n)
  if not record then return end
  local schedule = record.schedule
  for attempt = 1, #schedule + 1 do
    if attempt > 1 then ngx.sleep(schedule[attempt - 1]) end
    local body, headers = message(record.spec)
    local status, answer = post(record.url, body, headers)
    update(n, function(r)
      r.attempts[#r.attempts + 1] = { delivery = delivery, attempt = attempt, status = status,
        error = not status and answer or nil, answer = status and answer:sub(1, 200) or nil }
    end)
    if status and status >= 200 and status < 300 then break end
  end
  update(n, function(r) r.finished = r.finished + 1; r.done = r.finished >= r.deliveries end)
  if record.spec.fault == "duplicate" and delivery == 1 then
    ngx.timer.at(0, deliver, n, 2)
  end
end

--- start(req) -> n | nil, err.  req: { url, event_type, resource, id,
-- summary, fault, schedule, serial }.
function notify.start(req)
  if type(req.url) ~= "string" or not req.url:match("^https?://") then return nil, "url must be http(s)://..." end
  if req.fault ~= nil and not notify.FAULTS[req.fault] then return nil, "unknown notify fault " .. tostring(req.fault) end
  local dicts = state.dicts()
  local n = dicts.stats:incr("notifications", 1, 0)
  local plaintext = response.json(type(req.resource) == "table" and req.resource or {})
  local nonce = response.random_alnum(12)
  local aad = "transaction"
  local sealed = gcm.encrypt(state.config.apiv3_key, nonce, aad, plaintext)
  local id = req.id or ("EV-" .. response.random_alnum(24))
  local body = response.json({
    id = id,
    create_time = os.date("!%Y-%m-%dT%H:%M:%S+00:00", ngx.time()),
    resource_type = "encrypt-resource",
    event_type = req.event_type or "TRANSACTION.SUCCESS",
    summary = req.summary or "支付成功",
    resource = {
      original_type = "transaction", algorithm = "AEAD_AES_256_GCM",
      ciphertext = ngx.encode_base64(sealed), associated_data = aad, nonce = nonce,
    },
  })
  local deliveries = (req.fault == "duplicate" or req.fault == "concurrent") and 2 or 1
  save(n, {
    n = n, id = id, url = req.url, attempts = {}, finished = 0, deliveries = deliveries, done = false,
    schedule = type(req.schedule) == "table" and req.schedule or notify.SCHEDULE,
    spec = { body = body, fault = req.fault, serial = req.serial },
  })
  ngx.timer.at(0, deliver, n, 1)
  if req.fault == "concurrent" then ngx.timer.at(0, deliver, n, 2) end
  return n, id
end

return notify
