--- Digests (lower-case hex), HMAC and a constant-time comparison.
local core = require("wechatpay.core")

return {
  sha256 = core.sha256,
  sha1 = core.sha1,
  md5 = core.md5,
  hmac_sha256 = core.hmac_sha256,
  --- equals(a, b): compares secrets without leaking where they differ
  equals = core.equals,
}
