--- Callbacks (notifications) from WeChat Pay: parse, and a turn-key handler
-- that answers as WeChat Pay expects and runs each event once.
--
--   local event, err = client:parse_notification(headers, raw_body)
--   local status, body = wechatpay.notification.handle(client, headers, raw_body, function(event)
--     -- mark paid, grant...; true when handled, false/nil or an error when not
--   end, { dedupe = store })
--
-- Order (as WeChat Pay documents it): verify the raw body bytes as a response is
-- verified, then decode the JSON, then decrypt the resource with the
-- APIv3 key.  Uses only the client's public methods (verify,
-- open_notification).
local cjson = require("cjson.safe")
local core = require("wechatpay.core")
local dedupe = require("wechatpay.dedupe")
local errors = require("wechatpay.errors")

local notification = {}

local VERIFY_HINT = " (check that the body is the raw bytes received, not re-encoded JSON; that the headers"
  .. " are those received; and that the local clock is right)"

--- open(apiv3_key, body) -> event | nil, err: a body that has been verified,
-- decoded and its resource decrypted and decoded, in one pass of the core
-- (the envelope is read from the bytes; its ciphertext never becomes a Lua
-- string).  err.kind: "decrypt" when the APIv3 key does not open the
-- resource, "malformed" for any other fault of the body or the resource.
function notification.open(apiv3_key, body)
  local event, kind, message, id = core.open_notification(body, apiv3_key)
  if event then return event end
  local where = id and "callback " .. id:sub(1, 64) or "callback"
  if kind == "decrypt" then
    message = "the resource does not decrypt with the client's apiv3_key (check the APIv3 key: 32 characters "
      .. "from the merchant platform, not the APIv2 key): " .. message
  end
  return nil, errors.new(kind, where .. ": " .. message, id and { event_id = id } or nil)
end

--- parse(client, headers, body) -> event | nil, err
-- err.kind: "verify" (signature, timestamp, serial), "malformed" (not the
-- JSON WeChat Pay sends), "decrypt" (the APIv3 key does not open it).
-- No message quotes the body, the plaintext or a key.
function notification.parse(client, headers, body)
  local ok, err = client:verify(headers, body)
  if not ok then
    err.message = "callback: " .. err.message .. VERIFY_HINT
    return nil, err
  end
  return client:open_notification(body)
end

-- WeChat Pay's answer to a callback it must deliver again.
local function fail(status, message)
  return status, cjson.encode({ code = "FAIL", message = message })
end

local HANDLE_OPTIONS = { dedupe = true, claim_ttl = true, done_ttl = true }

--- check_ttls(opts, where): claim_ttl and done_ttl, when given, are seconds
-- above zero and finite: a shared dict reads 0 as "never expires" (a
-- crashed handler's claim would hold its event for ever), the LRU as
-- "expired at once" (two deliveries at once would both run the handler).
function notification.check_ttls(opts, where)
  for _, name in ipairs{ "claim_ttl", "done_ttl" } do
    local value = opts[name]
    if value ~= nil and (type(value) ~= "number" or not (value > 0) or value == math.huge) then
      errors.raise(("%s: %s must be a positive number of seconds, got %s"):format(where, name, tostring(value)))
    end
  end
end

local function store_of(client, opts)
  if opts.dedupe ~= nil then
    if opts.dedupe == false then return nil end
    if not dedupe.is_store(opts.dedupe) then
      errors.raise("notification.handle: dedupe must be a store with claim, finish and release (or false)")
    end
    return opts.dedupe
  end
  -- the default LRU lives on the client (no weak side table)
  return client:event_store()
end

-- A dedupe store's method, called so that neither its raise nor its nil, err
-- escapes the answer WeChat Pay expects: -> true, result, second | false, why.
local function ask(store, method, ...)
  local ok, result, second = pcall(store[method], store, ...)
  if not ok then
    if errors.is_interrupt(result) then error(result, 0) end
    return false, tostring(result)
  end
  if result == nil and second ~= nil then return false, tostring(second) end
  return true, result, second
end

-- at most 200 bytes of a value a handler or store gave, for a message
local function said(value)
  return (tostring(value):sub(1, 200))
end

--- handle(client, headers, raw_body, handler [, opts]) -> status, body, event | err [, store_err]
-- Answers: 204 and no body when handled (or handled before); 401 when the
-- callback does not verify and 400 when it is malformed (a redelivery
-- would not help); 500 {"code":"FAIL",...} when it does not decrypt, when
-- the handler fails, or 503 while another delivery of the same id is being
-- handled: WeChat Pay delivers it again.  The third value is the event,
-- or the error, for the caller's log.  A store that fails to record a
-- handled event as done still gets 204 (the work was done; a redelivery
-- would do it again), with that failure as a fourth value, for the log.
-- opts: dedupe = store | false (default: an LRU per client),
--       claim_ttl (60 s), done_ttl (25 h).
function notification.handle(client, headers, raw_body, handler, opts)
  if type(handler) ~= "function" then errors.raise("notification.handle: handler must be a function") end
  opts = opts or {}
  if type(opts) ~= "table" then errors.raise("notification.handle: options must be a table") end
  for name in pairs(opts) do
    if not HANDLE_OPTIONS[name] then errors.raise(("notification.handle: unknown option '%s'"):format(tostring(name))) end
  end
  notification.check_ttls(opts, "notification.handle")
  local event, err = notification.parse(client, headers, raw_body)
  if not event then
    if err.kind == "verify" then
      local status, body = fail(401, "signature verification failed")
      return status, body, err
    elseif err.kind == "malformed" then
      local status, body = fail(400, "malformed notification")
      return status, body, err
    end
    local status, body = fail(500, "the notification could not be decrypted")
    return status, body, err
  end
  local id = event.id
  local store, token = store_of(client, opts), nil
  if store then
    local asked, claim
    asked, claim, token = ask(store, "claim", id, opts.claim_ttl or dedupe.CLAIM_TTL, opts.done_ttl or dedupe.DONE_TTL)
    if asked and claim == "done" then return 204, "", event end
    if asked and claim == "busy" then
      local status, body = fail(503, "this event is being handled by another delivery")
      return status, body, event
    end
    if not asked or claim ~= "new" then
      local status, body = fail(500, "the event store failed")
      return status, body, errors.new("internal", "dedupe store: claim " .. (asked and "answered " or "failed: ")
        .. said(claim), { event_id = id })
    end
  end
  local ok, handled, reason = pcall(handler, event)
  if not (ok and handled) then
    local released, why = true, nil
    if store then released, why = ask(store, "release", id, token) end
    if not ok and errors.is_interrupt(handled) then error(handled, 0) end
    local status, body = fail(500, "the notification was not handled")
    local failure = ok and errors.new("internal", ("handler returned %s%s for event %s")
      :format(tostring(handled), reason ~= nil and " (" .. said(reason) .. ")" or "", id:sub(1, 64)), { event_id = id })
      or errors.from_raise(handled, "in the handler of event " .. id:sub(1, 64))
    if not released then
      failure.message = failure.message .. "; and the dedupe store failed to release the claim (" .. said(why)
        .. "): redeliveries get 503 until claim_ttl ends"
    end
    return status, body, failure
  end
  if store then
    local finished, why = ask(store, "finish", id, opts.done_ttl or dedupe.DONE_TTL)
    if not finished then
      return 204, "", event, errors.new("internal", ("dedupe store: event %s was handled but not recorded as "
        .. "done (%s): a redelivery after claim_ttl would run the handler again"):format(id:sub(1, 64), said(why)),
        { event_id = id })
    end
  end
  return 204, "", event
end

return notification
