--- The base URLs of a client with backups (base_url given as a list): which
-- one a call tries first and which next, and the memory of hosts that
-- failed to connect.
--
-- A host that failed before anything reached it (connect refused, DNS,
-- TLS, a connect timeout) is tried last for `cooldown` seconds, so a dead
-- primary costs one call a connect attempt, not every call.  When the time
-- is up, one call probes it again (the others keep to the backups until
-- that call's answer): an answer makes it the first choice again, another
-- failure starts a new cooldown.
--
-- The memory is one number per host, on the client (per worker inside
-- nginx): nothing grows with the calls made.
local hosts = {}
hosts.__index = hosts

--- new(urls, cooldown) -> hosts; urls as config.lua normalized them.
function hosts.new(urls, cooldown)
  local names = {}
  for i, url in ipairs(urls) do names[i] = url:match("^https://(.*)$") end
  return setmetatable({
    urls = urls,
    names = names,        -- host[:port], what the on_call record shows
    count = #urls,
    cooldown = cooldown,
    down_until = {},      -- index -> monotonic time until which it is tried last
  }, hosts)
end

-- Whether host i is in the set `tried`, a bit mask (1 for the first host,
-- 2 for the second...): a number, so a call allocates nothing for it.
local function has(tried, i)
  return math.floor(tried / 2 ^ (i - 1)) % 2 == 1
end

--- with(tried, i) -> tried with host i added.
function hosts.with(tried, i)
  if has(tried, i) then return tried end
  return tried + 2 ^ (i - 1)
end

--- pick(tried, now) -> the index of the host to try next, or nil when every
-- host is in tried.  Hosts not remembered as down come first, in the order
-- given; a host whose cooldown is over is probed by this call alone; then
-- the remembered ones, the one whose cooldown ends first.
function hosts:pick(tried, now)
  local down, soonest = self.down_until, nil
  for i = 1, self.count do
    if not has(tried, i) then
      local until_time = down[i]
      if until_time == nil then return i end
      if until_time <= now then
        down[i] = now + self.cooldown   -- the probe is this call's: the others keep away meanwhile
        return i
      end
      if soonest == nil or until_time < down[soonest] then soonest = i end
    end
  end
  return soonest
end

--- untried(tried) -> how many hosts are not in tried.
function hosts:untried(tried)
  local n = 0
  for i = 1, self.count do
    if not has(tried, i) then n = n + 1 end
  end
  return n
end

--- unreachable(i, now): host i failed before anything reached it.
function hosts:unreachable(i, now)
  if self.cooldown > 0 then self.down_until[i] = now + self.cooldown end
end

--- answered(i): host i answered (whatever the status): it is up.
function hosts:answered(i)
  if self.down_until[i] ~= nil then self.down_until[i] = nil end
end

return hosts
