--- Progress of a batch on stderr: a bar redrawn in place on a terminal,
-- plain lines (every `interval` seconds or every 10 %) anywhere else.
--
--   local p = progress.new{ total = 1000, mode = "bar" | "lines" | "off" }
--   p:update{ done =, sent =, failed = }   -- done counts skipped rows too
--   p:finish()
local core = require("wechatpay.core")

local progress = {}
progress.__index = progress

local BAR_WIDTH = 24
local REDRAW_EVERY = 0.1

--- is_terminal(fd) -> true when fd is a terminal (`test -t`), on 5.1 and 5.4
function progress.is_terminal(fd)
  local a = os.execute("test -t " .. (fd or 2))
  return a == true or a == 0
end

local function duration(seconds)
  if seconds ~= seconds or seconds == math.huge then return "--:--" end
  seconds = math.floor(seconds + 0.5)
  local h, m, s = math.floor(seconds / 3600), math.floor(seconds / 60) % 60, seconds % 60
  if h > 0 then return ("%d:%02d:%02d"):format(h, m, s) end
  return ("%d:%02d"):format(m, s)
end
progress.duration = duration

--- new{ total =, mode =, out = io.stderr, interval = 10, clock = monotonic }
function progress.new(opts)
  local clock = opts.clock or core.monotonic
  local self = setmetatable({
    total = opts.total or 0,
    mode = opts.mode or "lines",
    out = opts.out or io.stderr,
    interval = opts.interval or 10,
    clock = clock,
    started = clock(),
    last_draw = -math.huge,
    last_decile = 0,
    width = 0,
    state = { done = 0, sent = 0, failed = 0 },
  }, progress)
  self.last_line = self.started
  return self
end

-- Rate of rows actually sent (skipped rows cost nothing), and the time left.
function progress:figures()
  local s = self.state
  local elapsed = math.max(self.clock() - self.started, 1e-6)
  local rate = s.sent / elapsed
  local left = self.total - s.done
  local eta = left <= 0 and 0 or (rate > 0 and left / rate or math.huge)
  return rate, eta, elapsed
end

function progress:line()
  local s = self.state
  local rate, eta = self:figures()
  local pct = self.total > 0 and math.floor(s.done * 100 / self.total) or 100
  local text = ("%d/%d %3d%%  %.1f/s  ETA %s"):format(s.done, self.total, pct, rate, duration(eta))
  if s.failed > 0 then text = text .. ("  failed %d"):format(s.failed) end
  return text, pct
end

function progress:draw_bar()
  local s = self.state
  local filled = self.total > 0 and math.floor(s.done * BAR_WIDTH / self.total) or BAR_WIDTH
  local text = "[" .. ("#"):rep(filled) .. ("."):rep(BAR_WIDTH - filled) .. "] " .. self:line()
  -- Pad over what the previous, longer line left behind.
  local pad = math.max(0, self.width - #text)
  self.width = #text
  self.out:write("\r", text, (" "):rep(pad))
  self.out:flush()
end

--- update(state): state.done, state.sent, state.failed so far
function progress:update(state)
  if state then self.state = state end
  if self.mode == "off" then return end
  local now = self.clock()
  if self.mode == "bar" then
    if now - self.last_draw >= REDRAW_EVERY or self.state.done >= self.total then
      self.last_draw = now
      self:draw_bar()
    end
    return
  end
  local text, pct = self:line()
  local decile = math.floor(pct / 10)
  if decile > self.last_decile or now - self.last_line >= self.interval then
    self.last_decile, self.last_line = math.max(decile, self.last_decile), now
    self.out:write("progress: ", text, "\n")
    self.out:flush()
  end
end

--- finish(): the final state, and the bar's line ended.
function progress:finish()
  if self.mode == "bar" then
    self:draw_bar()
    self.out:write("\n")
    self.out:flush()
  end
end

return progress
