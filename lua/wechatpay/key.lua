--- Keys: parsed once, reused for every call.
--
-- A source is one of:
--   a key object (returned as it is),
--   "file:///path/to/key.pem" (PEM or DER in the file),
--   PEM text (PKCS#8, PKCS#1, encrypted PKCS#8, SPKI, "RSA PUBLIC KEY", X.509),
--   bare base64 DER in wechatpay-php's forms: "private.pkcs8://...",
--   "private.pkcs1://...", "public.pkcs1://...", "public.spki://...".
--
--   local key = require("wechatpay.key")
--   local k, err = key.load("file:///etc/wechatpay/apiclient_key.pem")
--   k:kind() --> "private"; k:bits() --> 2048; k:certificate() --> nil or { serial, not_before, not_after }
local core = require("wechatpay.core")

local key = {}

local DER_FORMS = {
  ["private.pkcs8"] = true, ["private.pkcs1"] = true,
  ["public.pkcs1"] = true, ["public.spki"] = true,
}

local KEY_CLASS = "wechatpay.key"

--- true when `value` is a loaded key object.
function key.is_key(value)
  local mt = type(value) == "userdata" and getmetatable(value)
  return mt and mt.__name == KEY_CLASS or false
end

--- The most a key file may hold: a PEM key or certificate is a few KB, and
-- a path such as /dev/zero must not be read without end.
key.MAX_FILE_BYTES = 64 * 1024

--- WeChat Pay signs with RSA-2048 and accepts no shorter merchant key.
key.MIN_RSA_BITS = 2048

-- A path as messages show it: key text given where a path belongs
-- (file:// put before a pasted key) is described, never echoed.
local function shown(path)
  if #path > 256 or path:find("[\r\n]") or path:find("BEGIN", 1, true) then
    return ("(%d bytes that look like key text, not a path)"):format(#path)
  end
  return path
end

local function read_file(path)
  -- core.read_file opens without blocking and refuses a directory, FIFO or
  -- socket before reading; one byte over the limit is enough to refuse
  local data, reason = core.read_file(path, key.MAX_FILE_BYTES + 1)
  if not data then
    if reason == "a directory" or reason == "a FIFO" or reason == "a socket" then
      return nil, ("key file %s is %s, not a regular file"):format(shown(path), reason)
    end
    return nil, "cannot open key file " .. shown(path) .. ": " .. reason
  end
  if #data > key.MAX_FILE_BYTES then
    return nil, ("key file %s is larger than %d bytes (64 KB), more than any key or certificate holds")
      :format(shown(path), key.MAX_FILE_BYTES)
  end
  if data == "" then
    return nil, "key file " .. shown(path) .. " is empty"
  end
  return data
end

local function describe(source)
  -- never echo key material: say only what kind of text it was
  if source == "" then return "an empty string" end
  return ("%d bytes that are neither PEM, a file:// path nor a base64 DER form"):format(#source)
end

-- A PEM bundle of the private key and its certificate (as a .p12 converts)
-- is read as its PRIVATE KEY block where a private key is wanted, as its
-- CERTIFICATE block where a public one is; otherwise the core reads the
-- first block of a text.
local PRIVATE_BLOCK = "%-%-%-%-%-BEGIN ([%u ]*PRIVATE KEY)%-%-%-%-%-.-%-%-%-%-%-END %1%-%-%-%-%-"
local CERTIFICATE_BLOCK = "%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-.-%-%-%-%-%-END CERTIFICATE%-%-%-%-%-"
local function part(pem, want)
  if not (pem:find("CERTIFICATE-----", 1, true) and pem:find("PRIVATE KEY-----", 1, true)) then return pem end
  local s, e = pem:find(want == "private" and PRIVATE_BLOCK or CERTIFICATE_BLOCK)
  return s and pem:sub(s, e) or pem
end

local function from_pem(pem, passphrase, want)
  if want then pem = part(pem, want) end
  return core.key_from_pem(pem, passphrase)
end

--- Loads a key.  Returns the key object, or nil and a message naming the
-- problem (never any of the key's bytes).  want = "private" | "public": from
-- a PEM bundle of a key and its certificate, the key or the certificate.
function key.load(source, passphrase, want)
  if key.is_key(source) then return source end
  if type(source) ~= "string" then
    error(("bad key source: expected a key object or a string, got %s"):format(type(source)), 2)
  end
  if passphrase ~= nil and type(passphrase) ~= "string" then
    error("bad passphrase: expected a string", 2)
  end
  local path = source:match("^file://(.+)$")
  if path then
    local data, err = read_file(path)
    if not data then return nil, err end
    local loaded, perr
    if data:find("-----BEGIN ", 1, true) then
      loaded, perr = from_pem(data, passphrase, want)
    else
      loaded, perr = core.key_from_der(data, "auto")
      if not loaded and passphrase ~= nil then
        -- a passphrase given for a DER file: an encrypted DER key, which is not read
        return nil, ("%s is DER, which is read unencrypted only: convert an encrypted key to PEM "
          .. "(openssl pkcs8 -inform DER -in key.der -out key.pem keeps it encrypted)"):format(shown(path))
      end
    end
    if not loaded then return nil, perr .. " (in " .. shown(path) .. ")" end
    return loaded
  end
  local form, b64 = source:match("^(%a+%.%w+)://(.*)$")
  if form and DER_FORMS[form] then
    local der = core.base64_decode((b64:gsub("%s", "")))
    if not der then return nil, form .. ":// key is not valid base64" end
    return core.key_from_der(der, form)
  end
  if source:find("-----BEGIN ", 1, true) then
    return from_pem(source, passphrase, want)
  end
  return nil, "not a key: " .. describe(source)
end

-- Refuses what key.private and key.public must not accept; the key is
-- closed (its material wiped) unless the caller handed in the object.
local function refuse(source, loaded, message)
  if loaded ~= source then loaded:close() end
  return nil, message
end

local function too_short(loaded)
  local bits = loaded:bits()
  if bits < key.MIN_RSA_BITS then
    return ("RSA key of %d bits: WeChat Pay requires %d"):format(bits, key.MIN_RSA_BITS)
  end
end

--- Loads a private key; a public key or certificate is refused, and so is
-- an RSA key shorter than 2048 bits.
function key.private(source, passphrase)
  local loaded, err = key.load(source, passphrase, "private")
  if not loaded then return nil, err end
  if loaded:kind() ~= "private" then
    return refuse(source, loaded, (loaded:certificate() and "a certificate" or "a public key")
      .. " was given where the merchant private key is needed")
  end
  local short = too_short(loaded)
  if short then return refuse(source, loaded, short) end
  return loaded
end

--- Loads a public key or certificate; a private key is refused, as it
-- belongs to the merchant and never in a map of WeChat Pay keys, and so is
-- an RSA key shorter than 2048 bits.
function key.public(source)
  local loaded, err = key.load(source, nil, "public")
  if not loaded then return nil, err end
  if loaded:kind() ~= "public" then
    return refuse(source, loaded, "a private key was given where a WeChat Pay public key or certificate belongs")
  end
  local short = too_short(loaded)
  if short then return refuse(source, loaded, short) end
  return loaded
end

--- Trimmed upper-case serial, as `openssl x509 -serial` may add "serial=" and a newline.
function key.normalize_serial(serial)
  return (tostring(serial):gsub("^%s*serial=", ""):gsub("%s", ""):upper())
end

return key
