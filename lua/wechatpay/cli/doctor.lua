--- `wechatpay doctor`: checks a configuration piece by piece and says, for
-- each piece, what is wrong and how to fix it.  Local checks first (keys,
-- serial, APIv3 key, platform keys, CA bundle), then the network (each
-- host, the clock, one signed GET /v3/certificates).  Never prints a
-- secret: the APIv3 key is described by its length, keys by their size.
local args = require("wechatpay.cli.args")
local config = require("wechatpay.cli.config")
local exit = require("wechatpay.cli.exit")
local output = require("wechatpay.cli.output")
local key = require("wechatpay.key")
local rsa = require("wechatpay.rsa")

local doctor = {}

doctor.USAGE = [[
usage: wechatpay doctor [--config FILE | --mock] [--timeout SECONDS]

Checks a configuration and says what is wrong, each check on one line
(ok, warn, FAIL, skip; in colour on a terminal) with the fix under it:

  private key        loads, is a private key, RSA of at least 2048 bits
  merchant cert      apiclient_cert.pem (merchant_cert / WECHATPAY_MERCHANT_CERT):
                     a certificate, not expired
  serial             the configured serial is the merchant certificate's
  key pair           the private key is the key of the merchant certificate
  APIv3 key          32 bytes (never shown)
  APIv2 key          when configured (apiv2_key): 32 letters and digits, not the
                     APIv3 key (never shown)
  platform keys      each certs entry: a WeChat Pay public key (PUB_KEY_ID_...) or
                     a platform certificate named by its own serial, not expired
                     nor expiring within 30 days, not the merchant's own certificate
  CA bundle          cafile loads and holds certificates
  host               each base_url host answers over HTTPS
  clock              the local clock against WeChat Pay's Date header (warn beyond
                     5 s, FAIL beyond WeChat Pay's 5-minute window)
  signature          WeChat Pay accepts a signed GET /v3/certificates (its 404
                     "无可用的平台证书" for a merchant with only a public key counts)
  answer             the answer's signature verifies with the configured keys
  APIv3 decrypt      the APIv3 key opens the downloaded certificates

A check that needs what is not configured is skipped, with why.
Exit status 0 when no check failed (warnings allowed), 1 when one did,
2 for a usage error.  --timeout: seconds per request (default 10).
--mock checks a configuration made for the built-in mock WeChat Pay, which
it starts and stops (a demonstration of every check passing).
]]

local SPEC = { config = "value", timeout = "value", mock = "flag", help = "flag" }

local WARN_DAYS = 30
local CLOCK_WARN = 5
local CLOCK_WINDOW = 300
local PROBE = "wechatpay doctor: key pair probe"

local function day(t) return os.date("!%Y-%m-%d", math.floor(t)) end

-- ---- the report ------------------------------------------------------------------

local TAGS = { ok = { "ok  ", "green" }, warn = { "warn", "yellow" }, fail = { "FAIL", "red" },
               skip = { "skip", "dim" } }

local function new_report(paint)
  local report = { failed = 0, warned = 0 }
  function report.add(status, topic, message, fix)
    local tag = TAGS[status]
    output.write(("[%s] %-14s %s\n"):format(paint(tag[2], tag[1]), topic, message))
    if fix then output.write(("       %-14s fix: %s\n"):format("", fix)) end
    if status == "fail" then report.failed = report.failed + 1 end
    if status == "warn" then report.warned = report.warned + 1 end
  end
  return report
end

-- "file:///x" -> "/x"; PEM text -> "PEM text"; never the text itself
local function where(source)
  if type(source) ~= "string" then return "a loaded key" end
  local path = source:match("^file://(.+)$")
  if path then return path end
  if source:find("-----BEGIN ", 1, true) then return "PEM text" end
  return ("a value of %d bytes"):format(#source)
end

local function expiry(info, now)
  return math.floor((info.not_after - now) / 86400)
end

-- ---- local checks ------------------------------------------------------------------

local function check_mchid(report, options)
  local mchid = options.mchid
  if type(mchid) == "number" then mchid = ("%.0f"):format(mchid) end
  if type(mchid) ~= "string" or not mchid:match("^%d+$") then
    report.add("fail", "mchid", mchid == nil and "not configured" or "is not a merchant id (digits)",
      "set mchid = \"1900000001\" (WECHATPAY_MCHID): the merchant id of the merchant platform")
    return nil
  end
  report.add("ok", "mchid", mchid)
  return mchid
end

local KEY_FIX = "use the apiclient_key.pem made with the merchant API certificate (商户平台 → 账户中心 → API安全)"

local function check_private_key(report, options)
  local source = options.private_key
  if source == nil then
    report.add("fail", "private key", "not configured",
      "set private_key = \"file:///path/apiclient_key.pem\" (WECHATPAY_PRIVATE_KEY=path)")
    return nil
  end
  if type(source) ~= "string" and not key.is_key(source) then
    report.add("fail", "private key", "must be \"file:///path\" or PEM text, not a " .. type(source), KEY_FIX)
    return nil
  end
  local passphrase = type(options.passphrase) == "string" and options.passphrase or nil
  local loaded, err = key.load(source, passphrase, "private")
  if not loaded then
    report.add("fail", "private key", ("%s cannot be loaded: %s"):format(where(source), err),
      err:find("passphrase") and "set the passphrase in the config file (passphrase = ...), or WECHATPAY_PASSPHRASE "
        .. "when configured by variables" or KEY_FIX)
    return nil
  end
  if loaded:kind() ~= "private" then
    report.add("fail", "private key", ("%s holds %s, not a private key"):format(where(source),
      loaded:certificate() and "a certificate" or "a public key"),
      "private_key is apiclient_key.pem; apiclient_cert.pem goes in merchant_cert")
    return nil
  end
  local bits = loaded:bits()
  if bits < key.MIN_RSA_BITS then
    report.add("fail", "private key", ("RSA-%d (%s): a weak key; WeChat Pay requires %d bits")
      :format(bits, where(source), key.MIN_RSA_BITS),
      "apply for a new merchant API certificate (RSA-2048) and use its apiclient_key.pem")
    return nil
  end
  report.add("ok", "private key", ("RSA-%d, %s"):format(bits, where(source)))
  return loaded
end

local function check_merchant_cert(report, profile, now)
  local source = profile.merchant_cert
  if source == nil then
    report.add("skip", "merchant cert", "not configured (merchant_cert / WECHATPAY_MERCHANT_CERT): "
      .. "the serial and the key pair are not checked here")
    return nil
  end
  local loaded, err = key.load(source, nil, "public")
  local info = loaded and loaded:certificate()
  if not info then
    report.add("fail", "merchant cert", ("%s %s"):format(where(source),
      loaded and "is a key, not a certificate" or ("cannot be loaded: " .. tostring(err))),
      "merchant_cert is apiclient_cert.pem, downloaded with the API certificate")
    return nil
  end
  local days = expiry(info, now)
  if loaded:bits() < key.MIN_RSA_BITS then
    report.add("fail", "merchant cert", ("RSA-%d: a weak key; WeChat Pay requires %d bits"):format(loaded:bits(), key.MIN_RSA_BITS),
      "apply for a new merchant API certificate")
  elseif days < 0 then
    report.add("fail", "merchant cert", ("serial %s expired on %s"):format(info.serial, day(info.not_after)),
      "renew the merchant API certificate (商户平台 → 账户中心 → API安全) and configure the new key, serial and certificate")
  elseif days < WARN_DAYS then
    report.add("warn", "merchant cert", ("serial %s expires on %s, in %d days"):format(info.serial, day(info.not_after), days),
      "renew the merchant API certificate before it expires")
  else
    report.add("ok", "merchant cert", ("serial %s, valid until %s, %s"):format(info.serial, day(info.not_after), where(source)))
  end
  return loaded, info
end

local function check_serial(report, options, profile, cert_info)
  local serial = options.serial
  if serial == nil then
    report.add("fail", "serial", "not configured",
      "set serial (WECHATPAY_SERIAL) to the serial of apiclient_cert.pem: openssl x509 -noout -serial -in apiclient_cert.pem"
      .. " (or configure merchant_cert, and doctor reads it)")
    return nil
  end
  local normalized = type(serial) == "string" and key.normalize_serial(serial)
  if not normalized or not normalized:match("^%x+$") or #normalized > 64 then
    report.add("fail", "serial", "is not a hex certificate serial",
      "set serial to the serial of apiclient_cert.pem: openssl x509 -noout -serial -in apiclient_cert.pem")
    return nil
  end
  if profile.serial_from_cert then
    report.add("ok", "serial", normalized .. " (read from the merchant certificate)")
  elseif not cert_info then
    report.add("ok", "serial", normalized .. " (not compared with a certificate: none configured)")
  elseif cert_info.serial ~= normalized then
    report.add("fail", "serial", ("%s is configured, but the merchant certificate's serial is %s")
      :format(normalized, cert_info.serial),
      ("set serial = \"%s\" (WECHATPAY_SERIAL), or configure the certificate that goes with the key"):format(cert_info.serial))
    return normalized
  else
    report.add("ok", "serial", normalized .. " (the merchant certificate's)")
  end
  return normalized
end

local function check_key_pair(report, private_key, cert, cert_info)
  if not private_key or not cert then
    report.add("skip", "key pair", not cert and "no merchant certificate to compare the private key with"
      or "no usable private key")
    return
  end
  if rsa.verify(cert, PROBE, rsa.sign(private_key, PROBE)) then
    report.add("ok", "key pair", "the private key is the key of the merchant certificate")
  else
    report.add("fail", "key pair", ("the private key does not match the merchant certificate (serial %s)"):format(cert_info.serial),
      "configure the apiclient_key.pem and apiclient_cert.pem of the same API certificate")
  end
end

local function check_apiv3_key(report, profile)
  if profile.apiv3_key_error then
    report.add("fail", "APIv3 key", profile.apiv3_key_error, "name a readable file in WECHATPAY_APIV3_KEY_FILE / apiv3_key_file")
    return nil
  end
  local value = profile.apiv3_key
  if value == nil then
    report.add("skip", "APIv3 key", "not configured: needed to decrypt callbacks and download platform certificates")
    return nil
  end
  if type(value) ~= "string" then
    report.add("fail", "APIv3 key", "must be a string", "apiv3_key is the 32-character APIv3 key")
    return nil
  end
  if #value ~= 32 then
    report.add("fail", "APIv3 key", ("%d bytes (from %s): the APIv3 key is 32 characters"):format(#value, profile.apiv3_key_from),
      "copy the APIv3 key again from 商户平台 → 账户中心 → API安全 (not the APIv2 key); "
      .. "a trailing newline in its file is ignored, any other extra character is not")
    return nil
  end
  report.add("ok", "APIv3 key", ("32 bytes (from %s)"):format(profile.apiv3_key_from))
  return value
end

-- The APIv2 key, when configured: wechatpay.new refuses a bad one, and
-- the host checks would otherwise fail on it, naming the host.
local function check_apiv2_key(report, options)
  local value = options.apiv2_key
  if value == nil then
    report.add("skip", "APIv2 key", "not configured: needed for APIv2 calls (client.v2) and their callbacks only")
    return nil
  end
  local fix = "copy the APIv2 key again from 商户平台 → 账户中心 → API安全 (API密钥, not the APIv3 key)"
  if type(value) ~= "string" then
    report.add("fail", "APIv2 key", "must be a string", fix)
  elseif #value ~= 32 or value:find("[^%w]") then
    report.add("fail", "APIv2 key", ("%d bytes%s: the APIv2 key is 32 letters and digits"):format(#value,
      value:find("[^%w]") and ", holding other characters" or ""), fix)
  elseif value == options.apiv3_key then
    report.add("fail", "APIv2 key", "is the APIv3 key: they are two different keys", fix)
  else
    report.add("ok", "APIv2 key", "32 characters")
    return value
  end
  return nil
end

-- What to do about platform certificates the configuration lacks or holds
-- expired: with an APIv3 key the client downloads them itself, so a key
-- that cannot is the thing to check, not one to add.
local function certs_fix(has_apiv3_key)
  return "download the current ones: wechatpay certs --config FILE --output DIR, then cert_dir = DIR "
    .. (has_apiv3_key and "(the client downloads them itself with the APIv3 key: if it cannot, check that key)"
      or "(or set apiv3_key, and the client downloads them)")
end

-- One platform key: id, source -> loaded key (usable) | nil
local function check_platform_key(report, label, id, source, merchant, now, has_apiv3_key)
  local topic = "platform key"
  local loaded, err
  if type(source) == "string" or key.is_key(source) then
    loaded, err = key.load(source, nil, "public")
  else
    err = "not a key source (file://path or PEM text)"
  end
  if not loaded then
    report.add("fail", topic, ("%s cannot be loaded: %s"):format(label, tostring(err)),
      "give WeChat Pay's public key (pub_key.pem) or a platform certificate, as file:///path")
    return nil
  end
  if loaded:kind() == "private" then
    report.add("fail", topic, label .. " holds a private key",
      "certs holds WeChat Pay's keys only; the merchant private key goes in private_key")
    return nil
  end
  local info = loaded:certificate()
  local is_merchant = (info and (info.serial == merchant.serial or info.serial == merchant.cert_serial))
    or key.normalize_serial(id) == merchant.serial
    or (merchant.private_key and rsa.verify(loaded, PROBE, rsa.sign(merchant.private_key, PROBE)))
  if is_merchant then
    report.add("fail", topic, label .. " is the merchant's own API certificate or key, not WeChat Pay's",
      "remove it from certs: certs holds WeChat Pay's public key (PUB_KEY_ID_...) or platform certificates; "
      .. "apiclient_cert.pem goes in merchant_cert")
    return nil
  end
  if loaded:bits() < key.MIN_RSA_BITS then
    report.add("fail", topic, ("%s is RSA-%d: WeChat Pay's keys are 2048 bits"):format(label, loaded:bits()),
      "give the key the merchant platform shows")
    return nil
  end
  if not info then
    if not id:find("^PUB_KEY_ID_") then
      report.add("warn", topic, label .. " is a public key under a certificate serial",
        "a WeChat Pay public key is named by its PUB_KEY_ID_...; a platform certificate is given as the certificate")
    else
      report.add("ok", topic, label .. " WeChat Pay public key, no expiry")
    end
    return loaded
  end
  if info.serial ~= key.normalize_serial(id) then
    report.add("fail", topic, ("%s is the certificate with serial %s"):format(label, info.serial),
      ("name it by its own serial: [\"%s\"]"):format(info.serial))
    return nil
  end
  local days = expiry(info, now)
  if days < 0 and label:find("^cert_dir ") then
    -- wechatpay certs keeps a rotated-out certificate: harmless beside the new one
    report.add("warn", topic, ("%s platform certificate expired on %s: WeChat Pay signs with it no more")
      :format(label, day(info.not_after)), "delete its file wechatpay_" .. info.serial .. ".pem from cert_dir")
    return nil
  elseif days < 0 then
    report.add("fail", topic, ("%s platform certificate expired on %s"):format(label, day(info.not_after)),
      certs_fix(has_apiv3_key))
    return nil
  elseif days < WARN_DAYS then
    report.add("warn", topic, ("%s platform certificate expires on %s, in %d days"):format(label, day(info.not_after), days),
      certs_fix(has_apiv3_key))
  else
    report.add("ok", topic, ("%s platform certificate, valid until %s"):format(label, day(info.not_after)))
  end
  return loaded
end

-- -> the usable entries as a certs table, and the cert_dir if it is usable
local function check_platform_keys(report, options, merchant, has_apiv3_key, now)
  local usable, count = {}, 0
  local certs = options.certs
  if certs ~= nil and type(certs) ~= "table" then
    report.add("fail", "platform keys", "certs must be a table of id -> key", "certs = { [\"PUB_KEY_ID_...\"] = \"file:///path/pub_key.pem\" }")
    certs = nil
  end
  local ids = {}
  for id in pairs(certs or {}) do ids[#ids + 1] = id end
  table.sort(ids, function(a, b) return tostring(a) < tostring(b) end)
  for _, id in ipairs(ids) do
    count = count + 1
    local label = type(id) == "string" and #id <= 64 and not id:find("[%c\"]") and ("certs[\"" .. id .. "\"]")
      or "a certs entry"
    if type(id) ~= "string" then
      report.add("fail", "platform key", "certs keys must be strings (PUB_KEY_ID_... or a certificate serial)")
    else
      local loaded = check_platform_key(report, label, id, certs[id], merchant, now, has_apiv3_key)
      if loaded then usable[id] = loaded end
    end
  end
  local cert_dir = options.cert_dir
  if cert_dir ~= nil then
    local listed, err = pcall(function() return require("wechatpay.certificates").dir_store(cert_dir):load() end)
    local probe = io.open(tostring(cert_dir) .. "/.", "rb")
    if probe then probe:close() end
    if not listed or type(err) ~= "table" or not probe then
      report.add("fail", "platform keys", ("cert_dir %s is not a readable directory"):format(tostring(cert_dir)),
        "create it and fill it with wechatpay certs --output DIR")
      cert_dir = nil
    else
      local in_dir, in_service = 0, 0
      for serial, pem in pairs(err) do
        count, in_dir = count + 1, in_dir + 1
        if check_platform_key(report, ("cert_dir %s"):format(serial), serial, pem, merchant, now, has_apiv3_key) then
          in_service = in_service + 1
        end
      end
      -- expired ones are warnings beside a key in service; alone they verify nothing
      if in_dir > 0 and in_service == 0 and next(usable) == nil then
        report.add("fail", "platform keys", ("cert_dir %s holds no certificate in service"):format(tostring(cert_dir)),
          "wechatpay certs --output " .. tostring(cert_dir))
      end
    end
  end
  if count == 0 then
    if has_apiv3_key then
      report.add("ok", "platform keys", "none configured: the client downloads the platform certificates with the APIv3 key")
    else
      report.add("fail", "platform keys", "none configured, and no APIv3 key to download them: answers cannot be verified",
        "certs = { [\"PUB_KEY_ID_...\"] = \"file:///path/pub_key.pem\" } (WECHATPAY_PUBLIC_KEY_ID + "
        .. "WECHATPAY_PUBLIC_KEY), or platform certificates, or the APIv3 key")
    end
  end
  return usable, cert_dir
end

local function check_ca(report, options)
  if options.capath ~= nil then
    local f = io.open(tostring(options.capath) .. "/.", "rb")
    if f then f:close() end
    if not f then
      report.add("fail", "CA bundle", ("capath %s is not a readable directory"):format(tostring(options.capath)),
        "point capath at a directory of hashed CA certificates, or remove it")
      return false
    end
  end
  local path = options.cafile
  if path == nil then
    report.add("ok", "CA bundle", "the system's (cafile not set)")
    return true
  end
  local f, err = io.open(tostring(path), "rb")
  local text, rerr
  if f then
    text, rerr = f:read("*a")
    f:close()
  end
  local fix = "point cafile (WECHATPAY_CAFILE) at a readable PEM bundle, or remove it to use the system's"
  if not text then
    report.add("fail", "CA bundle", ("cafile %s cannot be read: %s"):format(tostring(path), tostring(err or rerr)), fix)
    return false
  end
  local n = 0
  for _ in text:gmatch("%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-") do n = n + 1 end
  if n == 0 then
    report.add("fail", "CA bundle", ("cafile %s holds no PEM certificate"):format(tostring(path)), fix)
    return false
  end
  -- the bundle must load: each of its certificates is read as one
  local loaded, unreadable = 0, 0
  for pem in text:gmatch("%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-.-%-%-%-%-%-END CERTIFICATE%-%-%-%-%-") do
    if key.load(pem) then loaded = loaded + 1 else unreadable = unreadable + 1 end
  end
  if loaded == 0 and unreadable > 0 then
    report.add("fail", "CA bundle", ("cafile %s: none of its %d certificates loads"):format(tostring(path), n), fix)
    return false
  end
  report.add("ok", "CA bundle", ("cafile %s, %d certificate%s"):format(tostring(path), n, n == 1 and "" or "s"))
  return true
end

-- ---- network checks -------------------------------------------------------------------

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8, Sep = 9, Oct = 10,
                 Nov = 11, Dec = 12 }

-- Unix seconds of an HTTP Date ("Fri, 27 Nov 2026 14:13:25 GMT"), by
-- arithmetic: os.time would read it as local time.
local function http_date(value)
  local d, mon, y, h, m, s = tostring(value):match("^%a+, (%d+) (%a+) (%d+) (%d+):(%d+):(%d+) GMT$")
  local month = MONTHS[mon or ""]
  if not month then return nil end
  y = tonumber(y)
  if month <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (month + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + tonumber(d) - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(h) * 3600 + tonumber(m) * 60 + tonumber(s)
end

local function check_clock(report, response, before, after)
  local server = response and http_date(response:header("Date"))
  if not server then
    report.add("skip", "clock", "the answer has no Date header to compare the clock with")
    return
  end
  local offset = server - (before + after) / 2
  local size = math.abs(offset)
  local words = ("the local clock is %d s %s WeChat Pay's"):format(math.floor(size + 0.5),
    offset > 0 and "behind" or "ahead of")
  local fix = "synchronise the clock (timedatectl set-ntp true, or chrony / ntpd)"
  if size > CLOCK_WINDOW then
    report.add("fail", "clock", words .. ": WeChat Pay refuses signatures more than 5 minutes off", fix)
    return true
  elseif size > CLOCK_WARN then
    report.add("warn", "clock", words .. " (WeChat Pay allows 5 minutes)", fix)
  else
    report.add("ok", "clock", ("within %d s of WeChat Pay's"):format(CLOCK_WARN))
  end
end

local PUBLIC_KEY_ONLY = "无可用的平台证书"

-- WeChat Pay's message on one line, whatever it holds
local function one_line(text)
  return (tostring(text):gsub("%c", " "))
end

local function check_signature(report, res, err, clock_off)
  local response = res or err.response
  local status = response.status
  if res then
    report.add("ok", "signature", ("WeChat Pay accepted the signed GET /v3/certificates (%d)"):format(status))
    return "accepted"
  end
  if err.kind == "verify" then
    report.add("ok", "signature", ("WeChat Pay accepted the signed GET /v3/certificates (%d)"):format(status))
    return "accepted"
  end
  if require("wechatpay.certificates").is_public_key_only(err) then
    report.add("ok", "signature", "WeChat Pay accepted the signed GET /v3/certificates (404 " .. PUBLIC_KEY_ONLY
      .. ": this merchant has only a WeChat Pay public key)")
    return "public key only"
  end
  if status == 401 then
    report.add("fail", "signature", ("WeChat Pay refused the signature: %d %s: %s"):format(status,
      one_line(err.code), one_line(err.message)),
      -- a timestamp out of the window reads as a bad signature
      clock_off and "the local clock is off (see clock): synchronise it, then run doctor again"
      or "mchid, serial and private_key must belong together: the serial of apiclient_cert.pem and its "
      .. "apiclient_key.pem, of merchant mchid (configure merchant_cert and run doctor again to compare them)")
  else
    report.add("fail", "signature", ("GET /v3/certificates: %d %s: %s"):format(status, one_line(err.code),
      one_line(err.message)), status >= 500 and "WeChat Pay failed: try again later" or "see WeChat Pay's message")
  end
  return nil
end

local function check_answer(report, res, err, has_apiv3_key)
  if res then
    report.add("ok", "answer", ("the answer's signature verifies (Wechatpay-Serial %s)")
      :format(tostring(res:header("Wechatpay-Serial"))))
    return
  end
  if err.unknown_serial then
    -- WeChat Pay signs the download with a platform certificate even for a
    -- merchant whose other answers are signed with its public key
    report.add("warn", "answer", ("the certificate download is signed by %s, which the configuration does not hold: "
      .. "answers and callbacks signed with it would not verify"):format(tostring(err.unknown_serial)),
      "if this merchant still uses platform certificates: " .. certs_fix(has_apiv3_key))
  else
    report.add("fail", "answer", "the answer does not verify: " .. tostring(err.message),
      "the certs entries must be WeChat Pay's keys for this merchant: download the public key or certificates again")
  end
end

local function check_download(report, client)
  local list, err = client:certificates()
  if list and #list > 0 then
    report.add("ok", "APIv3 decrypt", ("the APIv3 key opens the %d downloaded platform certificate%s")
      :format(#list, #list == 1 and "" or "s"))
  elseif list then
    report.add("skip", "APIv3 decrypt", "no platform certificates to open (a public-key-only merchant)")
  elseif err.kind == "decrypt" then
    report.add("fail", "APIv3 decrypt", "the APIv3 key does not open the downloaded certificates: it is not this merchant's",
      "set the APIv3 key of 商户平台 → 账户中心 → API安全 (not the APIv2 key)")
  else
    report.add("fail", "APIv3 decrypt", "the certificate download failed: " .. tostring(err), nil)
  end
end

local function network_fix(message)
  local lower = tostring(message):lower()
  if lower:find("ssl") or lower:find("tls") or lower:find("certificate problem") then
    return "the TLS certificate did not verify: check cafile (WECHATPAY_CAFILE) and the host name"
  end
  return "check DNS, the firewall and any proxy towards this host on port 443 "
    .. "(WeChat Pay: api.mch.weixin.qq.com, backup api2.mch.weixin.qq.com)"
end

local function check_network(report, profile, parts, timeout)
  if not parts then return end
  local wechatpay = require("wechatpay")
  local primary
  for _, host in ipairs(profile.base_urls) do
    local options = config.client_options(profile, {
      base_url = host, mchid = parts.mchid, serial = parts.serial, private_key = parts.private_key,
      passphrase = false, certs = parts.certs, apiv3_key = parts.apiv3_key, timeout = timeout, connect_timeout = math.min(timeout, 5), retry = false,
    })
    options.passphrase, options.cert_dir, options.cafile = nil, parts.cert_dir, parts.cafile
    -- the APIv2 options have their own checks above: a bad one must not
    -- read as a failing host (merchant_cert is a tool option, never here)
    options.apiv2_key, options.merchant_cert = nil, nil
    local ok, client = pcall(wechatpay.new, options)
    if not ok then
      report.add("fail", "host", ("%s: %s"):format(tostring(host), config.message(client)),
        "base_url is https://host[:port]/ (WECHATPAY_BASE_URL)")
    else
      local before = os.time()
      local res, err = client:request("GET", "/v3/certificates")
      local after = os.time()
      local response = res or err.response
      if not response then
        report.add("fail", "host", ("%s: no answer: %s"):format(host, tostring(err.message)), network_fix(err.message))
        client:close()
      else
        report.add("ok", "host", ("%s answers (HTTP %d)"):format(host, response.status))
        if primary then client:close() else primary = { client = client, res = res, err = err, before = before, after = after } end
      end
    end
  end
  if not primary then
    for _, topic in ipairs{ "clock", "signature", "answer" } do
      report.add("skip", topic, "no host answered")
    end
    return
  end
  local res, err = primary.res, primary.err
  local clock_off = check_clock(report, res or err.response, primary.before, primary.after)
  local signature = check_signature(report, res, err, clock_off)
  if signature == "accepted" then
    check_answer(report, res, err, parts.apiv3_key ~= nil)
    if parts.apiv3_key then
      check_download(report, primary.client)
    else
      report.add("skip", "APIv3 decrypt", "no usable APIv3 key")
    end
  elseif signature == "public key only" then
    local has_public_key = false
    for id in pairs(parts.certs or {}) do
      if id:find("^PUB_KEY_ID_") then has_public_key = true end
    end
    if has_public_key then
      report.add("skip", "answer", "a 404 is not signed: answers of other calls are verified with the public key")
    else
      -- every answer and callback will be signed with a key the client lacks
      report.add("fail", "answer", "this merchant has only a WeChat Pay public key, and the configuration holds none: "
        .. "no answer or callback can be verified",
        "certs = { [\"PUB_KEY_ID_...\"] = \"file:///path/pub_key.pem\" } (WECHATPAY_PUBLIC_KEY_ID + "
        .. "WECHATPAY_PUBLIC_KEY), from 商户平台 → 账户中心 → API安全 → 微信支付公钥")
    end
    report.add("skip", "APIv3 decrypt", "no platform certificates to open (a public-key-only merchant)")
  else
    report.add("skip", "answer", "the request was refused")
  end
  primary.client:close()
end

-- ---- main -------------------------------------------------------------------------------

-- --mock: the built-in mock WeChat Pay and the configuration that fits it,
-- for demos; -> profile, nil, server | nil, message
local function mock_profile()
  local ok, mock = pcall(require, "wechatpay.mock")
  if not ok then return nil, "--mock needs the mock's dependencies: " .. tostring(mock) end
  local server, err = mock.start{ rate_limit = false }
  if not server then return nil, "cannot start the mock WeChat Pay: " .. tostring(err) end
  local profile = config.profile({
    mchid = server.mchid, serial = server.merchant_serial, private_key = "file://" .. server.merchant_key_file,
    merchant_cert = "file://" .. server.merchant_cert_file,
    certs = { [server.platform_key_id] = "file://" .. server.platform_public_key_file },
    base_url = server.base_url, cafile = server.cafile, apiv3_key = server.apiv3_key,
  }, "the built-in mock WeChat Pay at " .. server.base_url, function() return nil end)
  return profile, nil, server
end

--- main(argv) -> exit status; argv[1] is "doctor".
function doctor.main(argv)
  local opts, positional = args.parse(argv, SPEC, 2)
  if not opts then
    io.stderr:write("wechatpay doctor: ", positional, " (--help for usage)\n")
    return exit.USAGE
  end
  if opts.help then
    output.write(doctor.USAGE)
    return exit.OK
  end
  if #positional > 0 then
    io.stderr:write("wechatpay doctor: takes no arguments but options (--help for usage)\n")
    return exit.USAGE
  end
  local timeout = 10
  if opts.timeout then
    local terr
    timeout, terr = args.seconds(opts.timeout, 600)
    if not timeout then
      io.stderr:write("wechatpay doctor: ", terr, "\n")
      return exit.USAGE
    end
  end
  local report = new_report(output.colours(output.is_terminal(1)))
  local profile, err, server
  if opts.mock then
    if opts.config then
      io.stderr:write("wechatpay doctor: give --config or --mock, not both\n")
      return exit.USAGE
    end
    profile, err, server = mock_profile()
  else
    profile, err = config.load(opts.config)
  end
  if not profile then
    report.add("fail", "configuration", err, "see `wechatpay --help` for the config file and the WECHATPAY_* variables")
    return exit.CHECK_FAILED
  end
  report.add("ok", "configuration", profile.source)
  local options = profile.options
  local now = os.time()

  local mchid = check_mchid(report, options)
  local private_key = check_private_key(report, options)
  local cert, cert_info = check_merchant_cert(report, profile, now)
  local serial = check_serial(report, options, profile, cert_info)
  check_key_pair(report, private_key, cert, cert_info)
  local apiv3_key = check_apiv3_key(report, profile)
  check_apiv2_key(report, { apiv2_key = options.apiv2_key, apiv3_key = apiv3_key })
  local merchant = { serial = serial, cert_serial = cert_info and cert_info.serial, private_key = private_key }
  local certs, cert_dir = check_platform_keys(report, options, merchant, apiv3_key ~= nil, now)
  local ca_ok = check_ca(report, options)

  local missing
  if not (mchid and private_key and serial) then missing = "mchid, serial and a usable private key are needed to sign"
  elseif not ca_ok then missing = "the CA bundle does not load"
  elseif next(certs) == nil and not apiv3_key and not cert_dir then missing = "no usable WeChat Pay key to verify answers with"
  end
  if missing then
    for _, topic in ipairs{ "host", "clock", "signature", "answer" } do report.add("skip", topic, missing) end
  else
    check_network(report, profile, { mchid = mchid, serial = serial, private_key = private_key, certs = certs,
      cert_dir = cert_dir, apiv3_key = apiv3_key, cafile = options.cafile }, timeout)
  end

  if server then server:stop() end
  output.write(("%d failed, %d warning%s\n"):format(report.failed, report.warned, report.warned == 1 and "" or "s"))
  return report.failed > 0 and exit.CHECK_FAILED or exit.OK
end

return doctor
