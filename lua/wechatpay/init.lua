--- wechatpay: the WeChat Pay API v3 client for Lua.
--
--   local wechatpay = require("wechatpay")
--   local client = wechatpay.new{ mchid = ..., serial = ..., private_key = ..., certs = {...} }
--
-- The building blocks are modules of their own and reachable from here.
local client = require("wechatpay.client")

local wechatpay = {
  _VERSION = client.VERSION,
  key = require("wechatpay.key"),
  rsa = require("wechatpay.rsa"),
  aes = require("wechatpay.aes"),
  hash = require("wechatpay.hash"),
  base64 = require("wechatpay.base64"),
  random = require("wechatpay.random"),
  errors = require("wechatpay.errors"),
  promise = require("wechatpay.promise"),
  notification = require("wechatpay.notification"),
  dedupe = require("wechatpay.dedupe"),
  certificates = require("wechatpay.certificates"),
  media = require("wechatpay.media"),
}

--- wechatpay.all{ p1, p2 }:wait() -> { res1, res2 } | nil, first error
wechatpay.all = wechatpay.promise.all
--- wechatpay.settle{ p1, p2 }:wait() -> { { res = ... }, { err = ... } }
wechatpay.settle = wechatpay.promise.settle

-- wechatpay.ngx (the OpenResty notify_url handler and certificate refresh)
-- is loaded at its first use: nothing of it runs outside nginx.
setmetatable(wechatpay, { __index = function(t, name)
  if name == "ngx" then
    local m = require("wechatpay.ngx")
    rawset(t, name, m)
    return m
  end
end })

--- wechatpay.new(options) -> client (raises on a configuration mistake)
function wechatpay.new(options)
  return client.new(options)
end

return wechatpay
