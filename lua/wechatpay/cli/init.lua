--- `wechatpay SUBCOMMAND ...`: the one command of the library, dispatching
-- to call, doctor, certs and grant.  main(argv) -> exit status.
local args = require("wechatpay.cli.args")
local config = require("wechatpay.cli.config")
local exit = require("wechatpay.cli.exit")
local output = require("wechatpay.cli.output")

local cli = {}

local SUBCOMMANDS = {
  call = { module = "wechatpay.cli.call", what = "one signed request, its answer verified (like curl)" },
  doctor = { module = "wechatpay.cli.doctor", what = "check a configuration, piece by piece, with fixes" },
  certs = { module = "wechatpay.cli.certs", what = "download the platform certificates into a directory" },
  grant = { module = "wechatpay.grant.cli", what = "grant a stock to the users of a CSV file" },
}
local ORDER = { "call", "doctor", "certs", "grant" }

function cli.usage()
  local lines = { "usage: wechatpay SUBCOMMAND [options]   (wechatpay SUBCOMMAND --help for its options)", "" }
  for _, name in ipairs(ORDER) do
    lines[#lines + 1] = ("  %-8s %s"):format(name, SUBCOMMANDS[name].what)
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Configuration (call, doctor, certs; grant takes --config only): --config FILE, a Lua file"
  lines[#lines + 1] = "returning the wechatpay.new options (plus merchant_cert and apiv3_key_file), or else"
  lines[#lines + 1] = "these environment variables:"
  for _, pair in ipairs(config.ENV) do
    lines[#lines + 1] = ("  %-25s %s"):format(pair[1], pair[2])
  end
  lines[#lines + 1] = "The APIv3 and APIv2 keys and the key passphrase are never taken from the command line."
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Exit status:"
  return table.concat(lines, "\n") .. "\n" .. exit.TABLE
end

local function run(argv)
  local name = argv[1]
  if name == nil then
    io.stderr:write(cli.usage())
    return exit.USAGE
  end
  if name == "-h" or name == "--help" or name == "help" then
    output.write(cli.usage())
    return exit.OK
  end
  -- before anything is quoted: a secret may come first (wechatpay --apiv3-key=...)
  local refused = args.refuse_secrets(argv)
  if refused then
    io.stderr:write("wechatpay: ", refused, "\n")
    return exit.USAGE
  end
  local sub = SUBCOMMANDS[name]
  if not sub then
    -- a word is shown (a typo); anything else may be a key pasted in the wrong place
    local shown = name:find("^%-%-?[%w%-]+") and (" " .. name:match("^%-%-?[%w%-]+"):sub(1, 40) .. " (options come "
      .. "after the subcommand)") or name:find("^[%a][%a%-]*$") and #name <= 20 and (" " .. name) or ""
    io.stderr:write(("wechatpay: unknown subcommand%s: call, doctor, certs or grant (--help)\n"):format(shown))
    return exit.USAGE
  end
  local rest = {}
  for i = 2, #argv do rest[#rest + 1] = argv[i] end
  if name == "grant" then return require(sub.module).main(rest) end
  return require(sub.module).main(argv)
end

--- main(argv) -> exit status; a raised error is reported as a bug, an
-- interrupt as 130.
function cli.main(argv)
  output.failed = nil
  local list = {}
  for i = 1, #argv do list[i] = argv[i] end
  local ok, code = xpcall(run, function(e)
    if require("wechatpay.errors").is_interrupt(e) then return exit.INTERRUPTED end
    return debug.traceback(tostring(e), 2)
  end, list)
  -- a body written to a full disk or a closed pipe is no success
  local flushed, why = io.stdout:flush()
  local failed = output.failed or (not flushed and tostring(why))
  if ok and failed then
    io.stderr:write("wechatpay: cannot write the output: ", failed, "\n")
    return code == exit.OK and exit.OUTPUT or code
  end
  if ok then return code end
  if code == exit.INTERRUPTED then
    io.stderr:write("wechatpay: interrupted\n")
    return code
  end
  io.stderr:write("wechatpay: internal error: ", tostring(code), "\n")
  return exit.INTERNAL
end

return cli
