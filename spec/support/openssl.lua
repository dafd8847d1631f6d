--- Test support: the `openssl` command line as the independent reference,
-- and fresh key material made by it in a temporary folder.
local M = {}

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.quote = shell_quote

--- Runs a shell command; returns its stdout, or raises with its stderr.
-- The exit status is read from the output, as LuaJIT's pipe:close() does
-- not report it.
function M.run(cmd)
  local errfile = os.tmpname()
  local pipe = assert(io.popen("(" .. cmd .. ") 2>" .. errfile .. "; echo \"__exit=$?\"", "r"))
  local out = pipe:read("*a")
  pipe:close()
  local body, code = out:match("^(.*)__exit=(%d+)%s*$")
  if code ~= "0" then
    local f = io.open(errfile, "rb")
    local err = f and f:read("*a") or ""
    if f then f:close() end
    os.remove(errfile)
    error("command failed (exit " .. tostring(code) .. "): " .. cmd .. "\n" .. err, 2)
  end
  os.remove(errfile)
  return body
end

function M.write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
  return path
end

function M.read(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

function M.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

--- Lower-case hex of a byte string, as openssl's -K and hexkey: take it.
function M.hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

--- n random bytes made by `openssl rand` into the file at `path`;
-- returns the path and the bytes.
function M.random_file(path, n)
  if n == 0 then return M.write(path, ""), "" end
  M.run("openssl rand -out " .. shell_quote(path) .. " " .. math.floor(n))
  return path, M.read(path)
end

--- Unix seconds of a date, as `date -u -d` reads it.
function M.epoch(date)
  return tonumber((M.run("date -u -d " .. shell_quote(date) .. " +%s"):gsub("%s", "")))
end

--- A certificate's date as openssl reads it, in Unix seconds; `option` is
-- "-startdate" or "-enddate".
function M.cert_date(path, option)
  local text = M.run("openssl x509 -in " .. shell_quote(path) .. " -noout " .. option)
  return M.epoch(text:match("=(.-)%s*$"))
end

--- The repository root, absolute, from this file's own path (busted may
-- run a spec by a relative or an absolute name).
function M.repo_root()
  local source = debug.getinfo(1, "S").source:gsub("^@", "")
  local root = source:match("^(.*)/spec/support/[^/]+$") or "."
  if root:sub(1, 1) ~= "/" then
    root = (os.getenv("PWD") or M.run("pwd"):gsub("%s+$", "")) .. "/" .. root
  end
  return root
end

function M.tmpdir()
  return (M.run("mktemp -d"):gsub("%s+$", ""))
end

function M.remove(dir)
  if dir and dir:match("^/tmp/") then os.execute("rm -rf " .. shell_quote(dir)) end
end

--- Runs Lua `code` in a fresh interpreter of the kind running the specs
-- (WECHATPAY_LUA, as scripts/test.sh sets it), with this one's module paths,
-- under `timeout` and, unless ASan is in the process, `ulimit -v`: for code
-- that could block or eat memory when what it checks regresses.
-- opts: seconds (default 60), memory_kb.  Returns the child's stdout.
function M.run_lua(code, opts)
  opts = opts or {}
  local interpreter = os.getenv("WECHATPAY_LUA") or (jit and "luajit" or "lua5.4")
  local prelude = ("package.path = %q; package.cpath = %q\n"):format(package.path, package.cpath)
  local limit = ""
  if opts.memory_kb and not os.getenv("ASAN_OPTIONS") then
    limit = "ulimit -v " .. math.floor(opts.memory_kb) .. "; "
  end
  -- a script file, not -e: the DEV=1 hosts take only `host script.lua`
  local script = M.write(os.tmpname(), prelude .. code)
  local ok, out = pcall(M.run, limit .. "exec timeout " .. (opts.seconds or 60) .. " "
    .. shell_quote(interpreter) .. " " .. shell_quote(script))
  os.remove(script)
  if not ok then error(out, 2) end
  return out
end

--- Fresh keys in every format the openssl tools write.
function M.make_keys(dir)
  local q = function(name) return shell_quote(dir .. "/" .. name) end
  local cmds = {
    "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. q("pkcs8.pem"),
    "openssl rsa -in " .. q("pkcs8.pem") .. " -traditional -out " .. q("pkcs1.pem"),
    "openssl pkcs8 -topk8 -in " .. q("pkcs8.pem") .. " -v2 aes256 -passout pass:s3cret -out " .. q("enc_aes256.pem"),
    "openssl pkcs8 -topk8 -in " .. q("pkcs8.pem") .. " -v2 des3 -passout pass:s3cret -out " .. q("enc_des3.pem"),
    "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -aes-128-cbc -pass pass:s3cret -out " .. q("genpkey_enc.pem"),
    "openssl pkey -in " .. q("pkcs8.pem") .. " -pubout -out " .. q("spki.pem"),
    "openssl rsa -in " .. q("pkcs8.pem") .. " -RSAPublicKey_out -out " .. q("pkcs1_public.pem"),
    "openssl req -x509 -key " .. q("pkcs8.pem") .. " -subj /CN=wechatpay-test -days 30 -out " .. q("cert.pem"),
    "openssl pkcs8 -topk8 -nocrypt -in " .. q("pkcs8.pem") .. " -outform DER -out " .. q("pkcs8.der"),
    "openssl rsa -in " .. q("pkcs8.pem") .. " -traditional -outform DER -out " .. q("pkcs1.der"),
    "openssl pkey -in " .. q("pkcs8.pem") .. " -pubout -outform DER -out " .. q("spki.der"),
    "openssl rsa -in " .. q("pkcs8.pem") .. " -RSAPublicKey_out -outform DER -out " .. q("pkcs1_public.der"),
    "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. q("other.pem"),
    "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out " .. q("ec.pem"),
  }
  for _, cmd in ipairs(cmds) do M.run(cmd) end
  return setmetatable({ dir = dir }, {
    __index = function(_, name) return dir .. "/" .. name end,
  })
end

--- base64 of a file, on one line, as openssl writes it.
function M.base64_file(path)
  return (M.run("openssl base64 -A -in " .. shell_quote(path)):gsub("%s+$", ""))
end

return M
