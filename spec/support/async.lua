--- Test support for spec/async_spec.lua: grants against the mock, a closed
-- port, and a counter of unique request numbers.
local socket = require("socket")

local M = {}

M.STOCK_ID = "9856000"
M.APPID = "wx233544546545989"

--- The mock's seeded users as a list sorted by openid (pairs order is not stable).
function M.users(server)
  local list = {}
  for openid, user in pairs(server.users) do
    list[#list + 1] = { openid = openid, name = user.name, id_card = user.id_card }
  end
  table.sort(list, function(a, b) return a.openid < b.openid end)
  return list
end

local sequence = 0

--- A merchant number no other test of this run uses.
function M.request_no(prefix)
  sequence = sequence + 1
  return ("%s-%d-%d"):format(prefix or "ASYNC", os.time(), sequence)
end

--- The body of a grant for user, with the real name encrypted by the client.
function M.grant_json(client, user, out_request_no)
  return {
    stock_id = M.STOCK_ID,
    out_request_no = out_request_no or M.request_no(),
    user_name = assert(client:encrypt(user.name)),
    id_card_number = assert(client:encrypt(user.id_card)),
    appid = M.APPID,
    card_type = "ID_CARD",
  }
end

--- client:postAsync of a grant; extra request options (timeout, retry) merged in.
function M.grant_async(client, user, out_request_no, extra)
  local opts = { openid = user.openid, json = M.grant_json(client, user, out_request_no) }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return client.v3.multiuse.users._openid_.coupons:postAsync(opts)
end

--- A loopback port nothing listens on (bound, then closed).
function M.closed_port()
  local server = assert(socket.bind("127.0.0.1", 0))
  local _, port = server:getsockname()
  server:close()
  return tonumber(port)
end

return M
