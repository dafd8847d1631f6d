--- Randomness from a CSPRNG that is reseeded in every forked process.
local core = require("wechatpay.core")

return {
  --- nonce([n = 32]) -> n characters of [0-9A-Za-z]
  nonce = core.nonce,
  --- bytes(n) -> n random bytes
  bytes = core.random_bytes,
}
