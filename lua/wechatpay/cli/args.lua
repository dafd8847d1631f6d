--- The command line of the `wechatpay` subcommands: options by a spec,
-- positionals kept in order, and secrets refused before anything else.
--
--   local opts, positional = args.parse(argv, { config = "value", query = "list", raw = "flag" })
--   -- or nil, message (a usage error: the message never repeats a value)
local args = {}

-- Options that would put a secret where `ps` and the shell history show
-- it.  A *-file option names a file, which is where the secret belongs.
local function secret_option(name)
  local plain = name:lower():gsub("[_-]", "")
  if plain:find("file$") then return nil end
  if plain:find("apiv3") then return "the APIv3 key" end
  if plain:find("apiv2") then return "the APIv2 key" end
  if plain:find("passphrase") or plain:find("password") then return "the private key's passphrase" end
  return nil
end

local WHERE = {
  ["the APIv3 key"] = "put it in a file named by WECHATPAY_APIV3_KEY_FILE (or apiv3_key_file in the "
    .. "config file), or in the environment variable WECHATPAY_APIV3_KEY",
  ["the APIv2 key"] = "put it in the config file (apiv2_key = ...)",
  ["the private key's passphrase"] = "put it in the config file (passphrase = ...) or in the "
    .. "environment variable WECHATPAY_PASSPHRASE",
}

--- refuse_secrets(argv) -> nil | message: an option that would carry the
-- APIv3 or APIv2 key or a passphrase on the command line.  Its value is
-- not shown.
function args.refuse_secrets(argv)
  for i = 1, #argv do
    local name = tostring(argv[i]):match("^%-%-?([%w_%-]+)")
    local what = name and secret_option(name)
    if what then
      return ("%s is never taken from the command line (ps and the shell history would show it): %s")
        :format(what, WHERE[what])
    end
  end
  return nil
end

--- parse(argv, spec [, first]) -> options, positionals | nil, message
-- spec: name -> "value" (the last one given wins), "list" (every one, in
-- order) or "flag".  --name=value and --name value are both accepted;
-- "--" ends the options.
function args.parse(argv, spec, first)
  local refused = args.refuse_secrets(argv)
  if refused then return nil, refused end
  local opts, positional = {}, {}
  local i, only_positional = first or 1, false
  while i <= #argv do
    local a = argv[i]
    if only_positional or a == "-" or a:sub(1, 1) ~= "-" then
      positional[#positional + 1] = a
    elseif a == "--" then
      only_positional = true
    else
      local name, value = a:match("^%-%-([%w%-]+)=(.*)$")
      if not name then name = a:match("^%-%-([%w%-]+)$") end
      if a == "-h" then name = "help" end
      local kind = name and spec[name]
      if not kind then
        -- the name only: nothing after an "=" is repeated, whatever the
        -- name holds (--apiv2_key=... would otherwise print the key)
        local shown = name and ("--" .. name) or ("%q"):format((a:match("^[^=]*")):sub(1, 40))
        return nil, ("unknown option %s"):format(shown)
      end
      if kind == "flag" then
        if value then return nil, ("--%s takes no value"):format(name) end
        opts[name] = true
      else
        if not value then
          i = i + 1
          value = argv[i]
          if value == nil then return nil, ("--%s needs a value"):format(name) end
        end
        if kind == "list" then
          opts[name] = opts[name] or {}
          opts[name][#opts[name] + 1] = value
        else
          opts[name] = value
        end
      end
    end
    i = i + 1
  end
  return opts, positional
end

--- seconds(text, max) -> number | nil, message: a --timeout as the client
-- takes it (config.RANGES.timeout's minimum), at most max.
function args.seconds(text, max)
  local min = require("wechatpay.config").RANGES.timeout.min
  local t = tonumber(text)
  if not t or not (t >= min and t <= max) then
    return nil, ("--timeout must be a number of seconds from %g to %g"):format(min, max)
  end
  return t
end

return args
