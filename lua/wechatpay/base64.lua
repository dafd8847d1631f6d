--- Standard base64 with padding; decode is strict and returns nil, err on bad input.
local core = require("wechatpay.core")

return {
  encode = core.base64_encode,
  decode = core.base64_decode,
}
