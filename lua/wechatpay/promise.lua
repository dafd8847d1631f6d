--- Promises for calls in flight, independent of how they are driven.
--
--   p:next(on_fulfilled, on_rejected) -> promise   (`then` is a Lua keyword)
--   p:catch(on_rejected) -> promise
--   p:wait() -> value | nil, err    drives the promise's driver until it settles
--   promise.all{ p1, p2 }:wait()    -> { v1, v2 } | nil, first error
--   promise.settle{ p1, p2 }:wait() -> { { res = v1 }, { err = e2 } }
--
-- A driver is any object with step(): the curl dispatcher, or an nginx one.
-- Handlers run as soon as their promise settles; a handler that raises
-- rejects the promise it returned, with the error.
local is_interrupt = require("wechatpay.errors").is_interrupt

local promise = {}

local Promise = {}
Promise.__index = Promise

local function is_promise(value)
  return getmetatable(value) == Promise
end
promise.is_promise = is_promise

function promise.new(driver)
  return setmetatable({ state = "pending", handlers = {}, driver = driver }, Promise)
end

local function settle(self, state, value)
  if self.state ~= "pending" then return end
  self.state, self.value = state, value
  local handlers = self.handlers
  self.handlers = nil
  -- a handler raises only an interrupt (run() catches the rest): the
  -- others still run, so no promise chained here is left pending, and the
  -- interrupt goes on up after them
  local interrupt
  for i = 1, #handlers do
    local ok, raised = pcall(handlers[i])
    if not ok and interrupt == nil then interrupt = raised end
  end
  if interrupt ~= nil then error(interrupt, 0) end
end

function Promise:resolve(value)
  if value == self then return self:reject("a promise cannot resolve to itself") end
  if is_promise(value) then
    if not self.driver then self.driver = value.driver end
    self.following = value   -- only value can settle self now: wait() drives its driver
    value:next(function(v) self.following = nil; self:resolve(v) end,
               function(e) self.following = nil; self:reject(e) end)
    return
  end
  settle(self, "fulfilled", value)
end

function Promise:reject(err)
  settle(self, "rejected", err)
end

function Promise:next(on_fulfilled, on_rejected)
  local child = promise.new(self.driver)
  child.parent = self
  local function run()
    child.parent = nil
    local handler = on_rejected
    if self.state == "fulfilled" then handler = on_fulfilled end
    if type(handler) ~= "function" then
      if self.state == "fulfilled" then child:resolve(self.value) else child:reject(self.value) end
      return
    end
    local ok, result = pcall(handler, self.value)
    if ok then child:resolve(result) else child:reject(result) end
    -- Ctrl-C in a handler stops the program, as anywhere else: the promise
    -- it returned is rejected, and the interrupt goes on up
    if not ok and is_interrupt(result) then error(result, 0) end
  end
  if self.state == "pending" then
    self.handlers[#self.handlers + 1] = run
  else
    run()
  end
  return child
end

function Promise:catch(on_rejected)
  return self:next(nil, on_rejected)
end

-- The driver that can settle p now: while p waits for its parent, or
-- follows a promise it resolved to, that promise's driver.
local function current_driver(p)
  while true do
    local up = p.following or p.parent
    if not up or up.state ~= "pending" then return p.driver end
    p = up
  end
end

--- wait() -> value | nil, err.  Every call in flight on the same driver
-- progresses while waiting, not only this one.
function Promise:wait()
  while self.state == "pending" do
    local driver = current_driver(self)
    if not driver then error("wait: this promise has nothing to drive it and can never settle", 2) end
    if driver:step() == false and self.state == "pending" then
      error("wait: nothing is in flight that could settle this promise", 2)
    end
  end
  if self.state == "fulfilled" then return self.value end
  return nil, self.value
end

function Promise:__tostring()
  return "wechatpay.promise (" .. self.state .. ")"
end

function promise.resolved(value, driver)
  local p = promise.new(driver)
  p:resolve(value)
  return p
end

function promise.rejected(err, driver)
  local p = promise.new(driver)
  p:reject(err)
  return p
end

-- Drives, at each step, the driver that can settle each pending promise of
-- the list now (current_driver: a promise chained to another client's call
-- is settled by that client's driver), each distinct one once.
local function combined_driver(list)
  local items = {}
  for i = 1, #list do
    if is_promise(list[i]) then items[#items + 1] = list[i] end
  end
  if #items == 0 then return nil end
  return {
    step = function()
      local drivers, seen = {}, {}
      for _, item in ipairs(items) do
        local d = item.state == "pending" and current_driver(item)
        if d and not seen[d] then seen[d] = true; drivers[#drivers + 1] = d end
      end
      -- one driver may wait for activity; several take short turns
      local wait = #drivers > 1 and 0.01 or nil
      local any = false
      for _, d in ipairs(drivers) do
        if d:step(wait) ~= false then any = true end
      end
      return any
    end,
  }
end

local function check_list(list, fn)
  if type(list) ~= "table" then error(fn .. ": a list of promises expected", 3) end
end

--- all(list) -> promise of the list of values, or the first rejection
function promise.all(list)
  check_list(list, "all")
  local p = promise.new(combined_driver(list))
  local n, remaining, values = #list, #list, {}
  if n == 0 then p:resolve(values) return p end
  for i = 1, n do
    local item = is_promise(list[i]) and list[i] or promise.resolved(list[i])
    item:next(function(v)
      values[i] = v
      remaining = remaining - 1
      if remaining == 0 then p:resolve(values) end
    end, function(e) p:reject(e) end)
  end
  return p
end

--- settle(list) -> promise of { { res = value } or { err = error } } in order
function promise.settle(list)
  check_list(list, "settle")
  local p = promise.new(combined_driver(list))
  local n, remaining, outcomes = #list, #list, {}
  if n == 0 then p:resolve(outcomes) return p end
  local function done(i, outcome)
    outcomes[i] = outcome
    remaining = remaining - 1
    if remaining == 0 then p:resolve(outcomes) end
  end
  for i = 1, n do
    local item = is_promise(list[i]) and list[i] or promise.resolved(list[i])
    item:next(function(v) done(i, { res = v }) end, function(e) done(i, { err = e }) end)
  end
  return p
end

return promise
