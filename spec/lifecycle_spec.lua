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

-- Descriptors this process has open (the pipe of the count itself included,
-- the same each time).
local function open_descriptors()
  local p = assert(io.popen("ls /proc/" .. pid() .. "/fd | wc -l"))
  local n = tonumber(p:read("*a"))
  p:close()
  return n
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
    local now_open = open_descriptors()
    assert.is_true(now_open <= descriptors, ("%d descriptors open, %d before"):format(now_open, descriptors))
    local stats = server:stats()
    assert.is_true(stats.requests >= 300)
  end)
end)
