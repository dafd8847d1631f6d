-- Regression specs for the defects found by trying the client as a new user
-- and an attacker would: each failed on the code before its fix.  Requests
-- are checked on what the client hands its transport; collection and
-- descriptors against the mock over real HTTPS.
local wechatpay = require("wechatpay")
local errors = require("wechatpay.errors")
local merchant = require("support.merchant")
local ossl = require("support.openssl")
local cjson = require("cjson")

local function refused(fn, pattern)
  local ok, err = pcall(fn)
  assert.is_false(ok, "expected an error matching " .. pattern)
  assert.matches(pattern, tostring(err))
  return tostring(err)
end

-- A 2xx answer with the four signature headers given (not a valid signature).
local function signed_answer(fields)
  local h = {
    ["wechatpay-timestamp"] = tostring(os.time()), ["wechatpay-nonce"] = "n",
    ["wechatpay-signature"] = "c2ln", ["wechatpay-serial"] = merchant.make().platform_key_id,
  }
  for k, v in pairs(fields or {}) do h[k] = v end
  return { status = 200, headers = h, body = "{}" }
end

describe("hardening", function()
  local m, transport, client

  setup(function() m = merchant.make() end)

  before_each(function()
    transport = merchant.recording_transport()
    client = wechatpay.new(merchant.options{ transport = transport, base_url = "https://pay.example.test/" })
  end)

  local function last() return transport.requests[#transport.requests] end
  local function target_of(request) return request.url:gsub("^https://pay%.example%.test", "") end

  describe("numeric options (timeouts never silently off)", function()
    local bad_seconds = { 0 / 0, math.huge, -math.huge, 0, 0.0004, -1, "5", 1e9 }

    it("refuses each bad timeout and connect_timeout at new(), naming the option", function()
      for _, name in ipairs{ "timeout", "connect_timeout" } do
        for _, bad in ipairs(bad_seconds) do
          local message = refused(function() wechatpay.new(merchant.options{ [name] = bad }) end,
            "wechatpay.new: " .. name .. " must be a finite number of seconds")
          assert.matches("hardening_spec.lua", message, 1, true)   -- reported at the caller's line
        end
      end
      assert.is_truthy(wechatpay.new(merchant.options{ timeout = 0.001, connect_timeout = 86400 }))
    end)

    it("refuses each bad per-call timeout before sending", function()
      for _, bad in ipairs(bad_seconds) do
        refused(function() client:chain("v3/x"):get{ timeout = bad } end, "request: timeout must be a finite number")
      end
      assert.equal(0, #transport.requests)
    end)

    it("refuses NaN, huge or negative max_concurrency, retry fields and rate_limit", function()
      for _, bad in ipairs{ 2 ^ 63, 0 / 0, math.huge, 0, 1.5, 1001 } do
        refused(function() wechatpay.new(merchant.options{ max_concurrency = bad }) end,
          "max_concurrency must be a finite integer")
      end
      for field, values in pairs{ attempts = { 0 / 0, -1, 0, math.huge, 1.5 }, backoff = { 0 / 0, -1, math.huge },
                                  max_backoff = { 0 / 0, -0.5 }, deadline = { 0 / 0, -1, math.huge } } do
        for _, bad in ipairs(values) do
          refused(function() wechatpay.new(merchant.options{ retry = { [field] = bad } }) end,
            "retry%." .. field .. " must be a finite")
          refused(function() client:chain("v3/x"):get{ retry = { [field] = bad } } end,
            "retry%." .. field .. " must be a finite")
        end
      end
      for _, bad in ipairs{ 0 / 0, math.huge, { calls = 0 / 0 }, { calls = 5, per = 0 / 0 },
                            { calls = 5, burst = 0 / 0 }, { calls = 5, burst = math.huge } } do
        refused(function() wechatpay.new(merchant.options{ rate_limit = bad }) end, "rate_limit must be")
      end
      assert.equal(0, #transport.requests)
    end)
  end)

  describe("configuration that would leak or weaken", function()
    it("refuses a base_url that is not https://host[:port]/", function()
      refused(function() wechatpay.new(merchant.options{ base_url = "http://api.mch.weixin.qq.com/" }) end,
        "base_url must use https, not http: the Authorization header would go out in clear")
      for _, bad in ipairs{ "https://a.test/\r\nX: y", "https://a.test/\0", "https://a .test/",
                            "https://a.test/ ", "\thttps://a.test/" } do
        refused(function() wechatpay.new(merchant.options{ base_url = bad }) end,
          "base_url holds a space, line break or control character")
      end
      refused(function() wechatpay.new(merchant.options{ base_url = "https://u:p@a.test/" }) end, "without user info")
      refused(function() wechatpay.new(merchant.options{ base_url = "https://a.test/prefix/" }) end,
        "without a path")
      assert.equal("https://a.test:8443", wechatpay.new(merchant.options{ base_url = "https://a.test:8443/" }).base_url)
    end)

    it("refuses control characters in user_agent and proxy", function()
      refused(function() wechatpay.new(merchant.options{ user_agent = "ua\r\nX-Injected: 1" }) end,
        "user_agent holds a line break")
      refused(function() wechatpay.new(merchant.options{ user_agent = "ua\0" }) end, "user_agent holds a line break")
      refused(function() wechatpay.new(merchant.options{ proxy = "http://p\n" }) end, "proxy holds a line break")
    end)

    it("refuses a cafile that is a directory, and a capath that is not", function()
      refused(function() wechatpay.new(merchant.options{ cafile = m.dir }) end,
        "cafile .* is a directory: give a directory of hashed CA certificates as capath")
      refused(function() wechatpay.new(merchant.options{ capath = m.platform_cert }) end, "capath .* is not a directory")
      assert.is_truthy(wechatpay.new(merchant.options{ capath = m.dir }))
    end)

    it("refuses a private key given as a certs id, without echoing it", function()
      local pem = ossl.read(m.merchant_key)
      local opts = merchant.options()
      opts.certs = { [pem] = "file://" .. m.platform_pub }
      local message = refused(function() wechatpay.new(opts) end, "certs has an id of %d+ bytes that is neither")
      assert.is_nil(message:find("PRIVATE", 1, true))
      for line in pem:gmatch("[^\n]+") do
        if not line:find("-----", 1, true) then assert.is_nil(message:find(line, 1, true)) end
      end
    end)

    it("refuses an mchid number that is not an integer (LuaJIT would format 1.5 as 1)", function()
      for _, bad in ipairs{ 1.5, -1, 0 / 0, math.huge, 2 ^ 60 } do
        refused(function() wechatpay.new(merchant.options{ mchid = bad }) end, "mchid must be the merchant id")
      end
      assert.equal("1900000001", wechatpay.new(merchant.options{ mchid = 1900000001 }).mchid)
    end)

    it("keeps internals off the client: no transport, dispatcher or keys as fields, and fields are read-only", function()
      for _, name in ipairs{ "transport", "dispatcher", "platform_keys", "private_key", "apiv3_key" } do
        -- an unknown name is a path segment, not an internal
        assert.equal("wechatpay.chain (" .. name .. ")", tostring(client[name]))
      end
      refused(function() client.base_url = "http://evil.test" end, "'base_url' cannot be set")
      assert.equal("https://pay.example.test", client.base_url)
      assert.same({ m.platform_key_id }, client:platform_key_ids())
    end)
  end)

  describe("headers the client owns", function()
    it("refuses Content-Length, Transfer-Encoding, Host, Authorization and Connection from the caller", function()
      for _, name in ipairs{ "Content-Length", "transfer-encoding", "HOST", "Authorization", "Connection", "Expect" } do
        refused(function() client:chain("v3/x"):post{ json = {}, headers = { [name] = "5" } } end,
          "headers%." .. name:gsub("%-", "%%-") .. " is")
      end
      assert.equal(0, #transport.requests)
    end)

    it("raises on CR, LF or NUL in a header name or value, before sending", function()
      for _, value in ipairs{ "a\rb", "a\nb", "a\0b", "a\r\nX-Injected: 1" } do
        refused(function() client:chain("v3/x"):get{ headers = { ["X-Note"] = value } } end,
          "a value holds a line break or NUL")
      end
      for _, name in ipairs{ "X-\0Note", "X Note", "X:Note", "X-Note\r\n" } do
        refused(function() client:chain("v3/x"):get{ headers = { [name] = "v" } } end, "a header name is a token")
      end
      refused(function() client:chain("v3/x"):get{ headers = { ["x-a"] = "1", ["X-A"] = "2" } } end, "given twice")
      assert.equal(0, #transport.requests)
    end)
  end)

  describe("the bytes signed are the bytes sent", function()
    it("refuses . and .. as a path variable or literal segment", function()
      for _, bad in ipairs{ ".", ".." } do
        refused(function() client.v3.multiuse.users._openid_.coupons:post{ openid = bad, json = {} } end,
          "which a server resolves as a directory step")
        refused(function() client.v3.multiuse.users[bad].coupons:post{ json = {} } end, "directory step")
        refused(function() client:chain("v3/a/" .. bad .. "/b"):get() end, "directory step")
        refused(function() client:chain("v3/a/{+rest}"):get{ rest = "x/" .. bad .. "/y" } end, "directory step")
      end
      -- written as escapes, where escapes are kept (a literal path, {+name}): a server decodes them
      for _, bad in ipairs{ "%2e%2e", "%2E%2e", ".%2e", "%2e" } do
        refused(function() client:chain("v3/a/" .. bad .. "/b"):get() end, "directory step")
        refused(function() client["v3/a/" .. bad]:get() end, "directory step")
        refused(function() client:chain("v3/a/{+rest}"):get{ rest = "x/" .. bad .. "/y" } end, "directory step")
      end
      -- a path variable named as a call option would take the option's value
      refused(function() client:chain("v3/x/{query}"):get{ query = "abc" } end,
        "path variable {query} of v3/x/{query} has the name of a call option")
      refused(function() client:chain("v3/x/{+timeout}"):get{ timeout = 5 } end, "has the name of a call option")
      -- an id's % is data, encoded itself: no step
      client.v3.multiuse.users["%2e%2e"].coupons:post{ json = {} }
      assert.equal("/v3/multiuse/users/%252e%252e/coupons", target_of(last()))
      -- a dot inside a name is a name
      client.v3.multiuse.users["o.x"].coupons:post{ json = {} }
      assert.equal("/v3/multiuse/users/o.x/coupons", target_of(last()))
    end)

    it("encodes # and a bare % in {+name} values, keeps valid escapes", function()
      client:chain("v3/a/{+rest}"):get{ rest = "x/y#z%q%41" }
      assert.equal("/v3/a/x/y%23z%25q%41", target_of(last()))
    end)

    it("refuses a raw query string holding what would not be sent as signed", function()
      for _, bad in ipairs{ "a=1#frag", "a=b c", "a=\n", "a=%zz", "a=%4", "a=张" } do
        refused(function() client:chain("v3/x"):get{ query = bad } end, "query string holds")
      end
      client:chain("v3/x"):get{ query = "a=1&b=%2F" }
      assert.equal("/v3/x?a=1&b=%2F", target_of(last()))
    end)

    it("raises on a query list with holes instead of dropping values", function()
      refused(function() client:chain("v3/x"):get{ query = { id = { "a", nil, "c" } } } end, "holes")
      refused(function() client:chain("v3/x"):get{ query = { id = { "a", x = "b" } } } end, "without holes")
      client:chain("v3/x"):get{ query = { id = { "a", "b" }, n = 2 ^ 53 - 1 } }
      assert.equal("/v3/x?id=a&id=b&n=9007199254740991", target_of(last()))
    end)

    it("sends JSON integers of 14 digits exactly and refuses those lua-cjson would round", function()
      client:chain("v3/x"):post{ json = { amount = 99999999999999 } }
      assert.equal('{"amount":99999999999999}', last().body)
      local n = #transport.requests
      for _, bad in ipairs{ 123456789012345, 2 ^ 53, 1e15 + 1 } do
        refused(function() client:chain("v3/x"):post{ json = { detail = { amount = bad } } } end,
          "json body%.detail%.amount is a number lua%-cjson cannot send exactly")
      end
      -- the field is named, its value never shown: it may be an ID number
      local ok, err = pcall(function() client:chain("v3/x"):post{ json = { out_request_no = 110105194912310020 } } end)
      assert.is_false(ok)
      assert.matches("json body.out_request_no is a number", tostring(err), 1, true)
      assert.not_matches("1101051949", tostring(err), 1, true)
      assert.not_matches("1.101", tostring(err), 1, true)
      refused(function() client:chain("v3/x"):post{ json = { f = function() end } } end, "json cannot be encoded")
      assert.equal(n, #transport.requests)
    end)
  end)

  describe("sensitive fields", function()
    it("refuses a real name or ID number in plaintext, at any depth, naming the field and never the value", function()
      local ciphertext = assert(client:encrypt("110101199003071234"))
      local cases = {
        { { user_name = "张三" }, "json body.user_name is not encrypted" },
        { { id_card_number = "110101199003071234" }, "json body.id_card_number is not encrypted" },
        { { id_card_number = 110101199003071234 }, "json body.id_card_number is not encrypted" },
        { { transfer_detail_list = { { user_name = ciphertext }, { user_name = "李四" } } },
          "json body.transfer_detail_list.2.user_name is not encrypted" },
        { { identity_info = { id_doc_info = { id_doc_number = "E12345678" } } },
          "json body.identity_info.id_doc_info.id_doc_number is not encrypted" },
        -- a ciphertext cut short is not one either
        { { user_name = ciphertext:sub(1, 340) }, "json body.user_name is not encrypted" },
      }
      for _, case in ipairs(cases) do
        local ok, err = pcall(function() client:chain("v3/x"):post{ json = case[1] } end)
        assert.is_false(ok)
        assert.matches(case[2], tostring(err), 1, true)
        assert.matches("client:encrypt", tostring(err), 1, true)
        for _, secret in ipairs{ "张三", "李四", "1101011990", "1.101", "E12345678" } do
          assert.not_matches(secret, tostring(err), 1, true)
        end
      end
      assert.equal(0, #transport.requests)
      -- ciphertext goes out; an empty field is WeChat Pay's to judge; other names are not checked;
      -- and `body =` is sent as given
      client:chain("v3/x"):post{ json = { user_name = ciphertext, id_card_number = "", name = "张三" } }
      client:chain("v3/x"):post{ body = '{"user_name":"x"}' }
      assert.equal(2, #transport.requests)
      assert.equal(ciphertext, cjson.decode(transport.requests[1].body).user_name)
    end)
  end)

  describe("unknown call options", function()
    it("raises on a typo instead of sending an empty POST, and names the option", function()
      refused(function() client:chain("v3/x"):post{ jsno = { a = 1 } } end, "unknown request option 'jsno' for v3/x")
      refused(function() client.v3.users._openid_:get{ openid = "o", opendi = "x" } end, "unknown request option 'opendi'")
      assert.equal(0, #transport.requests)
      client.v3.users._openid_:get{ openid = "o" }
      assert.equal(1, #transport.requests)
    end)
  end)

  describe("verification never raises", function()
    it("a 19-digit Wechatpay-Timestamp is a verify error, also in async calls, and the other call settles", function()
      local answers = {
        signed_answer{ ["wechatpay-timestamp"] = "1234567890123456789" },
        { status = 400, headers = {}, body = '{"code":"X","message":"second"}' },
      }
      local async_client = wechatpay.new(merchant.options{
        transport = merchant.recording_transport(function() return table.remove(answers, 1) end),
      })
      local first = async_client:chain("v3/x"):getAsync()
      local second = async_client:chain("v3/y"):getAsync()
      local _, err2 = second:wait()
      assert.equal("X", err2.code)
      local res, err = first:wait()
      assert.is_nil(res)
      assert.equal("verify", err.kind)
      assert.matches("Wechatpay%-Timestamp is not unix seconds", err.message)
    end)

    it("client:verify refuses repeated, numeric or missing headers with nil, err of kind verify", function()
      local body = "{}"
      for _, h in ipairs{
        { ["Wechatpay-Signature"] = { "a", "b" }, ["Wechatpay-Timestamp"] = "1", ["Wechatpay-Nonce"] = "n",
          ["Wechatpay-Serial"] = "S" },
        { ["Wechatpay-Signature"] = "a", ["Wechatpay-Timestamp"] = 1700000000, ["Wechatpay-Nonce"] = "n",
          ["Wechatpay-Serial"] = "S" },
        { ["wechatpay-signature"] = "a", ["WECHATPAY-SIGNATURE"] = "b", ["Wechatpay-Timestamp"] = "1",
          ["Wechatpay-Nonce"] = "n", ["Wechatpay-Serial"] = "S" },
        { ["Wechatpay-Timestamp"] = ("9"):rep(40), ["Wechatpay-Nonce"] = "n", ["Wechatpay-Serial"] = "S",
          ["Wechatpay-Signature"] = "a" },
        {},
      } do
        local ok, err = client:verify(h, body)
        assert.is_nil(ok)
        assert.equal("verify", err.kind)
      end
      local ok, err = client:verify("not a table", body)
      assert.is_nil(ok)
      assert.equal("verify", err.kind)
      ok, err = client:verify({}, nil)
      assert.is_nil(ok)
      assert.matches("raw bytes", err.message)
    end)
  end)

  describe("errors print bounded, one line", function()
    it("escapes CR, LF and ANSI escapes and stays under 1 KB, keeping the full fields", function()
      local huge = ("x"):rep(5 * 1024 * 1024)
      local body = '{"code":"PARAM_ERROR","message":"line1\\r\\nFAKE LOG LINE \\u001b[31mred' .. huge .. '"}'
      local c = wechatpay.new(merchant.options{ transport = merchant.recording_transport(function()
        return { status = 400, headers = { ["request-id"] = "id\r\n" .. huge }, body = body }
      end) })
      local _, err = c:chain("v3/x"):get()
      local line = tostring(err)
      assert.is_true(#line <= errors.MAX_LINE, #line .. " bytes")
      assert.is_nil(line:find("[\r\n\27]"))
      assert.matches("line1\\13\\10FAKE LOG LINE \\27[31mred", line, 1, true)
      assert.is_true(#err.message > 5 * 1024 * 1024)   -- the table keeps everything
    end)
  end)

  describe("close with calls in flight", function()
    it("rejects queued and in-flight calls with kind closed, also when called from a handler", function()
      local answers = 0
      local c = wechatpay.new(merchant.options{ max_concurrency = 1,
        transport = merchant.recording_transport(function()
          answers = answers + 1
          return { status = 404, headers = {}, body = "{}" }
        end) })
      local first = c:chain("v3/a"):getAsync()
      local second = c:chain("v3/b"):getAsync()
      local third = c:chain("v3/c"):getAsync()
      first:catch(function() c:close() end)
      local _, err1 = first:wait()
      assert.equal("http", err1.kind)
      for _, p in ipairs{ second, third } do
        local res, err = p:wait()
        assert.is_nil(res)
        assert.equal("closed", err.kind)
      end
      local _, later = c:chain("v3/d"):get()
      assert.equal("closed", later.kind)
    end)

    it("rejects a call waiting for a retry", function()
      local c = wechatpay.new(merchant.options{ retry = { attempts = 5, backoff = 60, max_backoff = 60, deadline = 600 },
        transport = merchant.recording_transport(function()
          return nil, { kind = "network", message = "refused", sent = 0, retry = "safe" }
        end) })
      local p = c:chain("v3/a"):getAsync()
      c:step(0)
      assert.equal("pending", p.state)
      c:close()
      local _, err = p:wait()
      assert.equal("closed", err.kind)
    end)
  end)

  describe("interrupts", function()
    it("an interrupt while sending rejects the call with kind interrupted and goes on up", function()
      local interrupt_next = true
      local c = wechatpay.new(merchant.options{ transport = {
        submit = function(_, _, callback)
          if interrupt_next then interrupt_next = false; error("interrupted!", 0) end
          callback({ status = 404, headers = {}, body = "" })
        end,
        step = function() return 0 end,
      } })
      local seen
      local ok, raised = pcall(function()
        local p = c:chain("v3/x"):getAsync()
        seen = p
      end)
      assert.is_false(ok)
      assert.is_true(errors.is_interrupt(raised))
      assert.is_nil(seen)
      -- the client goes on working after the interrupt
      local _, err = c:chain("v3/y"):get()
      assert.equal("http", err.kind)
      assert.equal(404, err.status)
    end)

    it("a raise while a call finishes (a transport's malformed answer) rejects that call only, as internal", function()
      local c = wechatpay.new(merchant.options{ transport = merchant.recording_transport(function(request)
        if request.url:find("/first") then return { headers = {}, body = "" } end   -- no status
        return { status = 404, headers = {}, body = "" }
      end) })
      local first = c:chain("v3/first"):getAsync()
      local second = c:chain("v3/second"):getAsync()
      local _, err2 = second:wait()
      assert.equal(404, err2.status)
      local _, err1 = first:wait()
      assert.equal("internal", err1.kind)
      assert.matches("while finishing GET /v3/first", err1.message)
    end)
  end)

  describe("memory", function()
    it("a literal segment costs nothing after the call: 100,000 openids leave the heap flat", function()
      local c = wechatpay.new(merchant.options{ transport = { request = function()
        return { status = 404, headers = {}, body = "" }
      end } })
      -- every walk builds the nodes; one in 50 is also sent (signing
      -- 100,000 requests would take minutes and adds nothing here)
      local function walk(from, to)
        for i = from, to do
          local node = c.v3.multiuse.users["o" .. i].coupons
          if i % 50 == 0 then node:get() end
        end
      end
      walk(1, 1000)
      collectgarbage("collect"); collectgarbage("collect")
      local before = collectgarbage("count")
      walk(1001, 101000)
      collectgarbage("collect"); collectgarbage("collect")
      local grown = collectgarbage("count") - before
      assert.is_true(grown < 1024, ("heap grew %.0f KiB over 100,000 openids"):format(grown))
    end)
  end)
end)
