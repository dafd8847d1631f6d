--- Runs a client's calls on its transport: a queue bounded by
-- max_concurrency, an optional token-bucket rate limit, and timers for
-- retry backoff.  A job is signed only when it is sent, so a call that
-- waited in the queue still carries a fresh timestamp.
--
-- A job is { make = function() -> transport request | nil, failure end,
--            done = function(raw, failure) end }; done is called exactly
-- once: with the transport's outcome, or with a failure of kind "closed"
-- when the dispatcher is closed first, or "interrupted"/"internal" when
-- make raises, or with make's failure when it returns one instead of a
-- request (nothing is sent).  A job may carry `times`, a table to which the dispatcher
-- adds the seconds it spent queued (a slot, the rate limit), signing and
-- on the network (sent to answered), in queue_time, sign_time and
-- network_time; times.since is its scratch.  Without it, no clock is read.
local core = require("wechatpay.core")
local errors = require("wechatpay.errors")

local dispatcher = {}
dispatcher.__index = dispatcher

local monotonic = core.monotonic

-- A transport with only request(request) -> response | nil, err (a test
-- double, a blocking one) still works: its calls complete one at a time.
local function sync_adapter(transport)
  local finished, head, tail = {}, 1, 0
  return {
    submit = function(_, request, callback)
      local res, err = transport:request(request)
      tail = tail + 1
      finished[tail] = { callback, res, err }
    end,
    -- One completion at a time, taken off before its callback runs: when
    -- one raises (an interrupt), the others wait for the next step instead
    -- of being lost with their calls' promises.  What the callbacks submit
    -- waits for the next step too.
    step = function()
      local last, n = tail, 0
      while head <= last do
        local item = finished[head]
        finished[head] = nil
        head = head + 1
        n = n + 1
        item[1](item[2], item[3])
      end
      return n
    end,
    close = transport.close and function() transport:close() end,
  }
end

--- new(transport, { max_concurrency =, limiter = })
-- limiter: nil, or an object with take(now) -> seconds to wait before the
-- next call may be sent (wechatpay.ratelimit); it may be shared by several
-- dispatchers (one per nginx request) and several workers.
function dispatcher.new(transport, opts)
  if type(transport.submit) ~= "function" or type(transport.step) ~= "function" then
    transport = sync_adapter(transport)
  end
  opts = opts or {}
  return setmetatable({
    transport = transport,
    max_concurrency = opts.max_concurrency or 16,
    limiter = opts.limiter,
    queue = {}, head = 1, tail = 0,
    in_flight = 0,
    sent = {},        -- job -> true while the transport has it
    timers = {},
    pumping = false,
    closed = false,
  }, dispatcher)
end

local CLOSED = { kind = "closed", message = "the client was closed while this call was queued or in flight", sent = 0 }

-- A job that failed while being sent is settled from the next step, never
-- inside the pump, where a handler's own call would be queued behind a
-- pump that does not come back to it.
local function settle_later(self, job, failure)
  self:after(0, function() job.done(nil, failure) end)
end

--- after(seconds, fn): runs fn from a later step (at once on close).
-- Timers stay in order of their due time, the earlier of two equal first;
-- placed by a binary search, not a sort of them all (a batch with a large
-- max_concurrency may hold thousands).
function dispatcher:after(seconds, fn)
  local timers, due = self.timers, monotonic() + seconds
  local low, high = 1, #timers + 1
  while low < high do
    local mid = math.floor((low + high) / 2)
    if timers[mid].due <= due then low = mid + 1 else high = mid end
  end
  table.insert(timers, low, { due = due, fn = fn })
end

--- submit(job): queues a job; on a closed dispatcher it fails at once.
-- job.first puts it at the head of the queue: a retry or a failover, whose
-- deadline is already running, does not wait behind the rest of a batch.
function dispatcher:submit(job)
  if self.closed then return job.done(nil, CLOSED) end
  local times = job.times
  if times then times.since = monotonic() end
  if job.first then
    self.head = self.head - 1
    self.queue[self.head] = job
  else
    self.tail = self.tail + 1
    self.queue[self.tail] = job
  end
  self:pump()
end

function dispatcher:queued()
  return self.tail - self.head + 1
end

-- Sends queued jobs while there is room and a token.
local function pump_queue(self)
  while not self.closed and self.in_flight < self.max_concurrency and self.head <= self.tail do
    if self.limiter and not self.token then
      -- the slot is taken now; when it comes, the call goes without asking again
      local delay = self.limiter:take(monotonic())
      if delay > 0 then
        self.waiting_for_token = true
        self:after(delay, function()
          self.waiting_for_token = false
          self.token = true
          self:pump()
        end)
        break
      end
    end
    self.token = false
    local job = self.queue[self.head]
    self.queue[self.head] = nil
    self.head = self.head + 1
    self:send(job)
  end
end

-- An error from send() (an interrupt while signing, a request the transport
-- refuses) goes up to the caller, but never leaves the queue wedged.
function dispatcher:pump()
  if self.pumping or self.waiting_for_token then return end
  self.pumping = true
  local ok, err = pcall(pump_queue, self)
  self.pumping = false
  if not ok then error(err, 0) end
end

function dispatcher:send(job)
  local times = job.times
  local began = times and monotonic()
  local ok, request, refused = pcall(job.make)
  if not ok then
    -- Signing does not fail on its own: this is a closed key, a bug, or an
    -- interrupt (Ctrl-C).  The call fails, and the error goes on up to
    -- whoever is waiting, rather than being swallowed by the queue.
    settle_later(self, job, errors.from_raise(request, "while signing"))
    error(request, 0)
  end
  if request == nil then   -- make decided it is too late to send: nothing goes out
    return settle_later(self, job, refused)
  end
  if times then
    local signed = monotonic()
    times.queue_time = times.queue_time + (began - times.since)
    times.sign_time = times.sign_time + (signed - began)
    times.since = signed
  end
  self.in_flight = self.in_flight + 1
  self.sent[job] = true
  local submitted, err = pcall(self.transport.submit, self.transport, request, function(raw, failure)
    if not self.sent[job] then return end   -- already failed by close()
    self.sent[job] = nil
    self.in_flight = self.in_flight - 1
    if times then times.network_time = times.network_time + (monotonic() - times.since) end
    job.done(raw, failure)
    self:pump()
  end)
  if not submitted then
    if self.sent[job] then
      self.sent[job] = nil
      self.in_flight = self.in_flight - 1
    end
    settle_later(self, job, errors.from_raise(err, "the transport refused the request"))
    error(err, 0)
  end
end

local function run_due_timers(self, all)
  local timers, now = self.timers, monotonic()
  while timers[1] and (all or timers[1].due <= now) do
    local timer = table.remove(timers, 1)
    timer.fn()
  end
end

--- step([max_wait = 1]) -> false when there is nothing left to drive.
function dispatcher:step(max_wait)
  if self.closed then return false end
  run_due_timers(self)
  self:pump()   -- jobs left queued by an error in an earlier pump
  local transport = self.transport
  -- a transport may still be running a callback that waits on a nested call
  local busy = self.in_flight > 0 or self.head <= self.tail or (transport.busy and transport:busy())
  if not busy and not self.timers[1] then return false end
  local wait = max_wait or 1
  if self.timers[1] then wait = math.max(0, math.min(wait, self.timers[1].due - monotonic())) end
  self.transport:step(wait)
  run_due_timers(self)
  return true
end

--- close(): fails every queued and in-flight job with kind "closed", runs
-- the pending timers (a retry then fails the same way), closes the
-- transport.  Safe from inside a job's done callback, and twice.
function dispatcher:close()
  if self.closed then return end
  self.closed = true
  local failed = {}
  for i = self.head, self.tail do failed[#failed + 1] = self.queue[i]; self.queue[i] = nil end
  self.head, self.tail = 1, 0
  for job in pairs(self.sent) do failed[#failed + 1] = job end
  self.sent, self.in_flight = {}, 0
  if self.transport.close then self.transport:close() end
  local first_error
  local function settle(fn, ...)
    local ok, err = pcall(fn, ...)
    if not ok and first_error == nil then first_error = err end
  end
  for _, job in ipairs(failed) do settle(job.done, nil, CLOSED) end
  while self.timers[1] do settle(run_due_timers, self, true) end
  if first_error ~= nil then error(first_error, 0) end
end

return dispatcher
