-- The chained call styles, path templates and query encoding, checked on the
-- request the client hands its transport; signatures checked by openssl.
local wechatpay = require("wechatpay")
local merchant = require("support.merchant")

describe("chained calls", function()
  local client, transport

  before_each(function()
    transport = merchant.recording_transport()
    client = wechatpay.new(merchant.options{ transport = transport, base_url = "https://pay.example.test/" })
  end)

  local function last() return transport.requests[#transport.requests] end
  local function target_of(request) return request.url:gsub("^https://pay%.example%.test", "") end

  local openid = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"

  it("gives the same request target in all four styles", function()
    local json = { stock_id = "9856000" }
    client.v3.multiuse.users._openid_.coupons:post{ openid = openid, json = json }
    client:chain("v3/multiuse/users/{openid}/coupons"):post{ openid = openid, json = json }
    client["v3/multiuse/users/{openid}/coupons"]:post{ openid = openid, json = json }
    client.v3.multiuse.users[openid].coupons:post{ json = json }
    assert.equal(4, #transport.requests)
    for _, request in ipairs(transport.requests) do
      assert.equal("POST", request.method)
      assert.equal("/v3/multiuse/users/" .. openid .. "/coupons", target_of(request))
      assert.equal('{"stock_id":"9856000"}', request.body)
    end
  end)

  it("keeps openids byte for byte: mixed case, _ and -", function()
    for _, id in ipairs{ "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "o-Ab_cD-eF", "OPENID", "_x_y-" } do
      client.v3.multiuse.users[id].coupons:post{ json = {} }
      assert.equal("/v3/multiuse/users/" .. id .. "/coupons", target_of(last()))
      client.v3.multiuse.users._openid_.coupons:post{ openid = id, json = {} }
      assert.equal("/v3/multiuse/users/" .. id .. "/coupons", target_of(last()))
    end
  end)

  it("percent-encodes template values as a path segment, and {+name} keeps reserved characters", function()
    client:chain("v3/a/{id}/b"):get{ id = "a b/c?d#e%f" }
    assert.equal("/v3/a/a%20b%2Fc%3Fd%23e%25f/b", target_of(last()))
    client:chain("v3/a/{+rest}"):get{ rest = "x/y:z" }
    assert.equal("/v3/a/x/y:z", target_of(last()))
    client:chain("v3/a/{id}"):get{ id = "张三" }
    assert.equal("/v3/a/%E5%BC%A0%E4%B8%89", target_of(last()))
  end)

  it("keeps an indexed id one literal segment: no /, escape or brace of its own reaches the path", function()
    client.v3.multiuse.users["a/b"].coupons:get()
    assert.equal("/v3/multiuse/users/a%2Fb/coupons", target_of(last()))
    client.v3.multiuse.users["%2e%2e"].coupons:get()
    assert.equal("/v3/multiuse/users/%252e%252e/coupons", target_of(last()))
    client.v3.multiuse.users["a{b}?c#d e"].coupons:get()
    assert.equal("/v3/multiuse/users/a%7Bb%7D%3Fc%23d%20e/coupons", target_of(last()))
    -- templates as wechatpay-php writes them stay templates
    client.v3.multiuse.users["{openid}"].coupons:get{ openid = "o1" }
    assert.equal("/v3/multiuse/users/o1/coupons", target_of(last()))
    assert.has_error(function() client.v3.multiuse.users[".."].coupons:get() end)
    -- a query pasted into a path string is refused, not sent as part of the path
    local n = #transport.requests
    for _, path in ipairs{ "v3/pay/transactions/id/42?mchid=1", "v3/x#y" } do
      local ok, err = pcall(function() client[path]:get() end)
      assert.is_false(ok)
      assert.matches("give the query as the request option query", tostring(err), 1, true)
    end
    assert.equal(n, #transport.requests)
  end)

  it("reaches segments named after verbs, and endpoints that end in /", function()
    client.v3.profitsharing.receivers.delete:post{ json = { type = "MERCHANT_ID" } }
    assert.equal("POST", last().method)
    assert.equal("/v3/profitsharing/receivers/delete", target_of(last()))
    client.v3.profitsharing.receivers:delete()
    assert.equal("DELETE", last().method)
    assert.equal("/v3/profitsharing/receivers", target_of(last()))
    client.v3.x.get:get()
    assert.equal("GET", last().method)
    assert.equal("/v3/x/get", target_of(last()))
    assert.has_error(function() client.v3.x.post{ json = {} } end, "post: call it with a colon: node:post{...}")
    assert.has_error(function() client.v3.x.y() end)
    -- POST /v3/applyment4sub/applyment/ answers 404 without its slash
    client["v3/applyment4sub/applyment/"]:post{ json = {} }
    assert.equal("/v3/applyment4sub/applyment/", target_of(last()))
    client:chain("v3/applyment4sub/applyment/"):post{ json = {} }
    assert.equal("/v3/applyment4sub/applyment/", target_of(last()))
    client:request("POST", "/v3/ecommerce/applyments/", { json = {} })
    assert.equal("/v3/ecommerce/applyments/", target_of(last()))
    client:chain("v3/applyment4sub/applyment/"):get{ query = { a = 1 } }
    assert.equal("/v3/applyment4sub/applyment/?a=1", target_of(last()))
  end)

  it("sends a whole number given as a float as an integer, in a path variable as elsewhere", function()
    local stock_id = 9856000.0   -- as lua-cjson decodes an id on Lua 5.4
    client:chain("v3/multiuse/stocks/{stock_id}/use-flow"):get{ stock_id = stock_id }
    assert.equal("/v3/multiuse/stocks/9856000/use-flow", target_of(last()))
    client.v3.multiuse.stocks[stock_id]["use-flow"]:get()
    assert.equal("/v3/multiuse/stocks/9856000/use-flow", target_of(last()))
    assert.has_error(function() client:chain("v3/x/{id}"):get{ id = 0 / 0 } end)
    assert.has_error(function() client.v3.x[math.huge]:get() end)
    if math.type then   -- Lua 5.4 integers past 2^53 go out in full
      client.v3.x[load("return 1234567890123456789")()]:get()
      assert.equal("/v3/x/1234567890123456789", target_of(last()))
    end
    client:chain("v3/x/{id}"):get{ id = 0.1 }
    assert.equal("/v3/x/0.1", target_of(last()))
  end)

  it("sends a number in a query or header as it is, and refuses a float past 2^53 it may not hold", function()
    local big = math.type and load("return 1234567890123456789")()   -- an integer on Lua 5.4
    if big then
      client.v3.x:get{ query = { id = big }, headers = { ["X-Id"] = big } }
      assert.equal("/v3/x?id=1234567890123456789", target_of(last()))
      local header
      for _, h in ipairs(last().headers) do header = header or h:match("^X%-Id: (.*)$") end
      assert.equal("1234567890123456789", header)
    end
    -- the same digits as a float (what LuaJIT has, or lua-cjson gives): not this number
    local float = 1234567890123456789.0
    for _, call in ipairs{
      function() client.v3.x[float]:get() end,
      function() client:chain("v3/x/{id}"):get{ id = float } end,
      function() client.v3.x:get{ query = { id = float } } end,
      function() client.v3.x:get{ headers = { ["X-Id"] = float } } end,
    } do
      local ok, err = pcall(call)
      assert.is_false(ok)
      assert.matches("whole number of 2^53 or more held as a float", err, 1, true)
    end
    -- fractions in the fewest digits that read back, as in a path
    client.v3.x:get{ query = { r = 0.1, z = -0.0 } }
    assert.equal("/v3/x?r=0.1&z=0", target_of(last()))
  end)

  it("refuses a whole JSON number lua-cjson would write with an exponent", function()
    for _, n in ipairs{ 1e14, 1.2e14, 1e20, -1e15 } do
      local ok, err = pcall(function() client.v3.x:post{ json = { amount = n } } end)
      assert.is_false(ok, tostring(n))
      assert.matches("json body.amount is a whole number of 15 digits or more", err, 1, true)
    end
    client.v3.x:post{ json = { amount = 99999999999999 } }
    assert.equal('{"amount":99999999999999}', last().body)
  end)

  it("sends the method in upper case, as it is signed, and refuses one WeChat Pay has no use for", function()
    client:request("post", "/v3/x", { json = {} })
    assert.equal("POST", last().method)
    local auth
    for _, h in ipairs(last().headers) do auth = auth or h:match("^Authorization: (.*)$") end
    local _, _, signed_upper = merchant.check_authorization(auth, "POST", "/v3/x", "{}")
    assert.is_true(signed_upper)
    assert.has_error(function() client:request("TRACE", "/v3/x") end,
      'client:request: method must be GET, POST, PUT, PATCH or DELETE, got "TRACE"')
  end)

  it("works with Lua keywords and dashes as segments", function()
    client.v3["merchant-service"]["return"]:get()
    assert.equal("/v3/merchant-service/return", target_of(last()))
  end)

  it("gives equal paths for the same chain, and a node held in a local can be reused", function()
    assert.equal("wechatpay.chain (v3/multiuse/users)", tostring(client.v3.multiuse.users))
    assert.equal("wechatpay.chain (v3/multiuse/users/{openid})", tostring(client:chain("v3/multiuse/users/{openid}")))
    local coupons = client.v3.multiuse.users._openid_.coupons
    coupons:post{ openid = "o1", json = {} }
    coupons:post{ openid = "o2", json = {} }
    assert.equal("/v3/multiuse/users/o2/coupons", target_of(last()))
  end)

  it("encodes the query with sorted keys, and the signature covers it as sent", function()
    client.v3.marketing.favor.users[openid].coupons["123"]:get{ query = { appid = "wx233544546545989", note = "a b&c" } }
    local request = last()
    local target = target_of(request)
    assert.equal("/v3/marketing/favor/users/" .. openid .. "/coupons/123?appid=wx233544546545989&note=a%20b%26c", target)
    assert.is_nil(request.body)
    local auth
    for _, h in ipairs(request.headers) do auth = auth or h:match("^Authorization: (.*)$") end
    local scheme, fields, ok = merchant.check_authorization(auth, "GET", target, "")
    assert.equal("WECHATPAY2-SHA256-RSA2048", scheme)
    assert.equal(merchant.make().mchid, fields.mchid)
    assert.equal(merchant.make().merchant_serial, fields.serial_no)
    assert.matches("^%d%d%d%d%d%d%d%d%d%d$", fields.timestamp)
    assert.matches("^[0-9A-Za-z]+$", fields.nonce_str)
    assert.equal(32, #fields.nonce_str)
    assert.is_true(ok, "openssl refused the signature")
    -- and a different target would not verify
    local _, _, ok2 = merchant.check_authorization(auth, "GET", target:gsub("note", "nota"), "")
    assert.is_false(ok2)
  end)

  it("signs exactly the body bytes it sends, Chinese text included", function()
    client:chain("v3/echo"):post{ json = { user = "张三", n = 1 } }
    local request = last()
    local auth
    for _, h in ipairs(request.headers) do auth = auth or h:match("^Authorization: (.*)$") end
    assert.matches("张三", request.body)
    local _, _, ok = merchant.check_authorization(auth, "POST", "/v3/echo", request.body)
    assert.is_true(ok)
  end)

  it("sends a default Wechatpay-Serial, User-Agent, Accept and Content-Type, and lets headers override", function()
    client:chain("v3/echo"):post{ json = {} }
    local h = table.concat(last().headers, "\n")
    assert.matches("Wechatpay%-Serial: PUB_KEY_ID_0114232134912410000000000000", h)
    assert.matches("User%-Agent: wechatpay%-lua/", h)
    assert.matches("Accept: application/json", h)
    assert.matches("Content%-Type: application/json", h)
    client:chain("v3/echo"):post{ json = {}, headers = { ["wechatpay-serial"] = "PUB_KEY_ID_1" } }
    h = table.concat(last().headers, "\n")
    assert.matches("wechatpay%-serial: PUB_KEY_ID_1", h)
    assert.is_nil(h:find("PUB_KEY_ID_0114", 1, true))
    client:chain("v3/echo"):get()
    assert.is_nil(table.concat(last().headers, "\n"):find("Content-Type", 1, true))
  end)

  it("raises before sending for a missing or empty path variable, naming it", function()
    assert.has_error(function()
      client.v3.multiuse.users._openid_.coupons:post{ json = {} }
    end, "missing path variable 'openid' for v3/multiuse/users/{openid}/coupons: pass it as the request option openid = ...")
    assert.has_error(function() client:chain("v3/a/{id}"):get{ id = "" } end, "path variable 'id' is empty")
    assert.has_error(function() client:chain("v3/a/{id}"):get{ id = {} } end,
      "path variable 'id' must be a string or number, got table")
    assert.has_error(function() client:chain("v3/a/{id"):get{} end)
    assert.equal(0, #transport.requests)
  end)

  it("refuses a path with an empty segment before sending, naming it: never collapsed into another path", function()
    local function refused(f, text)
      local ok, err = pcall(f)
      assert.is_false(ok)
      assert.matches(text, tostring(err), 1, true)
    end
    local joined = ': segments are joined by one "/"'
    refused(function() client:request("GET", "v3//mock/echo/a") end, "path v3//mock/echo/a has an empty segment" .. joined)
    refused(function() client:request("POST", "/v3/mock//echo", { json = {} }) end, "path /v3/mock//echo has an empty segment")
    refused(function() client:request("GET", "v3/x//") end, "path v3/x// has an empty segment")
    refused(function() client:request("GET", "") end, 'path "" is empty')
    refused(function() return client["v3//x"] end, "chain: path v3//x has an empty segment")
    refused(function() return client:chain("//v3/x") end, "chain: path //v3/x has an empty segment")
    refused(function() return client:chain("v3/x//") end, "chain: path v3/x// has an empty segment")
    refused(function() client:chain("v3/{+rest}/y"):get{ rest = "a//b" } end,
      "path v3/{+rest}/y has an empty segment once its variables are filled (/v3/a//b/y)")
    refused(function() client:chain("v3/{+rest}/y"):get{ rest = "a/" } end, "once its variables are filled (/v3/a//y)")
    refused(function() return client.v3.x[""] end, "bad path segment: empty")
    refused(function() client.v3.users._openid_:get{ openid = "" } end, "path variable 'openid' is empty")
    assert.equal(0, #transport.requests)
    -- one leading and one trailing "/" are no empty segment (POST /v3/applyment4sub/applyment/)
    client:request("GET", "/v3/x/")
    assert.equal("/v3/x/", target_of(last()))
    client:chain("v3/{+rest}"):get{ rest = "a/" }
    assert.equal("/v3/a/", target_of(last()))
  end)

  it("refuses bad request options", function()
    assert.has_error(function() client:chain("v3/x"):post{ json = {}, body = "x" } end, "give json or body, not both")
    assert.has_error(function() client:chain("v3/x"):post{ json = "x" } end, "json must be a table")
    assert.has_error(function() client:chain("v3/x"):get{ query = 5 } end)
    assert.has_error(function()
      client:chain("v3/x"):get{ headers = { Authorization = "x" } }
    end, "headers.Authorization is made by the client from the request it signs")
    assert.has_error(function() client.v3.x.get() end)
    assert.equal(0, #transport.requests)
  end)
end)
