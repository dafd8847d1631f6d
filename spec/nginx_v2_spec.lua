-- APIv2 inside a real nginx (Debian's nginx + libnginx-mod-http-lua 0.10.23,
-- lua-resty-core 0.1.25): the cosocket transport presents the merchant
-- certificate with tcpsock:setclientcert for security = true, and the mock
-- (which asks every handshake for one) checks it against its CA.
local cjson = require("cjson")
local mock = require("wechatpay.mock")
local nginx = require("support.nginx")

local RUN = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

describe("APIv2 inside nginx", function()
  local server, app

  setup(function()
    server = assert(mock.start{ rate_limit = false })
    app = nginx.start(server, { workers = 1, v2 = true })
  end)
  teardown(function()
    if app then app:stop() end
    if server then server:stop() end
  end)
  before_each(function() server:reset() end)

  it("sends a red packet over mutual TLS from a content handler", function()
    local no = "NGXRED" .. RUN:gsub("%D", "")
    local status, body = app:get("/v2?op=redpack&no=" .. no)
    assert.equal(200, status)
    assert.is_truthy(body.xml, cjson.encode(body))
    assert.equal("SUCCESS", body.xml.result_code)
    assert.equal(no, server:v2_record("redpack", no).mch_billno)
  end)

  it("without the certificate the mock refuses; plain and mTLS connections do not mix in the pool", function()
    local status, body = app:get("/v2?op=micropay&no=NGXPAY" .. RUN)
    assert.equal(200, status)
    assert.is_truthy(body.xml, cjson.encode(body))
    status, body = app:get("/v2?op=redpack&security=0&no=NGXNO" .. RUN:gsub("%D", ""))
    assert.equal("http", body.error.kind)
    assert.matches("证书验证失败", body.error.message)
    status, body = app:get("/v2?op=redpack&no=NGXYES" .. RUN:gsub("%D", ""))
    assert.is_truthy(body.xml, cjson.encode(body))
    status, body = app:get("/v2?op=redpack&security=0&no=NGXNO2" .. RUN:gsub("%D", ""))
    assert.matches("证书验证失败", body.error.message)
    assert.equal(1, server:v2_stats().redpacks)
  end)

  it("a key cosockets cannot present (DER) fails with a clear error, before sending", function()
    local before = server:v2_stats().v2_requests
    local _, body = app:get("/v2?op=redpack&der=1&no=NGXDER" .. RUN:gsub("%D", ""))
    assert.is_truthy(body.error, cjson.encode(body))
    assert.equal("network", body.error.kind)
    assert.matches("inside nginx, mutual TLS needs private_key as unencrypted PEM", body.error.message, 1, true)
    assert.is_nil(body.error.message:find("PRIVATE KEY", 1, true))
    assert.equal(before, server:v2_stats().v2_requests)
  end)
end)
