-- wechatpay.transport.curl above its session: how finished transfers reach
-- their callbacks, and what request() and step() do when one raises.  The
-- session is a stand-in that reports scripted transfers, so the order in
-- which transfers finish is exact (the session itself is http_session_spec's).
local curl_transport = require("wechatpay.transport.curl")

-- A transport whose session reports, at each perform, the next list of
-- finished transfers from `script` (ids in submit order, from 1).
local function scripted(script)
  local transport = curl_transport.new{}
  transport.session:close()
  local submitted = 0
  transport.session = {
    submit = function() submitted = submitted + 1; return submitted end,
    perform = function() return table.remove(script, 1) or {} end,
    cancel = function() return true end,
    pending = function() return 0 end,
    close = function() end,
  }
  return transport
end

local function answer(id, body)
  return { id = id, status = 200, headers = {}, body = body }
end

describe("transport.curl", function()
  it("step gives every finished transfer to its callback, then raises the first callback error", function()
    local transport = scripted{ { answer(1, "a"), answer(2, "b"), answer(3, "c") } }
    local got = {}
    transport:submit({}, function() error("first callback failed", 0) end)
    transport:submit({}, function(res) got[#got + 1] = res.body end)
    transport:submit({}, function() error("third callback failed", 0) end)
    local ok, err = pcall(transport.step, transport, 0)
    assert.is_false(ok)
    assert.equal("first callback failed", err)
    assert.same({ "b" }, got)
  end)

  it("request() returns its answer when another transfer's callback raises in the same step", function()
    local transport = scripted{ { answer(1, "theirs"), answer(2, "mine") } }
    transport:submit({}, function() error("their callback failed", 0) end)
    local res, err = transport:request{}
    assert.is_nil(err)
    assert.equal("mine", res.body)
    -- the other caller's error is not lost: the next step raises it, once
    local ok, raised = pcall(transport.step, transport, 0)
    assert.is_false(ok)
    assert.equal("their callback failed", raised)
    assert.equal(0, transport:step(0))
  end)

  it("request() that raises another callback's error cancels its own transfer: nothing goes out unseen", function()
    local transport, cancelled = scripted{ { answer(1, "theirs") }, { answer(2, "mine") } }, {}
    transport.session.cancel = function(_, id) cancelled[#cancelled + 1] = id; return true end
    transport:submit({}, function() error("their callback failed", 0) end)
    local ok, raised = pcall(transport.request, transport, {})
    assert.is_false(ok)
    assert.equal("their callback failed", raised)
    assert.same({ 2 }, cancelled)
    assert.is_nil(transport.callbacks[2])
  end)

  it("a held error goes up from the next request() before it submits anything", function()
    local transport = scripted{ { answer(1, "theirs"), answer(2, "mine") } }
    local submitted = 0
    local submit = transport.session.submit
    transport.session.submit = function(...) submitted = submitted + 1; return submit(...) end
    transport:submit({}, function() error("their callback failed", 0) end)
    assert.equal("mine", transport:request{}.body)
    local ok, raised = pcall(transport.request, transport, {})
    assert.is_false(ok)
    assert.equal("their callback failed", raised)
    assert.equal(2, submitted)   -- the first two; the failed request() sent nothing
  end)

  it("request() lets an interrupt go up at once, even with its answer in hand", function()
    local transport = scripted{ { answer(1, "theirs"), answer(2, "mine") } }
    transport:submit({}, function() error({ kind = "interrupted", message = "interrupted!" }, 0) end)
    local ok, raised = pcall(transport.request, transport, {})
    assert.is_false(ok)
    assert.equal("interrupted", raised.kind)
    assert.equal(0, transport:step(0))   -- nothing was held back
  end)
end)
