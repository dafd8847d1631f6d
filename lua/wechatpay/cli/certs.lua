--- `wechatpay certs` (and bin/wechatpay-certs): download the WeChat Pay
-- platform certificates into a directory, for cron jobs and cert_dir.
local args = require("wechatpay.cli.args")
local config = require("wechatpay.cli.config")
local errors = require("wechatpay.errors")
local exit = require("wechatpay.cli.exit")
local output = require("wechatpay.cli.output")

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

Exit status (the table of `wechatpay --help`):
  0    certificates written
  2    usage: an unknown or malformed flag, no --output (nothing was sent)
  3    no answer (network, timeout)
  4    WeChat Pay refused the request (status, code and message printed)
  5    this merchant has no platform certificates: it verifies with its WeChat
       Pay public key (PUB_KEY_ID_...), which the merchant platform gives
  6    the download did not decrypt or verify (check the APIv3 key)
  7    the output directory cannot be written
  8    configuration: the config file, the key file or the APIv3 key, the
       WECHATPAY_* variables or the flags do not make a client
  70   internal error (a bug)
  130  interrupted (Ctrl-C)
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
  if opts["private-key"] then
    local given = opts["private-key"]
    if given:find("^file://") then
      options.private_key = given   -- a path written as the config file writes it
    elseif config.key_source(given) ~= "file://" .. given then
      -- key text on the command line: ps and the shell history would show it
      return nil, "--private-key takes the key file's path, not the key itself (put the key in a file)"
    else
      options.private_key = "file://" .. given
    end
  end
  if opts["base-url"] then options.base_url = opts["base-url"] end
  if opts.cafile then options.cafile = opts.cafile end
  for _, required in ipairs{ "mchid", "serial", "private_key" } do
    if options[required] == nil then
      return nil, "--" .. required:gsub("_", "-") .. " is required (or --config, or WECHATPAY_*; --help for usage)"
    end
  end
  if opts["apiv3-key-file"] then
    local text, err = config.read_apiv3_key_file(opts["apiv3-key-file"])
    if not text then return nil, err end
    apiv3_key = text
  elseif key_error then
    return nil, key_error
  elseif apiv3_key == nil then
    return nil, "the APIv3 key is needed: --apiv3-key-file FILE or WECHATPAY_APIV3_KEY"
  end
  if #apiv3_key ~= 32 then return nil, ("the APIv3 key must be 32 characters, got %d"):format(#apiv3_key) end
  options.apiv3_key = apiv3_key
  options.certs = {}
  options.cert_dir, options.cert_store = nil, nil
  if opts.timeout then options.timeout = opts.timeout end   -- a number: main checked it
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
  if not opts then return fail(exit.USAGE, positional .. " (--help for usage)") end
  if opts.help then
    output.write(certs.USAGE)
    return exit.OK
  end
  if #positional > 0 then return fail(exit.USAGE, "unexpected argument (--help for usage)") end
  if not opts.output or opts.output == "" then
    -- an unset $DIR in cron gives ""
    return fail(exit.USAGE, "--output DIR is required, and not empty (--help for usage)")
  end
  -- before the download: a directory that is missing or not writable fails
  -- at once (creating a file there tells both)
  local core = require("wechatpay.core")
  local probe, perr = core.temp_file(opts.output .. "/.wechatpay-certs-probe." .. core.nonce(8))
  if not probe then
    return fail(exit.OUTPUT, tostring(perr) .. ": --output must be an existing directory this user can write")
  end
  probe:remove()
  if opts.timeout then
    local t, terr = args.seconds(opts.timeout, 86400)
    if not t then return fail(exit.USAGE, terr) end
    opts.timeout = t
  end
  local options, oerr = client_options(opts)
  if not options then return fail(exit.CONFIG, oerr) end

  local wechatpay = require("wechatpay")
  local certificates = require("wechatpay.certificates")
  local ok, client = pcall(wechatpay.new, options)
  if not ok then
    if errors.is_interrupt(client) then error(client, 0) end
    return fail(exit.CONFIG, config.message(client))
  end

  -- an interrupt raised here goes on up to cli.main (130)
  local list, err = client:certificates()
  client:close()
  -- network 3, http 4, verify/decrypt/malformed 6, interrupted 130, else 70
  if not list then return fail(exit.of_kind(err.kind), tostring(err)) end
  -- a public-key-only merchant: certificates() gives {} and why (not dead)
  if #list == 0 then return fail(exit.PUBLIC_KEY_ONLY, err or "no platform certificates were delivered") end

  local store = certificates.dir_store(opts.output)
  local function utc(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t)) end
  local now, saved_any = os.time(), false
  for _, cert in ipairs(list) do
    if cert.not_after < now then
      -- WeChat Pay signs with it no more: saved, it would only look like trust
      io.stderr:write(("wechatpay-certs: %s expired on %s: not saved\n"):format(cert.serial, utc(cert.not_after)))
    else
      local saved, why = store:save(cert.serial, cert.pem)
      if not saved then return fail(exit.OUTPUT, why) end
      saved_any = true
      output.write(("%s  %s .. %s  %s\n"):format(cert.serial, utc(cert.not_before), utc(cert.not_after),
        store:file(cert.serial)))
    end
  end
  -- a cron job must not stay silent over a download that brought nothing usable
  if not saved_any then return fail(exit.VERIFY, "every certificate delivered has expired: none was saved") end
  return exit.OK
end

return certs
