--- Rate limiters for the dispatcher: limiter:take(now) -> 0 (send now) or
-- the seconds to wait before sending.  Either way the call's slot is taken:
-- after the wait it is sent without asking again.  now is core.monotonic(),
-- one clock for every process of the machine.
--
-- local: a token bucket in this process (one client, one worker).
-- shared: the same limit held across every nginx worker, in a
--   lua_shared_dict (WeChat Pay's 1000 grants/min are per merchant, not per
--   worker): a GCRA schedule, one "theoretical arrival time" per merchant
--   and limit, updated under a short lock taken with dict:add.
local ratelimit = {}

-- ---- one process ------------------------------------------------------------

local Bucket = {}
Bucket.__index = Bucket

-- Tokens may go below zero: a call that must wait owns the token it waits for.
function Bucket:take(now)
  self.tokens = math.min(self.capacity, self.tokens + (now - self.updated) * self.rate) - 1
  self.updated = now
  if self.tokens >= 0 then return 0 end
  return -self.tokens / self.rate   -- seconds until its token
end

-- ---- every worker of an nginx server -----------------------------------------

local Shared = {}
Shared.__index = Shared

-- The lock is held for a get and a set, never across a yield: a worker that
-- dies inside it (it cannot yield there) frees it after LOCK_TTL.
local LOCK_TTL = 0.05

local function lock(dict, name)
  for attempt = 1, 1000 do
    if dict:add(name, true, LOCK_TTL) then return true end
    -- another worker is between its get and set: a few microseconds
    if attempt % 10 == 0 and ngx and ngx.sleep and pcall(ngx.sleep, 0.001) then
      -- yielded; init phases cannot, and there no worker competes
    end
  end
  return false
end

-- A reservation: the slot after the last one taken, or now when the limit
-- was idle.  The caller waits until its slot.  Reserving, not testing, is
-- what keeps the limit across workers: two workers can never take the same slot.
function Shared:take(now)
  local dict, key = self.dict, self.key
  local locked = lock(dict, self.lock_key)
  local tat = dict:get(key) or now
  local slot = math.max(tat, now)
  -- kept until the last slot reserved has passed, and a while after: a
  -- schedule that expired under a backlog would let the next call go at once
  dict:set(key, slot + self.interval, slot + self.interval - now + self.expire)
  if locked then dict:delete(self.lock_key) end
  return math.max(0, slot - self.tolerance - now)
end

--- new(rate_limit, mchid) -> limiter | nil.  rate_limit as config.check
-- returns it: { calls, per, burst, shared_dict }.  shared_dict is honoured
-- inside nginx only; outside it the limit is this process's.
function ratelimit.new(rate_limit, mchid)
  if not rate_limit then return nil end
  local burst = rate_limit.burst or 1
  local shared = rate_limit.shared_dict
  local in_nginx = type(ngx) == "table" and type(ngx.shared) == "table" and ngx.get_phase ~= nil
  if shared and in_nginx then
    local dict = ngx.shared[shared]
    if not dict then
      error(("wechatpay.new: rate_limit.shared_dict %q is not defined: add `lua_shared_dict %s 1m;` "
        .. "to the http block of nginx.conf"):format(shared, shared), 0)
    end
    local interval = rate_limit.per / rate_limit.calls
    local key = ("wechatpay:rate:%s:%.17g/%.17g"):format(mchid, rate_limit.calls, rate_limit.per)
    return setmetatable({
      dict = dict, key = key, lock_key = key .. ":lock",
      interval = interval,
      tolerance = (burst - 1) * interval,
      expire = math.max(60, rate_limit.per * 2),
    }, Shared)
  end
  -- One call's worth by default: a fixed per-minute window on the server
  -- then never sees more than calls + 1.
  return setmetatable({
    rate = rate_limit.calls / rate_limit.per, capacity = burst, tokens = burst,
    updated = require("wechatpay.core").monotonic(),
  }, Bucket)
end

return ratelimit
