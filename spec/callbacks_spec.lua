-- Callbacks end to end: the mock POSTs signed notifications, sealed by
-- OpenSSL with associated data "transaction", to a notify_url served here
-- (spec/support/receiver.lua), and delivers again on anything but a 2xx.
-- Every fault gets its documented answer without the handler running; a
-- redelivered or concurrently duplicated event is handled once.
local wechatpay = require("wechatpay")
local mock = require("wechatpay.mock")
local receiver = require("support.receiver")
local cjson = require("cjson")

describe("callbacks from the mock", function()
  local server, client, r

  setup(function()
    server = assert(mock.start{ rate_limit = false, sign_with = "certificate" })
    client = server:client{ timeout = 3, retry = false }
    assert(client:refresh_certificates())
    r = receiver.new()
  end)
  teardown(function()
    if r then r:close() end
    if server then server:stop() end
  end)

  -- Serves the notification until the mock is done with it; returns its
  -- record and the events the handler saw.
  local function deliver(spec, handler, opts)
    local seen = {}
    local n = server:notify(r.url, spec)
    local function answer(headers, body)
      return wechatpay.notification.handle(client, headers, body, function(event)
        seen[#seen + 1] = event
        return handler(event, seen)
      end, opts)
    end
    local record
    assert.is_true(r:serve(answer, function()
      record = server:notification(n)
      return record and record.done
    end, 10))
    return record, seen
  end

  local function statuses(record)
    local list = {}
    for _, a in ipairs(record.attempts) do list[#list + 1] = a.status end
    return list
  end

  it("a callback is decrypted, handled once and acknowledged with 204", function()
    local record, seen = deliver({ event_type = "TRANSACTION.SUCCESS",
      resource = { out_trade_no = "T1", amount = { total = 100 } } }, function() return true end)
    assert.same({ 204 }, statuses(record))
    assert.equal(1, #seen)
    assert.equal(record.id, seen[1].id)
    assert.equal("T1", seen[1].resource.out_trade_no)
    assert.equal(100, seen[1].resource.amount.total)
  end)

  it("every fault gets its documented answer and the handler is never called", function()
    for fault, status in pairs{ tamper_body = 401, stale_timestamp = 401, signtest = 401, unknown_serial = 401 } do
      local record, seen = deliver({ fault = fault, resource = { out_trade_no = fault }, schedule = {} },
        function() return true end)
      assert.same({ status }, statuses(record), fault)
      assert.equal("FAIL", cjson.decode(record.attempts[1].answer).code)
      assert.equal(0, #seen, fault)
    end
  end)

  it("a stale timestamp is stale by more than the second that two clocks of this machine may disagree by", function()
    -- the mock stamps with nginx's clock (gettimeofday), the receiver checks
    -- with os.time() (the kernel's coarse clock): at the window's edge the
    -- fault would sometimes be accepted
    local stamped
    local n = server:notify(r.url, { fault = "stale_timestamp", resource = { out_trade_no = "S1" }, schedule = {} })
    assert.is_true(r:serve(function(headers)
      stamped = tonumber(headers["Wechatpay-Timestamp"])
      return 401, ""
    end, function()
      local record = server:notification(n)
      return record and record.done
    end, 10))
    assert.is_true(os.time() - stamped >= require("wechatpay.verify").WINDOW + 2, tostring(os.time() - stamped))
  end)

  it("the same id twice in a row is handled once, the second acknowledged", function()
    local record, seen = deliver({ fault = "duplicate", resource = { out_trade_no = "D1" } }, function() return true end)
    assert.same({ 204, 204 }, statuses(record))
    assert.equal(1, #seen)
  end)

  it("the same id twice at once: the second, arriving while the first is handled, gets 503, is redelivered, acknowledged", function()
    local took_second = false
    local record, seen = deliver({ fault = "concurrent", resource = { out_trade_no = "C1" } }, function()
      -- still inside the first delivery's handler: take the second one now
      if not took_second then
        took_second = true
        local deadline = os.time() + 5
        repeat
          local served = r:accept_one(function(headers, body)
            return wechatpay.notification.handle(client, headers, body, function() error("must not run") end)
          end, 0.2)
        until served or os.time() > deadline
      end
      return true
    end)
    assert.equal(1, #seen)
    local list = statuses(record)
    table.sort(list)
    assert.same({ 204, 204, 503 }, list)
  end)

  it("a handler failure leads to a redelivery, which succeeds", function()
    local record, seen = deliver({ resource = { out_trade_no = "F1" } }, function(_, seen_so_far)
      return #seen_so_far >= 3
    end)
    assert.same({ 500, 500, 204 }, statuses(record))
    assert.equal(3, #seen)
    assert.equal("FAIL", cjson.decode(record.attempts[1].answer).code)
  end)

  it("a callback signed by a rotated certificate refreshes once and is handled", function()
    local downloads = server:stats().certificate_downloads
    server:rotate_certificates()
    local record, seen = deliver({ resource = { out_trade_no = "R1" } }, function() return true end)
    assert.same({ 204 }, statuses(record))
    assert.equal(1, #seen)
    assert.equal(downloads + 1, server:stats().certificate_downloads)
  end)
end)
