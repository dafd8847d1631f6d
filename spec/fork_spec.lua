-- The libcurl transport (core.http_session) after fork().
--
-- Fork: a client that has made one call keeps its TLS connection pooled;
-- after fork() parent and child would both write on that one connection and
-- read each other's answers (a coupon granted to the wrong user, silently).
-- nginx forks its workers after init_by_lua, so this is the ordinary case
-- there, not a curiosity.  The child must start afresh and close nothing the
-- parent still uses.
local core = require("wechatpay.core")
local mock = require("wechatpay.mock")
local socket = require("socket")
local ossl = require("support.openssl")
local support = require("support.async")

local SLOW = os.getenv("WECHATPAY_VALGRIND") and 10 or 1

describe("after fork()", function()
  local dir, proc, server, users

  setup(function()
    dir = ossl.tmpdir()
    proc = require("support.process").api(dir)
    server = assert(mock.start{ latency = 0.05 * SLOW })
    users = support.users(server)
  end)
  teardown(function()
    if server then server:stop() end
    ossl.remove(dir)
  end)
  before_each(function() server:reset() end)


  -- What the mock recorded for a coupon id: "openid out_request_no".
  local function granted_to(coupon_id)
    local record = coupon_id and server:coupon(coupon_id)
    return record and (record.openid .. " " .. record.out_request_no) or "no such coupon"
  end

  it("parent and child each get the coupon they asked for (20 trials)", function()
    local problems, trials = {}, 20
    for trial = 1, trials do
      local client = server:client{ retry = false, timeout = 5 * SLOW }
      -- one call first, so the client holds a pooled connection when it forks
      assert(support.grant_async(client, users[1], support.request_no("PRE")):wait())
      local parent_user, child_user = users[2], users[3]
      local parent_no, child_no = support.request_no("PARENT"), support.request_no("CHILD")
      local child = proc.spawn(function()
        local res, err = support.grant_async(client, child_user, child_no):wait()
        if not res then return "error " .. tostring(err) end
        return "coupon " .. tostring(res:json().coupon_id)
      end)
      local res, err = support.grant_async(client, parent_user, parent_no):wait()
      local said = proc.collect(child)
      client:close()

      local parent_got = res and granted_to(res:json().coupon_id) or ("error " .. tostring(err))
      if parent_got ~= parent_user.openid .. " " .. parent_no then
        problems[#problems + 1] = ("trial %d: parent asked for %s, got %s"):format(trial, parent_no, parent_got)
      end
      local child_coupon = said:match("^coupon (%S+)$")
      local child_got = child_coupon and granted_to(child_coupon) or said
      if child_got ~= child_user.openid .. " " .. child_no then
        problems[#problems + 1] = ("trial %d: child asked for %s, got %s"):format(trial, child_no, child_got)
      end
      if #problems >= 4 then break end   -- broken: say so without waiting for 20
    end
    assert.same({}, problems)
    local stats = server:stats()
    assert.equal(3 * trials, stats.grants)
    assert.equal(3 * trials, stats.requests)
    -- each trial: the parent's one pooled connection, and the child's own
    assert.equal(2 * trials, stats.connections)
  end)

  it("a child that closes the client leaves the parent's connection alone", function()
    local client = server:client{ retry = false, timeout = 5 * SLOW }
    assert(support.grant_async(client, users[1], support.request_no("PRE")):wait())
    local child = proc.spawn(function()
      client:close()
      return "closed"
    end)
    assert.equal("closed", proc.collect(child))
    assert(support.grant_async(client, users[2], support.request_no("AFTER")):wait())
    client:close()
    -- the parent reused its connection: the child sent no TLS close_notify on it
    assert.equal(1, server:stats().connections)
  end)

  it("a child's garbage collector leaves the parent's connection alone", function()
    local holder = { session = core.http_session{ cafile = server.cafile } }
    local request = { method = "GET", url = server.base_url, timeout = 5 * SLOW }
    local function fetch(session)
      local id = session:submit(request)
      for _ = 1, 100 * SLOW do
        local done = session:perform(0.1)
        if done[1] then
          assert.equal(id, done[1].id)
          return done[1]
        end
      end
      error("no answer")
    end
    assert.equal(200, fetch(holder.session).status)
    local child = proc.spawn(function()
      holder.session = nil
      collectgarbage()
      collectgarbage()
      return "collected"
    end)
    assert.equal("collected", proc.collect(child))
    assert.equal(200, fetch(holder.session).status)
    holder.session:close()
    assert.equal(1, server:stats().connections)
  end)

  it("a transfer in flight at the fork fails in the child and finishes in the parent", function()
    local listener = assert(socket.bind("127.0.0.1", 0))
    listener:settimeout(5 * SLOW)
    local _, port = listener:getsockname()
    local session = core.http_session()
    local id = session:submit{ method = "GET", url = "http://127.0.0.1:" .. port .. "/slow", timeout = 5 * SLOW }
    session:perform(0)
    local conn = assert(listener:accept())
    conn:settimeout(5 * SLOW)
    local request = {}
    repeat   -- the whole request has arrived: it is in flight
      session:perform(0)
      local line = assert(conn:receive("*l"))
      request[#request + 1] = line
    until line == ""
    local child = proc.spawn(function()
      local found
      for _ = 1, 20 do   -- an unfixed child would wait here for the parent's answer
        for _, r in ipairs(session:perform(0.05)) do
          if r.id == id then found = r end
        end
        if found then break end
      end
      if not found then return "nothing reported" end
      return table.concat({ tostring(found.error), tostring(found.retry),
                            tostring(found.message), tostring(session:pending()) }, "|")
    end)
    local said = proc.collect(child)
    local error_kind, retry, message, pending = said:match("^([^|]*)|([^|]*)|([^|]*)|([^|]*)$")
    assert.equal("network", error_kind, said)
    assert.equal("idempotent", retry, said)
    assert.matches("fork", message)
    assert.equal("0", pending)

    -- the parent's transfer was untouched by the child and completes
    assert(conn:send("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nparent"))
    local got
    for _ = 1, 100 * SLOW do
      got = session:perform(0.05)[1]
      if got then break end
    end
    assert.equal(id, got.id)
    assert.equal(200, got.status)
    assert.equal("parent", got.body)
    conn:close()
    listener:close()
    session:close()
  end)

  it("a child can use the session at once, and its close is idempotent", function()
    local session = core.http_session{ cafile = server.cafile }
    local function fetch()
      session:submit{ method = "GET", url = server.base_url, timeout = 5 * SLOW }
      for _ = 1, 100 * SLOW do
        local r = session:perform(0.1)[1]
        if r then return r end
      end
    end
    assert.equal(200, fetch().status)
    local child = proc.spawn(function()
      local r = fetch()
      local before = session:pending()
      session:close()
      session:close()
      return tostring(r and r.status) .. " " .. before .. " " .. tostring(session)
    end)
    assert.equal("200 0 wechatpay.http_session (closed)", proc.collect(child))
    assert.equal(200, fetch().status)
    session:close()
    assert.equal(2, server:stats().connections)
  end)
end)
