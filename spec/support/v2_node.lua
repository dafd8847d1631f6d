--- Test support: the Node SDK's APIv2 helpers (spec/fixtures/v2_node.js)
-- as the reference that is not ours.  The SDK comes from npm, pinned in
-- bench/peer/package-lock.json; `npm ci` installs it there when missing.
local cjson = require("cjson")
local ossl = require("support.openssl")

local M = {}

local function root()
  local source = debug.getinfo(1, "S").source:match("^@(.*)$")
  local dir = source:match("^(.*)/spec/support/[^/]+$") or "."
  return dir
end

local ready
local function ensure()
  if ready then return end
  local dir = root() .. "/bench/peer"
  if not ossl.exists(dir .. "/node_modules/wechatpay-axios-plugin/package.json") then
    ossl.run("cd " .. ossl.quote(dir) .. " && npm ci --no-audit --no-fund --loglevel=error")
  end
  ready = true
end

local function run(...)
  ensure()
  local args = { "node", ossl.quote(root() .. "/spec/fixtures/v2_node.js") }
  for _, a in ipairs{ ... } do args[#args + 1] = ossl.quote(a) end
  return ossl.run(table.concat(args, " "))
end

local function temp(data)
  local path = os.tmpname()
  ossl.write(path, data)
  return path
end

--- Hash.sign(type, fields, key) of the Node SDK.
function M.sign(sign_type, fields, apiv2_key)
  local path = temp(cjson.encode(fields))
  local out = run("sign", sign_type, apiv2_key, path)
  os.remove(path)
  return out
end

--- Transformer.toXml(fields)
function M.to_xml(fields)
  local path = temp(cjson.encode(fields))
  local out = run("toxml", path)
  os.remove(path)
  return out
end

--- Transformer.toObject(xml) as a Lua table
function M.to_object(text)
  local path = temp(text)
  local out = run("toobject", path)
  os.remove(path)
  return cjson.decode(out)
end

--- AesEcb.encrypt(plaintext, key) -> base64
function M.ecb_encrypt(apiv2_key_md5, plaintext)
  local path = temp(plaintext)
  local out = run("ecb", apiv2_key_md5, path)
  os.remove(path)
  return out
end

return M
