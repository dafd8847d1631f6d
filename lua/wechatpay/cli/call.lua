--- `wechatpay call METHOD PATH`: one signed request, its answer verified,
-- like curl but signed: status and Request-ID on stderr, the body on
-- stdout (indented JSON on a terminal, the bytes as sent otherwise).
local args = require("wechatpay.cli.args")
local config = require("wechatpay.cli.config")
local errors = require("wechatpay.errors")
local exit = require("wechatpay.cli.exit")
local output = require("wechatpay.cli.output")

local call = {}

call.USAGE = [[
usage: wechatpay call METHOD PATH [--json BODY|@FILE|@-] [--query NAME=VALUE]...
                      [--var NAME=VALUE]... [--header 'Name: value']...
                      [--config FILE] [--timeout SECONDS] [--raw]

Sends one request signed with the configured merchant key and verifies the
answer with the configured WeChat Pay keys: the tool that tells whether a
failing integration is the code or the configuration.

  METHOD              GET, POST, PUT, PATCH or DELETE
  PATH                /v3/..., filled in (/v3/certificates), or with {name}
                      variables given by --var (percent-encoded as a path
                      segment); a ?query may end it instead of --query
  --json BODY         the JSON body, sent byte for byte as given; @FILE reads
                      it from a file, @- from stdin
  --query NAME=VALUE  a query parameter, percent-encoded (repeatable)
  --var NAME=VALUE    the value of {NAME} in PATH (repeatable)
  --header 'N: v'     an extra request header (repeatable); Authorization and
                      the other headers the client owns are refused
  --config FILE       the configuration (see `wechatpay --help`); default:
                      WECHATPAY_CONFIG, else the WECHATPAY_* variables
  --timeout SECONDS   default 30 (with several base_url hosts, failover as the client does)
  --raw               print the body as it came, even on a terminal

stderr gets "HTTP <status>  Request-ID <id>" (quote the Request-ID to WeChat
Pay support); stdout gets the body.  Exit status: see `wechatpay --help`.
]]

local SPEC = { json = "value", query = "list", var = "list", header = "list", config = "value",
               timeout = "value", raw = "flag", help = "flag" }
local METHODS = { GET = true, POST = true, PUT = true, PATCH = true, DELETE = true }
-- request options a --var may not shadow
local RESERVED = { json = true, body = true, query = true, headers = true, timeout = true, retry = true }

local function usage_error(message)
  return nil, exit.USAGE, message
end

local function read_body(spec)
  if spec:sub(1, 1) ~= "@" then return spec end
  local path = spec:sub(2)
  local f, err
  if path == "-" then f = io.stdin else f, err = io.open(path, "rb") end
  if not f then return nil, "cannot read --json " .. spec .. ": " .. tostring(err) end
  local text = f:read("*a") or ""
  if f ~= io.stdin then f:close() end
  return text
end

local function pairs_of(list, what)
  local map = {}
  for _, item in ipairs(list or {}) do
    local name, value = item:match("^([^=]+)=(.*)$")
    if not name then return nil, ("--%s %q is not NAME=VALUE"):format(what, item:sub(1, 60)) end
    local existing = map[name]
    if existing == nil then
      map[name] = value
    elseif what == "query" then
      if type(existing) ~= "table" then map[name] = { existing } end
      table.insert(map[name], value)
    else
      return nil, ("--%s %s is given twice"):format(what, name)
    end
  end
  return map
end

-- argv -> method, path, request options, parsed flags | nil, code, message
local function request_of(argv)
  local opts, positional = args.parse(argv, SPEC, 2)
  if not opts then return usage_error(positional) end
  if opts.help then return "help" end
  if #positional ~= 2 then return usage_error("call needs METHOD and PATH, e.g. wechatpay call GET /v3/certificates") end
  local method, path = positional[1]:upper(), positional[2]
  if not METHODS[method] then return usage_error(("%q is not an HTTP method: GET, POST, PUT, PATCH or DELETE"):format(positional[1]:sub(1, 20))) end
  if path:find("^https?://") then return usage_error("PATH is the path only (/v3/...): the host comes from base_url") end
  if not path:find("^/?v3/") then return usage_error("PATH must start with /v3/") end
  local request = {}
  local raw_query
  path, raw_query = path:match("^([^?]*)%??(.*)$")
  local query, err = pairs_of(opts.query, "query")
  if not query then return usage_error(err) end
  if raw_query ~= "" then
    if next(query) then return usage_error("give the query in PATH (?a=b) or with --query, not both") end
    request.query = raw_query
  elseif next(query) then
    request.query = query
  end
  local vars
  vars, err = pairs_of(opts.var, "var")
  if not vars then return usage_error(err) end
  for name, value in pairs(vars) do
    if RESERVED[name] then return usage_error(("--var %s: a path variable may not be named %s"):format(name, name)) end
    if not path:find("{" .. name .. "}", 1, true) and not path:find("{+" .. name .. "}", 1, true) then
      return usage_error(("--var %s: PATH has no {%s}"):format(name, name))
    end
    request[name] = value
  end
  if opts.header then
    request.headers = {}
    local seen = {}
    for i, line in ipairs(opts.header) do
      local name, value = line:match("^([^:]+):%s*(.-)%s*$")
      -- not quoted: it may be an Authorization value pasted whole
      if not name then return usage_error(("--header number %d is not 'Name: value'"):format(i)) end
      if seen[name:lower()] then return usage_error(("--header %s is given twice"):format(name:sub(1, 40))) end
      seen[name:lower()] = true
      request.headers[name] = value
    end
  end
  if opts.json then
    local body, berr = read_body(opts.json)
    if not body then return usage_error(berr) end
    local decoded, jerr = require("cjson.safe").decode(body)
    if decoded == nil then return usage_error("--json is not JSON: " .. tostring(jerr)) end
    request.body = body
  end
  if opts.timeout then
    local t, terr = args.seconds(opts.timeout, 86400)
    if not t then return usage_error(terr) end
    opts.timeout = t
  end
  return method, path, request, opts
end

local function print_body(body, raw)
  if body == nil or body == "" then return end
  local pretty = not raw and output.is_terminal(1) and output.pretty_json(body)
  output.write(pretty or body)
  if pretty or output.is_terminal(1) then output.write("\n") end
end

local function status_line(status, request_id)
  io.stderr:write(("HTTP %s  Request-ID %s\n"):format(tostring(status), request_id or "(none)"))
end

--- main(argv) -> exit code; argv[1] is "call".
function call.main(argv)
  local method, path, request, opts = request_of(argv)
  if method == nil then
    io.stderr:write("wechatpay call: ", request, "\n")
    return path
  end
  if method == "help" then
    output.write(call.USAGE)
    return exit.OK
  end

  local profile, perr = config.load(opts.config)
  if not profile then
    io.stderr:write("wechatpay call: ", perr, "\n")
    return exit.CONFIG
  end
  if profile.apiv3_key_error then
    io.stderr:write("wechatpay call: ", profile.apiv3_key_error, "\n")
    return exit.CONFIG
  end
  local options = config.client_options(profile, { timeout = opts.timeout or 30, retry = false })
  local ok, client = pcall(require("wechatpay").new, options)
  if not ok then
    io.stderr:write("wechatpay call: configuration (", profile.source, "): ", config.message(client),
      "\n(`wechatpay doctor` checks it piece by piece)\n")
    return exit.CONFIG
  end

  -- request_async raises only while it checks the options (a bad header,
  -- a missing {variable}): a usage error, nothing sent.  What the wait
  -- raises (Ctrl-C, a bug) goes on up to cli.main: 130, or 70.
  local queued, promise = pcall(client.request_async, client, method, path, request)
  if not queued then
    client:close()
    if errors.is_interrupt(promise) then error(promise, 0) end
    io.stderr:write("wechatpay call: ", config.message(promise), "\n")
    return exit.USAGE
  end
  local waited, res, err = pcall(promise.wait, promise)
  client:close()
  if not waited then error(res, 0) end
  if res then
    status_line(res.status, res:header("Request-ID"))
    print_body(res.body, opts.raw)
    return exit.OK
  end
  local response = err.response
  if response then
    status_line(response.status, err.request_id or response:header("Request-ID"))
    print_body(response.body, opts.raw)
  end
  io.stderr:write("wechatpay call: ", tostring(err), "\n")
  if err.kind == "verify" then
    io.stderr:write("wechatpay call: the body above is NOT verified: WeChat Pay may have acted on the "
      .. "request, but do not trust what the body says (check certs, or `wechatpay doctor`)\n")
  end
  return exit.of_kind(err.kind)
end

return call
