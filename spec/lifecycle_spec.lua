-- A dropped client is collected, with its curl session and its connections,
-- under Lua 5.4 and LuaJIT alike (LuaJIT has no ephemerons: a weak-keyed
-- side table whose value refers to its key keeps both alive forever).
local mock = require("wechatpay.mock")

local function pid()
  local f = assert(io.open("/proc/self/stat", "rb"))
  local stat = f:read("*l")
  f:close()
  return stat:match("^(%d+)")
end

-- Descriptors this process has open: fd -> what it points to ("socket:[...]",
-- "pipe:[...]", a path).  The pipe of the listing itself is left out.
local function open_descriptors()
  local p = assert(io.popen("ls -l /proc/" .. pid() .. "/fd 2>/dev/null"))
  local list = {}
  for line in p:lines() do
    local fd, target = line:match(" (%d+) %-> (.*)$")
    if fd then list[tonumber(fd)] = target end
  end
  p:close()
  return list
end

-- The descriptors of `now` that `before` did not have, as text.
local function new_descriptors(before, now)
  local added = {}
  for fd, target in pairs(now) do
    if before[fd] ~= target and not target:find("^pipe:") then added[#added + 1] = fd .. " -> " .. target end
  end
  table.sort(added)
  return added
end

local function full_collect()
  for _ = 1, 4 do collectgarbage("collect") end
end

describe("client lifetime", function()
  local server

  setup(function() server = assert(mock.start{ rate_limit = false }) end)
  teardown(function() if server then server:stop() end end)

  it("collects 300 dropped clients that each made a call, and closes their connections", function()
    local warm = server:client{ timeout = 5, retry = false }
    assert(warm.v3.mock.echo.warm:get())
    warm = nil   -- luacheck: ignore
    full_collect()
    local descriptors = open_descriptors()
    local alive = setmetatable({}, { __mode = "v" })
    for i = 1, 300 do
      local client = server:client{ timeout = 5, retry = false }
      local res, err = client.v3.mock.echo.lifetime:get()
      assert.is_truthy(res, tostring(err))
      alive[i] = client
      -- a held chain node must not outlive its client either
      alive[300 + i] = client.v3.mock.echo
    end
    full_collect()
    local left = 0
    for _ in pairs(alive) do left = left + 1 end
    assert.equal(0, left)
    -- a client holds a connection and curl's wake-up socket pair: none may stay
    local added = new_descriptors(descriptors, open_descriptors())
    assert.same({}, added)
    local stats = server:stats()
    assert.is_true(stats.requests >= 300)
  end)
end)
