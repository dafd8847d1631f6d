-- Consumption-gold (消费金) coupons, worker side: POST
-- /v3/multiuse/users/{openid}/coupons grants one (user_name and
-- id_card_number RSA-OAEP encrypted with the key the Wechatpay-Serial header
-- names; a reused out_request_no answers the first grant, or an error if the
-- body changed), GET /v3/marketing/favor/users/{openid}/coupons/{id} queries it.
--
-- Real names arrive OAEP-encrypted; they are decrypted here, compared, and
-- only a digest of them is kept (for the idempotency comparison). Plaintext is
-- never echoed, stored or logged.
local cjson = require("cjson.safe")
local digest = require("openssl.digest")
local pkey = require("openssl.pkey")
local response = require("wechatpay.mock.response")
local state = require("wechatpay.mock.state")
local util = require("wechatpay.mock.util")
local hex = util.hex

local coupons = {}

local function param_error(message, field, location, code)
  return response.error(400, code or "PARAM_ERROR", message,
    { field = field, location = location or "body" })
end

local function is_string(v)
  return type(v) == "string"
end

-- Field checks in the documented order; returns nil or an error response.
local function check_body(body)
  local function string_field(name, max, pattern, pattern_text)
    local v = body[name]
    if v == nil then
      return param_error(name .. " is required", name)
    end
    if not is_string(v) or v == "" then
      return param_error(name .. " must be a non-empty string", name)
    end
    if #v > max then
      return param_error(name .. " must be at most " .. max .. " characters", name)
    end
    if pattern and v:find(pattern) then
      return param_error(name .. " may only contain " .. pattern_text, name)
    end
    return nil
  end
  local err = string_field("stock_id", 20)
    or string_field("out_request_no", 128, "[^%w|_%*%-]", "letters, digits, |, _, * and -")
    or string_field("user_name", 2048, "[^%w%+/=]", "base64 characters")
    or string_field("id_card_number", 2048, "[^%w%+/=]", "base64 characters")
    or string_field("appid", 32)
  if err then
    return err
  end
  if body.card_type == nil then
    return param_error("card_type is required", "card_type")
  end
  if body.card_type ~= "ID_CARD" then
    return param_error("card_type must be ID_CARD", "card_type")
  end
  local amount = body.amount
  if amount ~= nil then
    if type(amount) ~= "number" or amount % 1 ~= 0 or amount <= 0 or amount > 1e12 then
      return param_error("amount must be a positive integer (fen)", "amount")
    end
  end
  return nil
end

local function decrypt(key, b64)
  local ciphertext = ngx.decode_base64(b64)
  if not ciphertext or #ciphertext ~= 256 then
    return nil
  end
  local ok, plaintext = pcall(key.decrypt, key, ciphertext,
    { rsaPadding = pkey.RSA_PKCS1_OAEP_PADDING })
  if ok and type(plaintext) == "string" then
    return plaintext
  end
  return nil
end

local function identity_digest(name, id_card)
  local md = digest.new("sha256")
  md:update(name .. "\0" .. id_card:upper())
  return hex(md:final())
end

local function rfc3339_beijing(t)
  return os.date("!%Y-%m-%dT%H:%M:%S+08:00", t + 8 * 3600)
end

-- Public view of a grant (what server:coupon() and the query endpoint show).
local function public_record(grant)
  return {
    coupon_id = grant.coupon_id,
    stock_id = grant.stock_id,
    openid = grant.openid,
    appid = grant.appid,
    out_request_no = grant.out_request_no,
    amount = grant.amount,
    status = "SENDED",
    create_time = grant.create_time,
    granted_at = grant.granted_at,   -- ngx.now() of the grant: rate checks need more than seconds
    stock_creator_mchid = state.config.mchid,
  }
end

function coupons.record(coupon_id)
  local data = state.dicts().data
  local text = data:get("coupon:" .. coupon_id)
  if not text then
    return nil
  end
  return public_record(cjson.decode(text))
end

local function user_has_appid(user, appid)
  for _, a in ipairs(user.appids) do
    if a == appid then
      return true
    end
  end
  return false
end

-- POST /v3/multiuse/users/{openid}/coupons
function coupons.grant(req)
  local dicts = state.dicts()
  -- WeChat Pay's limit is on calls: a replay, a refused body, an unknown
  -- user all count, so the count comes before anything is looked at.
  local rate_limit = state.setting("rate_limit") or 0
  if rate_limit > 0 then
    local minute = math.floor(ngx.time() / 60)
    local used = dicts.data:incr("rate:" .. minute, 1, 0, 120)
    if used and used > rate_limit then
      return response.error(429, "FREQUENCY_LIMITED",
        "frequency limited: more than " .. rate_limit .. " grant calls this minute")
    end
  end
  local serial = req.headers["wechatpay-serial"]
  if serial == nil then
    return param_error("the Wechatpay-Serial header is required (the WeChat Pay public key id "
      .. "or platform certificate serial used to encrypt)", "Wechatpay-Serial", "header")
  end
  local key = type(serial) == "string" and state.decryption_key(serial)
  if not key then
    return response.error(400, "PARAM_ERROR",
      "the Wechatpay-Serial header names no WeChat Pay public key id or platform certificate "
      .. "of this merchant", { field = "Wechatpay-Serial", location = "header",
      value = type(serial) == "string" and serial or nil })
  end

  local body = cjson.decode(req.body)
  if type(body) ~= "table" or req.body:match("^%s*%[") then
    return param_error("the request body must be a JSON object", "body")
  end
  local err = check_body(body)
  if err then
    return err
  end
  if not state.config.stocks[body.stock_id] then
    return response.error(404, "RESOURCE_NOT_EXISTS", "no stock " .. body.stock_id .. " of this merchant",
      { field = "stock_id", location = "body", value = body.stock_id })
  end

  local name = decrypt(key, body.user_name)
  if not name then
    return param_error("user_name: decrypt failed (expected RSA-OAEP SHA-1 with the key named "
      .. "by Wechatpay-Serial)", "user_name")
  end
  local id_card = decrypt(key, body.id_card_number)
  if not id_card then
    return param_error("id_card_number: decrypt failed (expected RSA-OAEP SHA-1 with the key "
      .. "named by Wechatpay-Serial)", "id_card_number")
  end

  local grant = {
    openid = req.openid,
    stock_id = body.stock_id,
    out_request_no = body.out_request_no,
    appid = body.appid,
    amount = body.amount,
    identity = identity_digest(name, id_card),
  }

  -- Idempotency on (mchid, out_request_no): one mchid per mock, so the key
  -- is the number alone.
  local request_key = "request:" .. grant.out_request_no
  local previous = dicts.data:get(request_key)
  if previous then
    previous = cjson.decode(previous)
    for _, field in ipairs({ "openid", "stock_id", "appid", "amount", "identity" }) do
      if previous[field] ~= grant[field] then
        local shown = field == "identity" and "user_name/id_card_number" or field
        return response.error(400, "INVALID_REQUEST",
          "out_request_no reused with different parameters",
          { field = shown, location = field == "openid" and "path" or "body" })
      end
    end
    return response.ok({ coupon_id = previous.coupon_id })
  end

  local user = state.config.users[grant.openid]
  if not user then
    return response.error(400, "USER_NOT_EXIST", "the user does not exist under this appid",
      { field = "openid", location = "path" })
  end
  if not user_has_appid(user, grant.appid) then
    return response.error(400, "PARAM_ERROR", "the openid does not belong to appid " .. grant.appid,
      { field = "appid", location = "body", value = grant.appid })
  end
  if user.name ~= name or user.id_card:upper() ~= id_card:upper() then
    return response.error(400, "PARAM_ERROR", "real name mismatch",
      { field = "user_name/id_card_number", location = "body" })
  end

  local seq = dicts.settings:incr("coupon_seq", 1, 0)
  grant.coupon_id = string.format("8%011d", seq)
  grant.create_time = rfc3339_beijing(ngx.time())
  ngx.update_time()
  grant.granted_at = ngx.now()
  local text = cjson.encode(grant)
  dicts.data:set(request_key, text)
  dicts.data:set("coupon:" .. grant.coupon_id, text)
  dicts.stats:incr("grants", 1, 0)
  return response.ok({ coupon_id = grant.coupon_id })
end

-- GET /v3/marketing/favor/users/{openid}/coupons/{coupon_id}?appid=...
function coupons.query(req)
  local appid = ngx.var.arg_appid
  if appid == nil or appid == "" then
    return param_error("appid is required", "appid", "query")
  end
  appid = ngx.unescape_uri(appid)
  local record = coupons.record(req.coupon_id)
  if not record or record.openid ~= req.openid or record.appid ~= appid then
    return response.error(404, "RESOURCE_NOT_EXISTS", "coupon not found")
  end
  return response.ok(record)
end

return coupons
