-- Callbacks without a network: parse_notification and notification.handle
-- on callbacks signed and sealed by luaossl (never our core), and the
-- dedupe stores' claim semantics, the shared-dict one on a fake dict with
-- ngx.shared.DICT's semantics.
local wechatpay = require("wechatpay")
local merchant = require("support.merchant")
local ossl = require("support.openssl")
local cjson = require("cjson")
local pkey = require("openssl.pkey")
local digest = require("openssl.digest")
local cipher = require("openssl.cipher")
local base64 = require("wechatpay.base64")
local dedupe = require("wechatpay.dedupe")

local APIV3_KEY = "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb"

-- A callback as WeChat Pay sends it, made with luaossl (no associated data:
-- luaossl cannot set it; the mock specs cover "transaction" through OpenSSL).
local function callback(over)
  over = over or {}
  local m = merchant.make()
  local nonce = over.nonce or "uluk4a9R25RW"
  local c = cipher.new("aes-256-gcm")
  c:encrypt(over.key or APIV3_KEY, nonce)
  local plaintext = over.plaintext or '{"out_trade_no":"1217752501201407033233368018","trade_state":"SUCCESS"}'
  local sealed = c:final(plaintext) .. c:getTag(16)
  local body = over.body or over.envelope and over.envelope(base64.encode(sealed), nonce) or cjson.encode({
    id = over.id or "EV-2018022511223320873", create_time = "2015-05-20T13:29:35+08:00",
    resource_type = "encrypt-resource", event_type = "TRANSACTION.SUCCESS", summary = "支付成功",
    resource = { original_type = "transaction", algorithm = "AEAD_AES_256_GCM",
      ciphertext = base64.encode(sealed), associated_data = "", nonce = nonce },
  })
  local timestamp = tostring(over.timestamp or os.time())
  local signature_nonce = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"
  local md = digest.new("sha256")
  md:update(timestamp .. "\n" .. signature_nonce .. "\n" .. body .. "\n")
  local key = pkey.new(ossl.read(m.platform_key))
  local headers = {
    ["wechatpay-timestamp"] = timestamp, ["WECHATPAY-NONCE"] = signature_nonce,
    ["Wechatpay-Signature"] = over.signature or base64.encode(key:sign(md)),
    ["Wechatpay-Serial"] = over.serial or m.platform_key_id,
  }
  return headers, over.tamper and over.tamper(body) or body
end

describe("client:parse_notification", function()
  local client
  setup(function() client = wechatpay.new(merchant.options{ apiv3_key = APIV3_KEY }) end)

  it("verifies the raw bytes, decodes, decrypts: the event with its resource and plaintext", function()
    local headers, body = callback()
    local event = assert(client:parse_notification(headers, body))
    assert.equal("EV-2018022511223320873", event.id)
    assert.equal("TRANSACTION.SUCCESS", event.event_type)
    assert.equal("encrypt-resource", event.resource_type)
    assert.equal("支付成功", event.summary)
    assert.equal("2015-05-20T13:29:35+08:00", event.create_time)
    assert.equal("SUCCESS", event.resource.trade_state)
    assert.matches('^{"out_trade_no"', event.plaintext)
  end)

  local function refused(kind, pattern, headers, body, c)
    local event, err = (c or client):parse_notification(headers, body)
    assert.is_nil(event)
    assert.equal(kind, err.kind)
    assert.matches(pattern, err.message)
    -- never the plaintext, the body or the key
    assert.is_nil(tostring(err):find("trade_state", 1, true))
    assert.is_nil(tostring(err):find(APIV3_KEY, 1, true))
    return err
  end

  it("a re-serialised body, a stale timestamp, SIGNTEST, an unknown serial: kind verify, with what to check", function()
    local headers, body = callback()
    -- what a framework that decodes and re-encodes makes of it (spacing, escapes)
    local reencoded = (cjson.encode(cjson.decode(body)):gsub('","', '", "'))
    assert.are_not.equal(body, reencoded)
    refused("verify", "raw bytes", headers, reencoded)
    refused("verify", "local clock", callback{ timestamp = os.time() - 301 })
    refused("verify", "SIGNTEST", callback{ signature = "WECHATPAY/SIGNTEST/" .. base64.encode(("x"):rep(190)) })
    refused("verify", "unknown Wechatpay%-Serial PUB_KEY_ID_9", callback{ serial = "PUB_KEY_ID_99" })
    -- anyone may POST a callback: what reaches the log is never their text
    local forged = refused("verify", "unknown Wechatpay%-Serial %(%d+ bytes that are not one%)",
      callback{ serial = "\27[31mFAKE ALERT: key leaked" .. ("!"):rep(5) })
    assert.is_nil(forged.message:find("FAKE", 1, true))
    forged = refused("verify", "not unix seconds: %(%d+ bytes that are not one%)", callback{ timestamp = "1\27[2Jclear" })
    assert.is_nil(forged.message:find("clear", 1, true))
    local h2 = callback()
    h2["wechatpay-serial"] = { h2["Wechatpay-Serial"], h2["Wechatpay-Serial"] }
    h2["Wechatpay-Serial"] = nil
    refused("verify", "repeated", h2, body)
  end)

  it("a wrong APIv3 key: kind decrypt, naming the key to check; a body that is not an event: malformed", function()
    refused("decrypt", "APIv3 key", callback{ key = ("k"):rep(32) })
    refused("malformed", "not a JSON object", callback{ body = '"just text"' })
    refused("malformed", "no event id", callback{ body = '{"resource":{}}' })
    refused("malformed", "no resource", callback{ body = '{"id":"EV-1"}' })
    refused("malformed", "decrypted resource %(%d+ bytes%) is not a JSON object", callback{ plaintext = "trade_state" })
  end)

  -- bodies written by hand: what a JSON encoder other than lua-cjson may send
  local function envelope(resource_members, extra)
    return function(ciphertext, nonce)
      return '{"id":"EV-7","create_time":"2015-05-20T13:29:35+08:00",' .. (extra or "") .. '"resource":{'
        .. resource_members:gsub("CIPHERTEXT", ciphertext):gsub("NONCE", nonce) .. '},"event_type":"T.S"}'
    end
  end

  it("reads the envelope from the bytes as any encoder writes it: escapes, order, unknown and repeated members", function()
    -- "/" escaped as \/ (PHP's default), members in another order, unknown
    -- members of every type, a null associated_data, and over 4 KiB of it
    local escaped = envelope('"original_type":"transaction","nonce":"NONCE","associated_data":null,'
      .. '"ciphertext":"CIPHERTEXT","algorithm":"AEAD_AES_256_GCM","x":[1,{"y":null}]',
      '"summary":"\\u652f\\u4ed8 \\/ ok","extra":{"deep":[[[]]],"n":-1.5e3,"t":true},"pad":"' .. ("z"):rep(5000) .. '",')
    local event = assert(client:parse_notification(callback{ envelope = function(ciphertext, nonce)
      return escaped(ciphertext:gsub("/", "\\/"), nonce)
    end }))
    assert.equal("EV-7", event.id)
    assert.equal("支付 / ok", event.summary)
    assert.equal("T.S", event.event_type)
    assert.is_nil(event.resource_type)
    assert.equal("SUCCESS", event.resource.trade_state)
    -- a repeated member: the last one counts, as lua-cjson decodes it
    local repeated = envelope('"nonce":"NONCE","ciphertext":"not base64!","ciphertext":"CIPHERTEXT","associated_data":""')
    assert.equal("SUCCESS", assert(client:parse_notification(callback{ envelope = repeated })).resource.trade_state)
  end)

  it("a resource that cannot be a sealed message: malformed (400, no redelivery); one that does not open: decrypt (500)", function()
    local function bad(members) return callback{ envelope = envelope(members) } end
    refused("malformed", "unsupported resource algorithm", bad('"algorithm":"AEAD_SM4","nonce":"NONCE","ciphertext":"CIPHERTEXT"'))
    refused("malformed", "nonce is missing", bad('"ciphertext":"CIPHERTEXT"'))
    refused("malformed", "nonce is empty", bad('"nonce":"","ciphertext":"CIPHERTEXT"'))
    refused("malformed", "ciphertext is number", bad('"nonce":"NONCE","ciphertext":12'))
    refused("malformed", "associated_data must be a string, got object", bad('"nonce":"NONCE","ciphertext":"CIPHERTEXT","associated_data":{}'))
    refused("malformed", "not valid base64", bad('"nonce":"NONCE","ciphertext":"@@@@"'))
    refused("malformed", "shorter than its 16%-byte tag", bad('"nonce":"NONCE","ciphertext":"AAAA"'))
    refused("malformed", "not a JSON object: invalid JSON: expected ',' or '}' at offset", callback{ body = '{"id":"EV-1" "x":1}' })
    local err = refused("decrypt", "APIv3 key", bad('"nonce":"NONCE","ciphertext":"CIPHERTEXT","associated_data":"transaction"'))
    assert.equal("EV-7", err.event_id)
    local headers, body = bad('"nonce":"NONCE","ciphertext":"@@@@"')
    local called = false
    assert.equal(400, (wechatpay.notification.handle(client, headers, body, function() called = true end)))
    assert.is_false(called)
  end)

  it("names an escaped event id in a long body's error (its unescaped copy outlives the parse)", function()
    -- over 4 KiB, escaped strings are unescaped into a buffer on the Lua
    -- stack; the error is built from that id while collections run (a read
    -- of freed memory here is what valgrind and the sanitizers report)
    local body = '{"id":"EV-\\u0041' .. string.rep("B", 40) .. '","summary":"' .. string.rep("x", 5000) .. '"}'
    local pause = collectgarbage("setpause", 0)
    finally(function() collectgarbage("setpause", pause) end)
    for _ = 1, 200 do
      local _ = { string.rep("z", 64) }   -- garbage for each collection to take
      local event, err = client:open_notification(body)
      assert.is_nil(event)
      assert.equal("malformed", err.kind)
      assert.equal("EV-A" .. string.rep("B", 40), err.event_id)
    end
  end)

  it("open_notification on 2,000 seeded mutations of a body: an event or nil, err (malformed | decrypt), never a raise", function()
    local _, body = callback{ envelope = envelope('"nonce":"NONCE","ciphertext":"CIPHERTEXT","associated_data":""') }
    local state, kinds = 4242, {}
    local function rand(n)
      state = (state * 1103515245 + 12345) % 2147483648
      return state % n + 1
    end
    local alphabet = '{}[]",:0123456789-eE \\/untrfalsebAZ=+\0\1\255'
    for _ = 1, 2000 do
      local text = body
      for _ = 1, rand(4) do
        local at, k = rand(#text), rand(#alphabet)
        local op = rand(3)
        if op == 1 then text = text:sub(1, at - 1) .. alphabet:sub(k, k) .. text:sub(at)
        elseif op == 2 then text = text:sub(1, at - 1) .. text:sub(at + 1)
        else text = text:sub(1, at - 1) .. alphabet:sub(k, k) .. text:sub(at + 1) end
      end
      local ok, event, err = pcall(client.open_notification, client, text)
      assert(ok, event)
      if event then
        assert.is_string(event.id)
        assert.is_table(event.resource)
      else
        kinds[err.kind] = (kinds[err.kind] or 0) + 1
        assert.is_truthy(err.kind == "malformed" or err.kind == "decrypt", err.kind)
      end
    end
    assert.is_true((kinds.malformed or 0) > 100 and (kinds.decrypt or 0) > 10)
  end)

  it("amounts are integers, as the JSON has them (Lua 5.4: math.type integer)", function()
    local event = assert(client:parse_notification(callback{ plaintext = '{"trade_state":"SUCCESS","amount":{"total":100,"payer_total":90}}' }))
    assert.equal(100, event.resource.amount.total)
    if math.type then
      assert.equal("integer", math.type(event.resource.amount.payer_total))
      assert.equal("100", tostring(event.resource.amount.total))
    end
  end)
end)

describe("notification.handle", function()
  local handle = wechatpay.notification.handle
  local client
  before_each(function() client = wechatpay.new(merchant.options{ apiv3_key = APIV3_KEY }) end)

  it("answers 204 without a body; a redelivery is acknowledged without calling the handler", function()
    local calls = 0
    local function handler(event) calls = calls + 1; return event.resource.trade_state == "SUCCESS" end
    local headers, body = callback()
    local status, answer, event = handle(client, headers, body, handler)
    assert.same({ 204, "", 1 }, { status, answer, calls })
    assert.equal("EV-2018022511223320873", event.id)
    headers, body = callback()   -- signed again, as a redelivery is
    status, answer = handle(client, headers, body, handler)
    assert.same({ 204, "", 1 }, { status, answer, calls })
  end)

  it("a callback that does not verify: 401 FAIL, malformed: 400, undecryptable: 500; the handler is not called", function()
    local called = false
    local function handler() called = true; return true end
    for _, case in ipairs{
      { 401, { timestamp = os.time() - 301 } },
      { 401, { signature = "WECHATPAY/SIGNTEST/AAAA" } },
      { 401, { serial = "PUB_KEY_ID_99" } },
      { 401, { tamper = function(b) return (b:gsub("EV%-", "EV_")) end } },
      { 400, { body = '{"id":"EV-1"}' } },
      { 500, { key = ("k"):rep(32) } },
    } do
      local headers, body = callback(case[2])
      local status, answer = handle(client, headers, body, handler)
      assert.equal(case[1], status)
      assert.equal("FAIL", cjson.decode(answer).code)
    end
    assert.is_false(called)
  end)

  it("a handler that fails (false, nil or an error) gets 500 FAIL and releases the claim: the redelivery runs", function()
    for _, failing in ipairs{
      function() return false end,
      function() return nil end,
      function() error("database down") end,
    } do
      local id = "EV-fail-" .. tostring(failing):gsub("%W", "")
      local h1, b1 = callback{ id = id }
      local status, answer, err = handle(client, h1, b1, failing)
      assert.equal(500, status)
      assert.same({ code = "FAIL", message = "the notification was not handled" }, cjson.decode(answer))
      assert.is_nil(answer:find("database", 1, true))   -- the raise stays in the third value, for the log
      assert.equal("internal", err.kind)
      local calls = 0
      local headers, body = callback{ id = id }
      status = handle(client, headers, body, function() calls = calls + 1; return true end)
      assert.same({ 204, 1 }, { status, calls })
    end
  end)

  it("a handler's reason for failing reaches the log value, never the answer", function()
    local headers, body = callback{ id = "EV-reason" }
    local status, answer, err = handle(client, headers, body, function() return nil, "database down" end)
    assert.equal(500, status)
    assert.is_nil(answer:find("database", 1, true))
    assert.matches("handler returned nil (database down) for event EV-reason", err.message, 1, true)
  end)

  it("a store that raises or fails never escapes the answer WeChat Pay expects", function()
    local function store(fails)
      local s = dedupe.lru()
      local wrapped = {}
      for _, method in ipairs{ "claim", "finish", "release" } do
        wrapped[method] = function(_, ...)
          local how = fails[method]
          if how == "raise" then error("store " .. method .. " exploded") end
          if how == "nil" then return nil, "store " .. method .. " unreachable" end
          return s[method](s, ...)
        end
      end
      return wrapped
    end
    local calls = 0
    local function ok_handler() calls = calls + 1; return true end
    for _, how in ipairs{ "raise", "nil" } do
      -- claim: 500, the handler is not run
      local headers, body = callback{ id = "EV-claim-" .. how }
      local status, answer, err = handle(client, headers, body, ok_handler, { dedupe = store{ claim = how } })
      assert.same({ 500, "the event store failed", 0 }, { status, cjson.decode(answer).message, calls })
      assert.matches("store claim", err.message, 1, true)
      -- finish: the work was done, so 204, with the store's failure as the fourth value
      headers, body = callback{ id = "EV-finish-" .. how }
      local event, store_err
      status, answer, event, store_err = handle(client, headers, body, ok_handler, { dedupe = store{ finish = how } })
      assert.same({ 204, "", 1 }, { status, answer, calls })
      assert.equal("EV-finish-" .. how, event.id)
      assert.matches("handled but not recorded as done (", store_err.message, 1, true)
      assert.matches("store finish", store_err.message, 1, true)
      calls = 0
      -- release after a failing handler: still 500 FAIL, the handler's error kept and the store's added
      headers, body = callback{ id = "EV-release-" .. how }
      status, answer, err = handle(client, headers, body, function() error("database down") end,
        { dedupe = store{ release = how } })
      assert.equal(500, status)
      assert.equal("the notification was not handled", cjson.decode(answer).message)
      assert.matches("database down", err.message, 1, true)
      assert.matches("failed to release the claim (", err.message, 1, true)
      assert.matches("store release", err.message, 1, true)
    end
  end)

  it("a handler that outlives its claim and fails does not free the next delivery's claim", function()
    local clock = { now = 0 }
    local opts = { dedupe = dedupe.lru{ clock = function() return clock.now end }, claim_ttl = 60 }
    local calls = 0
    local h2, b2 = callback{ id = "EV-slow" }
    local second = coroutine.create(function()
      return handle(client, h2, b2, function() calls = calls + 1; coroutine.yield(); return true end, opts)
    end)
    local h1, b1 = callback{ id = "EV-slow" }
    local status = handle(client, h1, b1, function()
      calls = calls + 1
      clock.now = clock.now + 61               -- past its claim: the redelivery takes the id
      assert(coroutine.resume(second))         -- ... and its handler is running
      return false
    end, opts)
    assert.equal(500, status)
    local h3, b3 = callback{ id = "EV-slow" }
    assert.equal(503, (handle(client, h3, b3, function() calls = calls + 1; return true end, opts)))
    local resumed, second_status = coroutine.resume(second)
    assert.is_true(resumed)
    assert.equal(204, second_status)
    assert.equal(2, calls)
  end)

  it("a delivery that arrives while another of the same id is being handled gets 503 and no second call", function()
    local calls, inner = 0, nil
    local headers, body = callback{ id = "EV-at-once" }
    local status = handle(client, headers, body, function()
      calls = calls + 1
      local h2, b2 = callback{ id = "EV-at-once" }
      inner = { handle(client, h2, b2, function() calls = calls + 1; return true end) }
      return true
    end)
    assert.equal(204, status)
    assert.equal(503, inner[1])
    assert.equal(1, calls)
  end)

  it("takes a store: dedupe = false runs every delivery, an object needs claim, finish and release", function()
    local calls = 0
    local function handler() calls = calls + 1; return true end
    for _ = 1, 2 do
      local headers, body = callback{ id = "EV-nodedupe" }
      assert.equal(204, (handle(client, headers, body, handler, { dedupe = false })))
    end
    assert.equal(2, calls)
    local headers, body = callback()
    assert.has_error(function() handle(client, headers, body, handler, { dedupe = {} }) end,
      "notification.handle: dedupe must be a store with claim, finish and release (or false)")
    assert.has_error(function() handle(client, headers, body, handler, { dedup = false }) end,
      "notification.handle: unknown option 'dedup'")
    -- 0 would be "never expires" in a shared dict and "already expired" in the LRU
    for _, bad in ipairs{ { claim_ttl = 0 }, { done_ttl = -1 }, { claim_ttl = "60" }, { done_ttl = math.huge },
      { claim_ttl = 0 / 0 } } do
      local name = next(bad)
      assert.has_error(function() handle(client, headers, body, handler, bad) end,
        ("notification.handle: %s must be a positive number of seconds, got %s"):format(name, tostring(bad[name])))
    end
    assert.equal(0, calls - 2)
  end)
end)

describe("dedupe stores", function()
  local function claims(store, clock)
    assert.equal("new", store:claim("a", 10))
    assert.equal("busy", store:claim("a", 10))
    store:release("a")
    assert.equal("new", store:claim("a", 10))
    store:finish("a", 100)
    assert.equal("done", store:claim("a", 10))
    store:release("a")                       -- a release never forgets a done id
    assert.equal("done", store:claim("a", 10))
    -- a claim whose handler died expires
    assert.equal("new", store:claim("b", 10))
    clock.now = clock.now + 11
    assert.equal("new", store:claim("b", 10))
    clock.now = clock.now + 101
    assert.equal("new", store:claim("a", 10))
    -- a handler that outlived its claim releases only its own: not the next delivery's
    local first, second
    first = select(2, store:claim("c", 10))
    clock.now = clock.now + 11
    second = select(2, store:claim("c", 10))
    assert.is_not_nil(first)
    assert.are_not.equal(first, second)
    store:release("c", first)
    assert.equal("busy", store:claim("c", 10))
    store:release("c", second)
    assert.equal("new", store:claim("c", 10))
  end

  it("the LRU: claim, busy, release, done, expiry", function()
    local clock = { now = 0 }
    claims(dedupe.lru{ clock = function() return clock.now end }, clock)
  end)

  it("the LRU never drops a claim whose handler still runs, only expired or done ids", function()
    local clock = { now = 0 }
    local store = dedupe.lru{ size = 2, clock = function() return clock.now end }
    for _, id in ipairs{ "1", "2", "3" } do assert.equal("new", store:claim(id, 10)) end
    assert.equal(3, store:entries())              -- over size while all three run
    for _, id in ipairs{ "1", "2", "3" } do assert.equal("busy", store:claim(id, 10)) end
    store:finish("2")
    assert.equal("new", store:claim("4", 10))     -- "2", done, makes room; "1" and "3" still run
    assert.equal(3, store:entries())
    assert.equal("busy", store:claim("1", 10))
    assert.equal("new", store:claim("2", 10))
    clock.now = 11                                -- the claims expired: their handlers died
    assert.equal("new", store:claim("5", 10))
    assert.equal(2, store:entries())
  end)

  it("the LRU keeps at most size ids, dropping the least recently used", function()
    local store = dedupe.lru{ size = 3 }
    for _, id in ipairs{ "1", "2", "3" } do store:claim(id); store:finish(id) end
    assert.equal("done", store:claim("1"))    -- "1" is now the most recent
    store:claim("4")
    assert.equal(3, store:entries())
    assert.equal("done", store:claim("1"))
    assert.equal("new", store:claim("2"))     -- "2" was dropped
  end)

  -- ngx.shared.DICT's semantics: add fails with "exists" on a live key,
  -- exptime in seconds (0 = never), incr with an init value.
  local function fake_dict(clock)
    local data = {}
    local d = {}
    local function live(k)
      local e = data[k]
      if e and e.expires and e.expires <= clock.now then data[k] = nil; return nil end
      return e
    end
    function d:get(k) local e = live(k); return e and e.value end
    function d:set(k, v, exptime)
      data[k] = { value = v, expires = exptime and exptime > 0 and clock.now + exptime or nil }
      return true
    end
    function d:add(k, v, exptime)
      if live(k) then return false, "exists" end
      return d:set(k, v, exptime)
    end
    function d:delete(k) data[k] = nil end
    function d:incr(k, n, init)
      local e = live(k)
      if not e then
        if init == nil then return nil, "not found" end
        d:set(k, init)
        e = data[k]
      end
      e.value = e.value + n
      return e.value
    end
    return d
  end

  it("the shared dict store, on a fake dict with ngx.shared.DICT's semantics", function()
    local clock = { now = 0 }
    claims(dedupe.shared_dict(fake_dict(clock)), clock)
  end)

  it("the shared dict certificate store lists every save and locks one downloader", function()
    local certificates = require("wechatpay.certificates")
    local dict = fake_dict({ now = 0 })
    local a, b = certificates.shared_dict_store(dict), certificates.shared_dict_store(dict)
    assert.is_true(a:save("AA", "pem a"))
    assert.is_true(b:save("BB", "pem b"))
    assert.is_true(b:save("AA", "pem a"))
    assert.same({ AA = "pem a", BB = "pem b" }, a:load())
    assert.is_true(a:lock(60))
    assert.is_false(b:lock(60))
    a:unlock()
    assert.is_true(b:lock(60))
  end)
end)

describe("wechatpay.ngx outside nginx", function()
  it("loads lazily from wechatpay, and each function says it needs nginx", function()
    local wechatpay = require("wechatpay")
    assert.equal(require("wechatpay.ngx"), wechatpay.ngx)
    assert.is_nil(wechatpay.no_such_thing)
    assert.has_error(function() wechatpay.ngx.notification({}, function() end) end,
      "wechatpay.ngx.notification: runs inside nginx's Lua module (OpenResty) only")
    assert.has_error(function() wechatpay.ngx.refresh_certificates({}) end,
      "wechatpay.ngx.refresh_certificates: runs inside nginx's Lua module (OpenResty) only")
  end)
end)
