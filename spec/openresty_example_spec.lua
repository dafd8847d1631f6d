-- The README's OpenResty example (examples/openresty/nginx.conf and
-- handlers.lua), run as written in a real nginx against the mock: only the
-- install paths, the port, the CA bundle and the resolver's address are
-- replaced (each replacement must match, so the spec notices the example
-- drifting).  nginx resolves the API's name through its own `resolver`, here
-- a DNS server answering 127.0.0.1 (spec/support/dns.lua).
local cjson = require("cjson")
local socket = require("socket")
local http = require("socket.http")
local ltn12 = require("ltn12")
local mock = require("wechatpay.mock")
local ossl = require("support.openssl")
local dns_support = require("support.dns")
local nginx_support = require("support.nginx")

local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return port
end

local function write(path, data, mode)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
  if mode then ossl.run("chmod " .. mode .. " " .. ossl.quote(path)) end
end

-- Replaces what must be there, once or more; fails when it is not.
local function replace(text, from, to)
  local start = text:find(from, 1, true)
  assert(start, "examples/openresty/nginx.conf no longer holds: " .. from)
  local out, at = {}, 1
  while start do
    out[#out + 1] = text:sub(at, start - 1) .. to
    at = start + #from
    start = text:find(from, at, true)
  end
  out[#out + 1] = text:sub(at)
  return table.concat(out)
end

describe("examples/openresty (the README's nginx.conf and handlers.lua) in a real nginx", function()
  local server, dns, dir, port, pid, nginx_bin

  local function post(path, value)
    local body = cjson.encode(value)
    local chunks = {}
    local _, status = http.request{
      url = ("http://127.0.0.1:%d%s"):format(port, path), method = "POST",
      source = ltn12.source.string(body), sink = ltn12.sink.table(chunks),
      headers = { ["content-type"] = "application/json", ["content-length"] = #body },
    }
    local text = table.concat(chunks)
    return status, text ~= "" and cjson.decode(text) or nil
  end

  local function error_log()
    local f = io.open(dir .. "/logs/error.log", "rb")
    if not f then return "" end
    local text = f:read("*a")
    f:close()
    return text
  end

  setup(function()
    server = assert(mock.start{ latency = 0, rate_limit = false })
    dns = dns_support.start()
    local modules
    nginx_bin, modules = assert(mock.locate_nginx())
    dir = os.tmpname()
    os.remove(dir)
    ossl.run("mkdir -m 755 " .. ossl.quote(dir) .. " " .. ossl.quote(dir .. "/logs"))
    write(dir .. "/ca.pem", ossl.read(server.cafile), "644")   -- the workers read it
    local root = ossl.repo_root()
    local conf = ossl.read(root .. "/examples/openresty/nginx.conf")
    for _, m in ipairs(modules) do
      local name = m:match("[^/]+$")
      conf = replace(conf, "/usr/lib/nginx/modules/" .. name, m)
    end
    conf = replace(conf, "/opt/wechatpay-lua/build/luajit/", nginx_support.build_dir() .. "/luajit/")
    conf = replace(conf, "/opt/wechatpay-lua/", root .. "/")
    conf = replace(conf, "/etc/ssl/certs/ca-certificates.crt", dir .. "/ca.pem")
    conf = replace(conf, "resolver 127.0.0.53", "resolver 127.0.0.1:" .. dns.port)
    port = free_port()
    conf = replace(conf, "listen 8080;", "listen 127.0.0.1:" .. port .. ";")
    write(dir .. "/nginx.conf", conf, "644")
    write(dir .. "/apiv3_key", server.apiv3_key, "600")
    -- the variables bin/wechatpay reads, as the README exports them: plain paths, the serial from the certificate
    local env = {
      WECHATPAY_MCHID = server.mchid, WECHATPAY_PRIVATE_KEY = server.merchant_key_file,
      WECHATPAY_MERCHANT_CERT = server.merchant_cert_file, WECHATPAY_PUBLIC_KEY_ID = server.platform_key_id,
      WECHATPAY_PUBLIC_KEY = server.platform_public_key_file, WECHATPAY_APIV3_KEY_FILE = dir .. "/apiv3_key",
      -- the mock's certificate names localhost, which nginx resolves by DNS
      WECHATPAY_BASE_URL = "https://localhost:" .. server.port,
    }
    local assignments = {}
    for name, value in pairs(env) do assignments[#assignments + 1] = name .. "=" .. ossl.quote(value) end
    ossl.run("env -u LUA_PATH -u LUA_CPATH " .. table.concat(assignments, " ") .. " "
      .. nginx_support.sanitizer_preload() .. ossl.quote(nginx_bin)
      .. " -p " .. ossl.quote(dir .. "/") .. " -c nginx.conf")
    for _ = 1, 250 do
      local f = io.open(dir .. "/logs/nginx.pid")
      if f then pid = f:read("*a"):match("%d+"); f:close() end
      if pid and socket.connect("127.0.0.1", port) then break end
      socket.sleep(0.02)
    end
    assert(pid, "the example's nginx did not start:\n" .. error_log())
  end)

  teardown(function()
    if pid then
      os.execute("kill -TERM " .. pid .. " 2>/dev/null")
      for _ = 1, 250 do
        local alive = os.execute("kill -0 " .. pid .. " 2>/dev/null")
        if alive ~= true and alive ~= 0 then break end   -- Lua 5.4 says true, LuaJIT 0
        socket.sleep(0.02)
      end
    end
    if dns then dns.stop() end
    if server then server:stop() end
    if dir then os.execute("rm -rf " .. ossl.quote(dir)) end
  end)

  local function grant_request(user, no)
    return { openid = user.openid, name = user.name, id_card = user.id_card, stock_id = "9856000",
      appid = "wx233544546545989", out_request_no = no }
  end

  local function some_users(n)
    local list = {}
    for openid, u in pairs(server.users) do
      list[#list + 1] = { openid = openid, name = u.name, id_card = u.id_card }
    end
    table.sort(list, function(a, b) return a.openid < b.openid end)
    local first = {}
    for i = 1, n do first[i] = list[i] end
    return first
  end

  it("POST /grant grants a coupon: the name resolved by nginx, the call on cosockets, the mock records it", function()
    local user = some_users(1)[1]
    local status, answer = post("/grant", grant_request(user, "EXAMPLE-1"))
    assert.are.equal(200, status, cjson.encode(answer) .. "\n" .. error_log())
    local record = server:coupon(answer.coupon_id)
    assert.truthy(record, "the mock has no coupon " .. tostring(answer.coupon_id))
    assert.are.equal(user.openid, record.openid)
  end)

  it("POST /grant/batch grants each in one request", function()
    local list = {}
    for i, user in ipairs(some_users(3)) do list[i] = grant_request(user, "EXAMPLE-B" .. i) end
    local status, answers = post("/grant/batch", list)
    assert.are.equal(200, status)
    assert.are.equal(3, #answers)
    local seen = {}
    for i, a in ipairs(answers) do
      assert.truthy(a.coupon_id, "grant " .. i .. ": " .. tostring(a.error))
      assert.is_nil(seen[a.coupon_id])
      seen[a.coupon_id] = true
    end
  end)

  it("/wechatpay/notify answers a notification 204, a redelivered one 204, a tampered one 401", function()
    local url = ("http://127.0.0.1:%d/wechatpay/notify"):format(port)
    local function deliver(spec)
      local n = server:notify(url, spec)
      local deadline, record = socket.gettime() + 10, nil
      repeat
        socket.sleep(0.05)
        record = server:notification(n)
      until (record and record.done) or socket.gettime() > deadline
      assert(record and record.done, "the mock did not finish notification " .. n)
      local statuses = {}
      for _, a in ipairs(record.attempts) do statuses[#statuses + 1] = a.status end
      return statuses
    end
    assert.same({ 204 }, deliver{ resource = { out_trade_no = "EXAMPLE-N1" } })
    assert.same({ 204, 204 }, deliver{ fault = "duplicate", resource = { out_trade_no = "EXAMPLE-N2" } })
    assert.same({ 401 }, deliver{ fault = "tamper_body", resource = { out_trade_no = "EXAMPLE-N3" }, schedule = {} })
  end)
end)
