--- wechatpay.v2: the APIv2 building blocks.  Calls go through the client
-- (client.v2.pay.micropay:post{ xml = {...} }); these are for callbacks
-- and for checking a signature by hand.
return {
  sign = require("wechatpay.v2.sign"),
  xml = require("wechatpay.v2.xml"),
  notification = require("wechatpay.v2.notification"),
}
