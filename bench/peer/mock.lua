--- Starts ONE mock WeChat Pay for the side-by-side client benchmark, prints
-- what a client needs to reach it as one line of JSON on stdout, and keeps it
-- running until stdin closes (then stops nginx and removes its folder).
--
--   lua5.4 bench/peer/mock.lua < fifo > mock.json
--
-- Fields: base_url, cafile, mchid, merchant_serial, merchant_key_file,
-- platform_key_id, platform_public_key_file, platform_private_key_file, users (sorted by openid, each
-- { openid, name, id_card }), nginx_workers (pids, so a benchmark can read
-- the mock's own CPU time from /proc and say when the mock is the limit).
local cjson = require("cjson")
local mock = require("wechatpay.mock")

-- No rate limit: the benchmark grants far more than 1000 a minute.
local server = assert(mock.start{ rate_limit = false })

local function workers(master)
  local f = io.open(("/proc/%s/task/%s/children"):format(master, master), "r")
  local list = {}
  if f then
    for pid in (f:read("*a") or ""):gmatch("%d+") do list[#list + 1] = tonumber(pid) end
    f:close()
  end
  return list
end

local users = {}
for openid, user in pairs(server.users) do
  users[#users + 1] = { openid = openid, name = user.name, id_card = user.id_card }
end
table.sort(users, function(a, b) return a.openid < b.openid end)

io.stdout:write(cjson.encode{
  base_url = server.base_url,
  cafile = server.cafile,
  mchid = server.mchid,
  merchant_serial = server.merchant_serial,
  merchant_key_file = server.merchant_key_file,
  platform_key_id = server.platform_key_id,
  platform_public_key_file = server.platform_public_key_file,
  -- only for bench/peer/overhead.lua, which signs a canned response with it
  platform_private_key_file = server.dir .. "/platform_private_key.pem",
  users = users,
  nginx_workers = workers(server._pid),
}, "\n")
io.stdout:flush()

-- Until stdin closes (the caller exits or closes its end).
while io.stdin:read("*L") do end
server:stop()
