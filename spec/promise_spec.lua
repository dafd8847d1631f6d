-- The promise layer on its own, driven by a scripted driver: chaining,
-- catch, waiting on settled promises, all and settle, raising handlers.
local promise = require("wechatpay.promise")

-- A driver that settles queued actions one per step, like transfers finishing.
local function scripted_driver()
  local d = { actions = {}, steps = 0 }
  function d:later(fn) self.actions[#self.actions + 1] = fn end
  function d:step()
    self.steps = self.steps + 1
    local fn = table.remove(self.actions, 1)
    if not fn then return false end
    fn()
    return true
  end
  return d
end

describe("wechatpay.promise", function()
  it("resolves through next chains and passes values along", function()
    local d = scripted_driver()
    local p = promise.new(d)
    d:later(function() p:resolve(1) end)
    local result = p:next(function(v) return v + 1 end):next(function(v) return v * 10 end)
    assert.equal(20, (result:wait()))
  end)

  it("a handler that raises rejects the promise it returned, with the error", function()
    local d = scripted_driver()
    local p = promise.new(d)
    d:later(function() p:resolve("x") end)
    local value, err = p:next(function() error({ reason = "boom" }) end):wait()
    assert.is_nil(value)
    assert.same({ reason = "boom" }, err)
  end)

  it("catch handles a rejection and can recover", function()
    local d = scripted_driver()
    local p = promise.new(d)
    d:later(function() p:reject("bad") end)
    local seen
    local recovered = p:next(function() return "unreached" end):catch(function(e) seen = e; return "ok" end)
    assert.equal("ok", (recovered:wait()))
    assert.equal("bad", seen)
  end)

  it("catch and next(nil, f) pass a fulfilled value through without calling f", function()
    local called = 0
    local function f() called = called + 1; return "from the rejection handler" end
    assert.equal(42, (promise.resolved(42):catch(f):wait()))
    assert.equal(42, (promise.resolved(42):next(nil, f):wait()))
    local d = scripted_driver()
    local p = promise.new(d)
    d:later(function() p:resolve("later") end)
    assert.equal("later", (p:catch(f):wait()))
    assert.equal(0, called)
  end)

  it("waiting on a settled promise returns at once, again and again", function()
    local d = scripted_driver()
    local p = promise.resolved(5, d)
    assert.equal(5, (p:wait()))
    assert.equal(5, (p:wait()))
    assert.equal(0, d.steps)
    local r = promise.rejected("no", d)
    local v, e = r:wait()
    assert.is_nil(v)
    assert.equal("no", e)
  end)

  it("handlers added after settlement still run", function()
    local p = promise.resolved(3)
    local got
    p:next(function(v) got = v end)
    assert.equal(3, got)
  end)

  it("adopts a promise returned by a handler", function()
    local d = scripted_driver()
    local inner = promise.new(d)
    local outer = promise.resolved(1, d):next(function() return inner end)
    d:later(function() inner:resolve("inner") end)
    assert.equal("inner", (outer:wait()))
  end)

  it("all gives values in order, or the first error", function()
    local d = scripted_driver()
    local a, b, c = promise.new(d), promise.new(d), promise.new(d)
    d:later(function() c:resolve("c") end)
    d:later(function() a:resolve("a") end)
    d:later(function() b:resolve("b") end)
    assert.same({ "a", "b", "c" }, (promise.all{ a, b, c }:wait()))
    local x, y = promise.new(d), promise.new(d)
    d:later(function() y:reject("y failed") end)
    d:later(function() x:resolve("x") end)
    local list, err = promise.all{ x, y }:wait()
    assert.is_nil(list)
    assert.equal("y failed", err)
    assert.same({}, (promise.all{}:wait()))
  end)

  it("settle reports every outcome in order", function()
    local d = scripted_driver()
    local a, b = promise.new(d), promise.new(d)
    d:later(function() b:reject("nope") end)
    d:later(function() a:resolve(1) end)
    assert.same({ { res = 1 }, { err = "nope" } }, (promise.settle{ a, b }:wait()))
  end)

  it("all and settle drive a promise that moved on to another driver's call", function()
    -- a call of client A whose handler makes a call of client B (another driver)
    local a, b = scripted_driver(), scripted_driver()
    local function chained()
      local first = promise.new(a)
      a:later(function() first:reject("A failed") end)
      return first:next(nil, function()
        local second = promise.new(b)
        b:later(function() second:resolve("from B") end)
        return second
      end)
    end
    assert.same({ "from B" }, (promise.all{ chained() }:wait()))
    assert.same({ { res = "from B" } }, (promise.settle{ chained() }:wait()))
    assert.same({ "from B", "from B" }, (promise.all{ chained(), chained() }:wait()))
  end)

  it("a promise nobody waits on still completes when another is waited on", function()
    local d = scripted_driver()
    local ignored, waited = promise.new(d), promise.new(d)
    local ran = false
    ignored:next(function() ran = true end)
    d:later(function() ignored:resolve(1) end)
    d:later(function() waited:resolve(2) end)
    waited:wait()
    assert.is_true(ran)
  end)

  it("settles once: later resolve or reject calls are ignored", function()
    local p = promise.resolved(1)
    p:reject("late")
    p:resolve(2)
    assert.equal(1, (p:wait()))
  end)

  it("waiting on a promise that nothing can settle raises instead of spinning", function()
    assert.has_error(function() promise.new():wait() end)
    local d = scripted_driver()
    assert.has_error(function() promise.new(d):wait() end)
  end)
end)
