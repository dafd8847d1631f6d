--- Runs a client's calls on its transport: a queue bounded by
-- max_concurrency, an optional token-bucket rate limit, and timers for
-- retry backoff.  A job is signed only when it is sent, so a call that
-- waited in the queue still carries a fresh timestamp.
local core = require("wechatpay.core")

local dispatcher = {}
dispatcher.__index = dispatcher

local monotonic = core.monotonic

--- rate_limit: nil, a number of calls per minute, or { calls =, per = seconds, burst = }
local RATE_LIMIT_FIELDS = { calls = true, per = true, burst = true }
local RATE_LIMIT_USAGE = "rate_limit must be calls per minute or { calls = n, per = seconds [, burst = n >= 1] }"

local function new_bucket(rate_limit)
  if rate_limit == nil or rate_limit == false then return nil end
  local calls, per, burst
  if type(rate_limit) == "number" then
    calls, per = rate_limit, 60
  elseif type(rate_limit) == "table" then
    for field in pairs(rate_limit) do
      if not RATE_LIMIT_FIELDS[field] then
        error(("%s: unknown field '%s'"):format(RATE_LIMIT_USAGE, tostring(field)), 4)
      end
    end
    calls, per, burst = rate_limit.calls, rate_limit.per or 60, rate_limit.burst
  end
  if type(calls) ~= "number" or calls <= 0 or type(per) ~= "number" or per <= 0
      or (burst ~= nil and (type(burst) ~= "number" or burst < 1)) then
    error(RATE_LIMIT_USAGE, 4)
  end
  local rate = calls / per
  -- One call's worth by default: a fixed per-minute window on the server
  -- then never sees more than calls + 1.
  local capacity = burst or 1
  return { rate = rate, capacity = capacity, tokens = capacity, updated = monotonic() }
end

local function bucket_take(bucket, now)
  bucket.tokens = math.min(bucket.capacity, bucket.tokens + (now - bucket.updated) * bucket.rate)
  bucket.updated = now
  if bucket.tokens >= 1 then
    bucket.tokens = bucket.tokens - 1
    return 0
  end
  return (1 - bucket.tokens) / bucket.rate   -- seconds until a token
end

-- A transport with only request(request) -> response | nil, err (a test
-- double, a blocking one) still works: its calls complete one at a time.
local function sync_adapter(transport)
  local finished = {}
  return {
    submit = function(_, request, callback)
      local res, err = transport:request(request)
      finished[#finished + 1] = { callback, res, err }
    end,
    step = function()
      local list = finished
      finished = {}
      for i = 1, #list do list[i][1](list[i][2], list[i][3]) end
      return #list
    end,
  }
end

--- new(transport, { max_concurrency =, rate_limit = })
function dispatcher.new(transport, opts)
  if type(transport.submit) ~= "function" or type(transport.step) ~= "function" then
    transport = sync_adapter(transport)
  end
  opts = opts or {}
  local max = opts.max_concurrency or 16
  if type(max) ~= "number" or max < 1 or max % 1 ~= 0 then
    error("max_concurrency must be a positive integer", 3)
  end
  return setmetatable({
    transport = transport,
    max_concurrency = max,
    bucket = new_bucket(opts.rate_limit),
    queue = {}, head = 1, tail = 0,
    in_flight = 0,
    timers = {},
    pumping = false,
  }, dispatcher)
end

--- after(seconds, fn): runs fn from a later step.
function dispatcher:after(seconds, fn)
  local timers = self.timers
  timers[#timers + 1] = { due = monotonic() + seconds, fn = fn }
  table.sort(timers, function(a, b) return a.due < b.due end)
end

--- submit{ make = function() -> request end, done = function(raw, failure) end }
function dispatcher:submit(job)
  self.tail = self.tail + 1
  self.queue[self.tail] = job
  self:pump()
end

function dispatcher:queued()
  return self.tail - self.head + 1
end

-- Sends queued jobs while there is room and a token.
local function pump_queue(self)
  while self.in_flight < self.max_concurrency and self.head <= self.tail do
    if self.bucket then
      local delay = bucket_take(self.bucket, monotonic())
      if delay > 0 then
        self.waiting_for_token = true
        self:after(delay, function()
          self.waiting_for_token = false
          self:pump()
        end)
        break
      end
    end
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
  local ok, request = pcall(job.make)
  if not ok then
    -- Signing does not fail on its own: this is a closed key, a bug, or an
    -- interrupt (Ctrl-C).  The call fails, and the error goes on up to
    -- whoever is waiting, rather than being swallowed by the queue.
    job.done(nil, { kind = "config", message = tostring(request), sent = 0 })
    error(request, 0)
  end
  self.in_flight = self.in_flight + 1
  local submitted, err = pcall(self.transport.submit, self.transport, request, function(raw, failure)
    self.in_flight = self.in_flight - 1
    job.done(raw, failure)
    self:pump()
  end)
  if not submitted then
    self.in_flight = self.in_flight - 1
    job.done(nil, { kind = "config", message = tostring(err), sent = 0 })
    error(err, 0)
  end
end

local function run_due_timers(self)
  local timers, now = self.timers, monotonic()
  while timers[1] and timers[1].due <= now do
    local timer = table.remove(timers, 1)
    timer.fn()
  end
end

--- step([max_wait = 1]) -> false when there is nothing left to drive.
function dispatcher:step(max_wait)
  run_due_timers(self)
  self:pump()   -- jobs left queued by an error in an earlier pump
  local busy = self.in_flight > 0 or self.head <= self.tail
  if not busy and not self.timers[1] then return false end
  local wait = max_wait or 1
  if self.timers[1] then wait = math.max(0, math.min(wait, self.timers[1].due - monotonic())) end
  self.transport:step(wait)
  run_due_timers(self)
  return true
end

return dispatcher
