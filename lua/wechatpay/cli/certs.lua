--- `wechatpay certs` (and bin/wechatpay-certs): download the WeChat Pay
-- platform certificates into a directory, for cron jobs and cert_dir.
local args = require("wechatpay.cli.args")
local config = require("wechatpay.cli.config")
local exit = require("wechatpay.cli.exit")

local certs = {}

certs.USAGE = [[
usage: wechatpay certs --output DIR [--config FILE]
                       [--mchid MCHID --serial SERIAL --private-key FILE]
                       [--apiv3-key-file FILE] [--base-url URL] [--cafile FILE] [--timeout SECONDS]
       (bin/wechatpay-certs takes the same options)

Downloads the WeChat Pay platform certificates (GET /v3/certificates),
decrypts them with the APIv3 key, verifies the response with the certificate
that signed it, and writes each as DIR/wechatpay_<SERIAL>.pem (a temporary
file renamed into place, so a reader never sees half a file).  Prints each
serial with its validity.  Like wechatpay-php's CertificateDownloader; run it
from cron and give the directory to wechatpay.new{ cert_dir = DIR }.

  --config FILE          the Lua config file of `wechatpay call` and `doctor`
                         (mchid, serial, private_key, apiv3_key or apiv3_key_file,
                         base_url, cafile); without it WECHATPAY_CONFIG, else the
                         WECHATPAY_* variables (`wechatpay --help`); flags win
  --mchid MCHID          the merchant id
  --serial SERIAL        the merchant API certificate serial
  --private-key FILE     the merchant API private key (apiclient_key.pem)
  --apiv3-key-file FILE  a file holding the 32-character APIv3 key; without it,
                         the configuration's (apiv3_key_file, WECHATPAY_APIV3_KEY_FILE,
                         WECHATPAY_APIV3_KEY)
                         (never give the key itself as an argument: ps shows it)
  --output DIR           where the certificates go (must exist)
  --base-url URL         default https://api.mch.weixin.qq.com/
  --cafile FILE          CA bundle for the TLS connection
  --timeout SECONDS      default 30

Exit status:
  0  certificates written
  2  usage or configuration (a flag, the key file, the APIv3 key)
  3  no answer (network, timeout)
  4  WeChat Pay refused the request (status, code and message printed)
  5  this merchant has no platform certificates: it verifies with its WeChat
     Pay public key (PUB_KEY_ID_...), which the merchant platform gives
  6  the download did not decrypt or verify (check the APIv3 key)
  7  the output directory cannot be written
]]

local SPEC = { mchid = "value", serial = "value", ["private-key"] = "value", ["apiv3-key-file"] = "value",
               output = "value", ["base-url"] = "value", cafile = "value", timeout = "value",
               config = "value", help = "flag" }

-- The options as wechatpay.new takes them, or nil, message.
local function client_options(opts)
  -- --config, else WECHATPAY_CONFIG, else the WECHATPAY_* variables; the flags win
  local profile, err = config.load(opts.config)
  if not profile then return nil, err end
  local apiv3_key, key_error = profile.apiv3_key, profile.apiv3_key_error
  local options = config.client_options(profile)
  if opts.mchid then options.mchid = opts.mchid end
  if opts.serial then options.serial = opts.serial end
  if opts["private-key"] then options.private_key = "file://" .. opts["private-key"] end
  if opts["base-url"] then options.base_url = opts["base-url"] end
  if opts.cafile then options.cafile = opts.cafile end
  for _, required in ipairs{ "mchid", "serial", "private_key" } do
    if options[required] == nil then
      return nil, "--" .. required:gsub("_", "-") .. " is required (or --config, or WECHATPAY_*; --help for usage)"
    end
  end
  if opts["apiv3-key-file"] then
    local f, err = io.open(opts["apiv3-key-file"], "rb")
    if not f then return nil, "cannot read the APIv3 key file: " .. tostring(err) end
    apiv3_key = (f:read("*a") or ""):gsub("%s+$", "")
    f:close()
  elseif key_error then
    return nil, key_error
  elseif apiv3_key == nil then
    return nil, "the APIv3 key is needed: --apiv3-key-file FILE or WECHATPAY_APIV3_KEY"
  end
  if #apiv3_key ~= 32 then return nil, ("the APIv3 key must be 32 characters, got %d"):format(#apiv3_key) end
  options.apiv3_key = apiv3_key
  options.certs = {}
  options.cert_dir, options.cert_store = nil, nil
  options.timeout = opts.timeout and tonumber(opts.timeout) or options.timeout
  if opts.timeout and not options.timeout then return nil, "--timeout must be a number of seconds" end
  options.retry = { idempotent = true }
  return options
end

local function fail(code, message)
  io.stderr:write("wechatpay-certs: ", message, "\n")
  return code
end

--- main(argv) -> exit status; argv[1] is "certs" (the subcommand's name).
function certs.main(argv)
  local opts, positional = args.parse(argv, SPEC, 2)
  if not opts then return fail(2, positional .. " (--help for usage)") end
  if opts.help then
    io.stdout:write(certs.USAGE)
    return exit.OK
  end
  if #positional > 0 then return fail(2, "unexpected argument (--help for usage)") end
  if not opts.output then return fail(2, "--output is required (--help for usage)") end
  local options, oerr = client_options(opts)
  if not options then return fail(2, oerr) end

  local wechatpay = require("wechatpay")
  local certificates = require("wechatpay.certificates")
  local ok, client = pcall(wechatpay.new, options)
  if not ok then return fail(2, config.message(client)) end

  local list, err = client:certificates()
  client:close()
  if not list then
    local codes = { network = 3, timeout = 3, http = 4, verify = 6, decrypt = 6, malformed = 6 }
    return fail(codes[err.kind] or 1, tostring(err))
  end
  if #list == 0 then return fail(5, err or "no platform certificates were delivered") end

  local store = certificates.dir_store(opts.output)
  local function utc(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t)) end
  for _, cert in ipairs(list) do
    local saved, why = store:save(cert.serial, cert.pem)
    if not saved then return fail(7, why) end
    io.stdout:write(("%s  %s .. %s  %s\n"):format(cert.serial, utc(cert.not_before), utc(cert.not_after),
      store:file(cert.serial)))
  end
  return exit.OK
end

return certs
