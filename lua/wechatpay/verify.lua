--- Verifying what WeChat Pay signed: API responses and callbacks.
--
-- message = TIMESTAMP\n NONCE\n BODY\n, SHA256withRSA with the platform key
-- named by Wechatpay-Serial (a certificate serial or a PUB_KEY_ID_...).
local core = require("wechatpay.core")

local verify = {}

verify.WINDOW = 300   -- seconds either side of the local clock

-- 2xx responses that WeChat Pay does not sign: file downloads, whose
-- integrity comes from the hash given by the call that returned the URL.
local UNSIGNED_PATHS = {
  "^/v3/billdownload/file",
  "^/v3/statements",
  "^/v3/global/statements",
  "^/v3/transferdownload/",
  "^/v3/new%-tax%-control%-fapiao/download",
}

--- true when a 2xx of this request target carries no signature.
function verify.is_unsigned(target)
  local path = target:match("^[^?]*")
  if path:find("^/v3/merchant%-service/images/") then
    return not path:find("^/v3/merchant%-service/images/upload")
  end
  for _, pattern in ipairs(UNSIGNED_PATHS) do
    if path:find(pattern) then return true end
  end
  return false
end

local function known_serials(keys)
  local list = {}
  for serial in pairs(keys) do list[#list + 1] = serial end
  table.sort(list)
  return table.concat(list, ", ")
end

--- signed(keys, headers, body [, now]) -> true | nil, reason
-- keys: serial or PUB_KEY_ID -> key object; headers: case-insensitive lookup.
function verify.signed(keys, headers, body, now)
  local timestamp = headers["wechatpay-timestamp"]
  local nonce = headers["wechatpay-nonce"]
  local signature = headers["wechatpay-signature"]
  local serial = headers["wechatpay-serial"]
  local missing = {}
  if not timestamp then missing[#missing + 1] = "Wechatpay-Timestamp" end
  if not nonce then missing[#missing + 1] = "Wechatpay-Nonce" end
  if not signature then missing[#missing + 1] = "Wechatpay-Signature" end
  if not serial then missing[#missing + 1] = "Wechatpay-Serial" end
  if #missing > 0 then
    return nil, "unsigned response: missing " .. table.concat(missing, ", ") .. " (a 2xx without them is forged)"
  end
  local ts = timestamp:match("^%d+$") and tonumber(timestamp)
  if not ts then
    return nil, "Wechatpay-Timestamp is not unix seconds: " .. timestamp:sub(1, 32)
  end
  now = now or os.time()
  if math.abs(now - ts) > verify.WINDOW then
    return nil, ("Wechatpay-Timestamp %d is %d s from the local clock %d (allowed: %d s): a replay, or a clock out of sync")
      :format(ts, now - ts, now, verify.WINDOW)
  end
  local key = keys[serial] or keys[serial:upper()]
  if not key then
    return nil, ("unknown Wechatpay-Serial %s: the client knows %s"):format(serial:sub(1, 64), known_serials(keys))
  end
  if signature:find("^WECHATPAY/SIGNTEST/") then
    return nil, "Wechatpay-Signature is a WECHATPAY/SIGNTEST/ probe, which must not verify"
  end
  if not core.verify_message(key, timestamp, nonce, body or "", signature) then
    return nil, "Wechatpay-Signature does not verify with the key " .. serial .. ": body or headers altered"
  end
  return true
end

return verify
