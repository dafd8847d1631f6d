--- Test support: fork(2) for specs.  fork/pipe/read/write/close/_exit/wait
-- come from lua-posix where Debian builds it for this interpreter (LuaJIT),
-- else from spec/fixtures/fork_helper.c compiled into `dir` for it (Debian
-- 12's lua-posix has no Lua 5.4 build).
--
--   local proc = process.api(dir)
--   local child = proc.spawn(function() return "x" end)   -- the child sends the result, then _exits
--   proc.collect(child) --> "x" (and the child's exit status checked)
--   process.interrupt(command, server, log) --> exit status, output (a Ctrl-C mid-call)
--   process.lua_command(script) --> a shell command running script in a child interpreter
local ossl = require("support.openssl")

local M = {}

local function posix_api()
  local ok, unistd = pcall(require, "posix.unistd")
  if not ok then return nil end
  local wait = require("posix.sys.wait")
  return {
    via = "lua-posix",
    fork = function() return assert(unistd.fork()) end,
    pipe = function() return assert(unistd.pipe()) end,
    write = function(fd, s) return assert(unistd.write(fd, s)) end,
    read = function(fd, n) return assert(unistd.read(fd, n)) end,
    close = function(fd) unistd.close(fd) end,
    _exit = function(status) unistd._exit(status) end,
    wait = function(pid)
      local _, how, status = assert(wait.wait(pid))
      return how == "exited" and status or 128 + (status or 0)
    end,
  }
end

local function helper_api(dir)
  local version = _VERSION:match("%d+%.%d+")
  local incdir = os.getenv("LUA_INCDIR") or (jit and "/usr/include/luajit-2.1" or ("/usr/include/lua" .. version))
  local so = dir .. "/fork_helper.so"
  ossl.run("cc -shared -fPIC -O1 -I" .. ossl.quote(incdir) .. " -o " .. ossl.quote(so) .. " "
    .. ossl.quote(ossl.repo_root() .. "/spec/fixtures/fork_helper.c"))
  local api = assert(package.loadlib(so, "luaopen_fork_helper"))()
  api.via = "spec/fixtures/fork_helper.c"
  return api
end

--- api(dir) -> the process functions, plus spawn and collect.
function M.api(dir)
  local proc = posix_api() or helper_api(dir)

  -- Forks; the child sends tostring(fn()) through a pipe and _exits at once
  -- (never back into busted).  The parent goes on: collect() waits.
  function proc.spawn(fn)
    local r, w = proc.pipe()
    local pid = proc.fork()
    if pid == 0 then
      proc.close(r)
      local ok, value = pcall(fn)
      pcall(proc.write, w, ok and tostring(value) or ("child error: " .. tostring(value)))
      proc._exit(0)
    end
    proc.close(w)
    return { pid = pid, fd = r }
  end

  --- collect(child) -> what the child sent; its exit status must be 0.
  function proc.collect(child)
    local parts = {}
    while true do
      local s = proc.read(child.fd, 4096)
      if not s or s == "" then break end
      parts[#parts + 1] = s
    end
    proc.close(child.fd)
    local status = proc.wait(child.pid)
    if status ~= 0 then error("child exited with status " .. tostring(status), 2) end
    return table.concat(parts)
  end

  return proc
end

--- interrupt(command, server, log) -> exit status, output: runs the shell
-- command in the background (stdin empty, stdout and stderr to the file
-- `log`) and sends it SIGINT, a Ctrl-C, once the mock `server` has counted
-- a request more (or after 10 s), then waits for it.
function M.interrupt(command, server, log)
  local socket = require("socket")
  local before = server:stats().requests
  local p = assert(io.popen("sh -c " .. ossl.quote("(" .. command .. ") </dev/null >" .. ossl.quote(log)
    .. " 2>&1 & echo $!; wait $!; echo rc=$?")))
  local pid = assert(tonumber(p:read("*l")))
  local deadline = socket.gettime() + 10
  repeat socket.sleep(0.05) until server:stats().requests > before or socket.gettime() > deadline
  socket.sleep(0.2)
  os.execute("kill -INT " .. pid)
  local rc = tonumber(p:read("*a"):match("rc=(%d+)"))
  p:close()
  return rc, ossl.read(log) or ""
end

--- lua_command(script) -> a shell command that runs `script` (Lua source)
-- in a child interpreter of this runtime with this build, for what is seen
-- only from outside a process (its umask, strace, a hang under timeout):
-- prefix it with what wraps it.  The project's modules, the mock's and
-- spec/ are on its path; a sanitizer build's runtime is preloaded.
function M.lua_command(script)
  local build = os.getenv("WECHATPAY_BUILD") or "./build"
  local cpath = build .. (jit and "/luajit/?.so" or ("/lua" .. _VERSION:match("%d+%.%d+") .. "/?.so")) .. ";;"
  local root = ossl.repo_root()
  local path = {}
  for _, dir in ipairs{ "lua", "mock", "spec" } do
    path[#path + 1] = root .. "/" .. dir .. "/?.lua;" .. root .. "/" .. dir .. "/?/init.lua"
  end
  return ("env %sLUA_PATH=%s LUA_CPATH=%s %s -e %s"):format(require("support.nginx").sanitizer_preload(),
    ossl.quote(table.concat(path, ";") .. ";;"), ossl.quote(cpath), jit and "luajit" or "lua5.4", ossl.quote(script))
end

return M
