--- Where a grant's client CPU goes beyond the crypto, without the network:
-- the same grant as bench/peer/grants.lua through a client whose transport
-- is a double that answers at once with a canned, correctly signed 200 (so
-- every call still verifies a real signature), and each stage of that path
-- timed on its own.  Prints TSV lines "stage<TAB>ms per call<TAB>what".
-- The real call's CPU (bench/peer/grants.lua, sequential) minus "no_network"
-- is what curl, TLS and the kernel cost a call.
--
--   PEER_MOCK=mock.json lua5.4 bench/peer/overhead.lua [calls]
local cjson = require("cjson")
local core = require("wechatpay.core")
local wechatpay = require("wechatpay")
local config = require("wechatpay.config")
local request = require("wechatpay.request")
local verify = require("wechatpay.verify")
local key = require("wechatpay.key")

local N = tonumber(arg[1]) or 1000

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("*a")
  f:close()
  return text
end

local m = cjson.decode(read_file(assert(os.getenv("PEER_MOCK"), "PEER_MOCK: the mock's JSON file")))
local users = m.users
local options = {
  mchid = m.mchid,
  serial = m.merchant_serial,
  private_key = "file://" .. m.merchant_key_file,
  certs = { [m.platform_key_id] = "file://" .. m.platform_public_key_file },
  base_url = m.base_url,
  cafile = m.cafile,
  retry = false,
}

-- The canned 200: the mock's answer to a grant, signed once by the platform key.
local body = '{"coupon_id":"90000000000000000001"}'
local platform_private = assert(key.private("file://" .. m.platform_private_key_file))
local timestamp, nonce = tostring(os.time()), core.nonce(32)
local signature = core.rsa_sign(platform_private, timestamp .. "\n" .. nonce .. "\n" .. body .. "\n")
local function canned()
  -- lower-case names, as the curl transport hands them over
  return { status = 200, body = body, headers = {
    ["server"] = "nginx", ["content-type"] = "application/json", ["content-length"] = tostring(#body),
    ["connection"] = "keep-alive", ["request-id"] = "08F1B2C3D4E5F60718293A4B5C6D7E8F",
    ["wechatpay-timestamp"] = timestamp, ["wechatpay-nonce"] = nonce,
    ["wechatpay-signature"] = signature, ["wechatpay-serial"] = m.platform_key_id,
  } }
end

local double = { queue = {} }
function double.submit(self, _, callback)
  self.queue[#self.queue + 1] = callback
  return #self.queue
end
function double.step(self)
  local list = self.queue
  self.queue = {}
  for i = 1, #list do list[i](canned()) end
  return #list
end

options.transport = double
local client = wechatpay.new(options)
options.transport = nil
local settings = config.check(options, "wechatpay-lua/bench")

local counter = 0
local function body_table(user, name_ct, id_ct)
  counter = counter + 1
  return {
    stock_id = "9856000", out_request_no = "overhead" .. counter,
    user_name = name_ct, id_card_number = id_ct, appid = "wx233544546545989", card_type = "ID_CARD",
  }
end

local function ms_per_call(fn)
  local runs = {}
  for r = 1, 3 do
    local started = os.clock()
    for i = 1, N do fn(i) end
    runs[r] = (os.clock() - started) * 1000 / N
  end
  table.sort(runs)
  return runs[2]
end

local rows = {}
local function row(id, ms, what) rows[#rows + 1] = { id, ms, what } end

local user = users[1]
local private = settings.private_key
local public = settings.platform_keys[m.platform_key_id]
local name_ct = assert(client:encrypt(user.name))
local id_ct = assert(client:encrypt(user.id_card))
local path = "v3/multiuse/users/{openid}/coupons"
local prepared = request.prepare(settings, "POST", path, { openid = user.openid, json = body_table(user, name_ct, id_ct) })
local message = ("POST\n%s\n%s\n%s\n%s\n"):format(prepared.target, timestamp, core.nonce(32), prepared.body)

-- the whole grant, as bench/peer/grants.lua makes it, minus the network
local whole = ms_per_call(function(i)
  local u = users[i % #users + 1]
  local res = assert(client.v3.multiuse.users._openid_.coupons:post{ openid = u.openid,
    json = body_table(u, assert(client:encrypt(u.name)), assert(client:encrypt(u.id_card))) })
  assert(res:json().coupon_id)
end)
local sign = ms_per_call(function() core.rsa_sign(private, message) end)
local verify_ms = ms_per_call(function() core.rsa_verify(public, timestamp .. "\n" .. nonce .. "\n" .. body .. "\n", signature) end)
local oaep = ms_per_call(function() core.rsa_encrypt(public, user.name); core.rsa_encrypt(public, user.id_card) end)
local crypto = sign + verify_ms + oaep
row("no_network", whole, "a whole grant through the client, transport a double answering a signed 200")
row("crypto", crypto, ("its crypto: sign %.3f + verify %.3f + 2 OAEP %.3f"):format(sign, verify_ms, oaep))
row("beyond_crypto", whole - crypto, "no_network - crypto: Lua, request building, JSON, verification bookkeeping")

-- the stages, each alone (crypto inside them subtracted)
row("chain", ms_per_call(function() return client.v3.multiuse.users._openid_.coupons end),
  "client.v3.multiuse.users._openid_.coupons: 5 chain nodes")
row("body", ms_per_call(function() return body_table(user, name_ct, id_ct) end), "the grant's Lua table")
row("prepare", ms_per_call(function()
  return request.prepare(settings, "POST", path, { openid = user.openid, json = body_table(user, name_ct, id_ct) })
end) - ms_per_call(function() return body_table(user, name_ct, id_ct) end),
  "request.prepare: options check, path expansion, JSON encode + number check, header lines, retry policy")
row("json_encode", ms_per_call(function() return request.encode_json(body_table(user, name_ct, id_ct)) end)
  - ms_per_call(function() return body_table(user, name_ct, id_ct) end), "  of which request.encode_json")
row("sign_wrap", ms_per_call(function() return request.sign(settings, prepared) end) - sign,
  "request.sign minus the RSA sign: nonce, SHA-256 input, base64, Authorization, header copy")
row("verify_wrap", ms_per_call(function() return verify.response(settings.platform_keys, canned(), prepared.target) end)
  - verify_ms, "verify.response minus the RSA verify: response/headers objects, header checks, clock, key lookup")
local res = verify.response(settings.platform_keys, canned(), prepared.target)
row("json_decode", ms_per_call(function() return res:json() end), "res:json() of the 40-byte answer")

for _, r in ipairs(rows) do
  io.stdout:write(("%s\t%.4f\t%s\n"):format(r[1], r[2], r[3]))
end
