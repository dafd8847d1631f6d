--- Stores that remember which callback event ids were handled, so that a
-- redelivery is acknowledged without running the handler again.
--
-- A store is any object with three methods (wechatpay.notification.handle
-- calls them; a Redis-backed one is in the README):
--   store:claim(id, claim_ttl, done_ttl) -> "new" [, token] | "busy" | "done" | nil, err
--       "new": the caller now holds a short in-progress claim (it expires
--       after claim_ttl seconds, so a crashed handler cannot block the id for
--       ever); "busy": another delivery holds the claim; "done": handled.
--   store:finish(id, done_ttl)   the claim becomes "done" for done_ttl seconds
--       (or nil, err)
--   store:release(id, token)     the claim is dropped (or nil, err): a redelivery runs again;
--       only the claim `token` names, when the store gave one: a handler
--       that outlived its claim must not drop the next delivery's
-- Two deliveries of one id at once: only one claim returns "new".
--
--   dedupe.lru{ size = 10000 }          one process (the default)
--   dedupe.shared_dict(ngx.shared.NAME) every nginx worker of one server
local core = require("wechatpay.core")

local dedupe = {}

--- Defaults: a claim outlives any reasonable handler; "done" outlives
-- WeChat Pay's redelivery schedule (15 attempts over about 24 hours).
dedupe.CLAIM_TTL = 60
dedupe.DONE_TTL = 25 * 3600

-- ---- a bounded LRU in one process ----------------------------------------------
-- A hash for lookup and a doubly linked list for recency: every operation
-- is O(1); past `size` entries the least recently used one is dropped.

local Lru = {}
Lru.__index = Lru

--- lru{ size = 10000, clock = fn } -> store
function dedupe.lru(opts)
  opts = opts or {}
  local size = opts.size or 10000
  if type(size) ~= "number" or size < 1 or size % 1 ~= 0 then
    error("dedupe.lru: size must be a positive integer", 2)
  end
  local head = {}
  head.prev, head.next = head, head
  return setmetatable({ size = size, count = 0, claims = 0, map = {}, head = head,
    clock = opts.clock or core.monotonic }, Lru)
end

local function unlink(node)
  node.prev.next, node.next.prev = node.next, node.prev
end

local function push_front(head, node)
  node.prev, node.next = head, head.next
  head.next.prev = node
  head.next = node
end

function Lru:get_live(id)
  local node = self.map[id]
  if not node then return nil end
  if node.expires <= self.clock() then
    unlink(node)
    self.map[id] = nil
    self.count = self.count - 1
    return nil
  end
  unlink(node)
  push_front(self.head, node)
  return node
end

function Lru:claim(id, claim_ttl)
  local node = self:get_live(id)
  if node then return node.state end
  self.claims = self.claims + 1
  node = { id = id, state = "busy", token = self.claims, expires = self.clock() + (claim_ttl or dedupe.CLAIM_TTL) }
  self.map[id] = node
  push_front(self.head, node)
  self.count = self.count + 1
  if self.count > self.size then
    -- the least recently used ids that no handler is running for: dropping
    -- a live claim would let a redelivery run the handler a second time (so
    -- while every id is busy, the store holds more than size for a moment)
    local now, last = self.clock(), self.head.prev
    while self.count > self.size and last ~= self.head do
      local newer = last.prev
      if last.state ~= "busy" or last.expires <= now then
        unlink(last)
        self.map[last.id] = nil
        self.count = self.count - 1
      end
      last = newer
    end
  end
  return "new", node.token
end

function Lru:finish(id, done_ttl)
  local node = self.map[id]
  if not node then
    -- evicted while the handler ran: remember it again
    self:claim(id)
    node = self.map[id]
  end
  node.state = "done"
  node.expires = self.clock() + (done_ttl or dedupe.DONE_TTL)
end

function Lru:release(id, token)
  local node = self.map[id]
  if node and node.state == "busy" and (token == nil or node.token == token) then
    unlink(node)
    self.map[id] = nil
    self.count = self.count - 1
  end
end

--- store:entries() -> how many ids are remembered
function Lru:entries()
  return self.count
end

-- ---- a lua_shared_dict: every worker of one nginx ---------------------------------
-- add() is atomic across workers, so only one delivery's claim succeeds;
-- the dict's own expiry ends a claim whose worker died.

local Dict = {}
Dict.__index = Dict

--- shared_dict(dict [, { prefix = "wechatpay:event:" }]) -> store
-- dict: an ngx.shared.DICT (or anything with its get/add/set/delete).
function dedupe.shared_dict(dict, opts)
  if type(dict) ~= "table" and type(dict) ~= "userdata" then
    error("dedupe.shared_dict: an ngx.shared.DICT is required", 2)
  end
  return setmetatable({ dict = dict, prefix = (opts and opts.prefix) or "wechatpay:event:" }, Dict)
end

-- A full dict makes room by evicting other entries (forcible): a busy
-- claim or a done id among them would let a redelivery run again.
local function crowded(forcible)
  if forcible and ngx and ngx.log then
    ngx.log(ngx.WARN, "wechatpay: the dedupe shared dict is full and evicted entries: make it larger")
  end
end

-- A claim's value names its holder ("busy " .. a random token), so that
-- only its own delivery releases it; every value but "done" is busy.
function Dict:claim(id, claim_ttl)
  local key, busy = self.prefix .. id, "busy " .. core.nonce(16)
  local ok, err, forcible = self.dict:add(key, busy, claim_ttl or dedupe.CLAIM_TTL)
  crowded(forcible)
  if ok then return "new", busy end
  if err ~= "exists" then return nil, "shared dict: " .. tostring(err) end
  local state = self.dict:get(key)
  if state == nil then
    -- expired between add and get: try once more
    ok = self.dict:add(key, busy, claim_ttl or dedupe.CLAIM_TTL)
    if ok then return "new", busy end
    return "busy"
  end
  return state == "done" and "done" or "busy"
end

function Dict:finish(id, done_ttl)
  local ok, err, forcible = self.dict:set(self.prefix .. id, "done", done_ttl or dedupe.DONE_TTL)
  crowded(forcible)
  if not ok then return nil, "shared dict: " .. tostring(err) end
  return true
end

function Dict:release(id, token)
  local key = self.prefix .. id
  local state = self.dict:get(key)
  if state ~= nil and state ~= "done" and (token == nil or state == token) then self.dict:delete(key) end
end

--- true when value has the three methods of a store.
function dedupe.is_store(value)
  local t = type(value)
  if t ~= "table" and t ~= "userdata" then return false end
  local ok, result = pcall(function()
    return type(value.claim) == "function" and type(value.finish) == "function"
      and type(value.release) == "function"
  end)
  return ok and result
end

return dedupe
