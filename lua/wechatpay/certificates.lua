--- Platform certificates: the download of GET /v3/certificates, where they
-- are kept, and when they are refreshed.  WeChat Pay signs with one of two
-- overlapping certificates and rotates before the older expires; a
-- merchant on a WeChat Pay public key (PUB_KEY_ID_...) has none, and the
-- download answers it 404 "无可用的平台证书".  An expired certificate is
-- neither kept nor trusted.
--
-- A download is trusted because each certificate is sealed with the APIv3
-- key (AES-256-GCM authenticates it) and the response is signed by one of
-- the certificates it delivers (or a key the client already trusts).
--
-- A certificate store is any object with
--   store:load() -> { [serial] = PEM text }        what is kept
--   store:save(serial, pem) -> true | nil, err     keep one more
--   store:lock(ttl) -> true | false   (optional)   one downloader at a time
--   store:unlock()                    (optional)
--   store:locked() -> boolean         (optional)   another process downloads now
--   store:stamp()                     (optional)   a download just ended well
--   store:age() -> seconds | nil      (optional)   since the last stamp
--   store:claim_auto(ttl) -> boolean  (optional)   true for one automatic refresh per ttl, among all
--                                                   that share the store (a forged callback's unknown
--                                                   serial starts one in whichever worker it reaches)
--   certificates.dir_store(path)             files wechatpay_<serial>.pem, written atomically
--   certificates.shared_dict_store(ngx.shared.NAME)   every nginx worker of one server
-- Without a store the certificates are kept in the client only.
local aes = require("wechatpay.aes")
local core = require("wechatpay.core")
local errors = require("wechatpay.errors")
local key = require("wechatpay.key")
local promise = require("wechatpay.promise")
local response = require("wechatpay.response")
local verify = require("wechatpay.verify")

local certificates = {}

certificates.PATH = "/v3/certificates"
--- seconds between periodic refreshes, and the least time between two
-- downloads that an unknown serial (or a failed refresh) may start
certificates.REFRESH_INTERVAL = 12 * 3600
certificates.MIN_INTERVAL = 60
--- the longest a worker that finds the store locked waits (inside nginx,
-- in a request or a timer) for the other worker's download
certificates.LOCK_WAIT = 5
--- what WeChat Pay answers a merchant that has only a public key
certificates.NO_CERTIFICATES = "无可用的平台证书"

local function is_public_key_id(id)
  return type(id) == "string" and id:find("^PUB_KEY_ID_") ~= nil
end

local function is_serial(id)
  return type(id) == "string" and id:find("^%x+$") ~= nil and #id <= 64
end

-- wall-clock seconds: every worker reads the same clock
local function wall_now()
  if type(ngx) == "table" and type(ngx.now) == "function" then return ngx.now() end
  return os.time()
end

--- expired(cert [, now]) -> true when a certificate (a download's entry or
-- key:certificate()) is past its not_after: WeChat Pay signs with it no
-- more, so it is neither kept nor trusted.
function certificates.expired(cert, now)
  return cert.not_after < (now or wall_now())
end

-- ---- one download ------------------------------------------------------------------

-- A delivered certificate as a loaded key, checked; or nil, err.
local function open_certificate(apiv3_key, entry, merchant_serial)
  if type(entry) ~= "table" or type(entry.serial_no) ~= "string" or type(entry.encrypt_certificate) ~= "table" then
    return nil, errors.new("malformed", "certificate download: an entry lacks serial_no or encrypt_certificate")
  end
  local serial = key.normalize_serial(entry.serial_no)
  if not is_serial(serial) then
    return nil, errors.new("malformed", "certificate download: serial_no is not a hex serial")
  end
  local pem, why, kind = aes.decrypt_resource(apiv3_key, entry.encrypt_certificate)
  if kind == "malformed" then   -- no key could open it: the APIv3 key is not to blame
    return nil, errors.new("malformed", ("certificate %s: encrypt_certificate is not a resource WeChat Pay sends: %s")
      :format(serial, why))
  elseif not pem then
    return nil, errors.new("decrypt", ("certificate %s does not decrypt with the client's apiv3_key "
      .. "(check the APIv3 key: 32 characters from the merchant platform, not the APIv2 key): %s")
      :format(serial, tostring(why)))
  end
  local loaded, err = key.public(pem)
  local cert = loaded and loaded:certificate()
  if not cert then
    return nil, errors.new("malformed", ("certificate %s: the decrypted text is not an X.509 certificate: %s")
      :format(serial, tostring(err or "a bare public key")))
  end
  if cert.serial ~= serial then
    return nil, errors.new("malformed", ("certificate download: serial_no %s names a certificate whose serial is %s")
      :format(serial, cert.serial))
  end
  if serial == merchant_serial then
    return nil, errors.new("malformed", "certificate download: a delivered certificate has the merchant's own serial")
  end
  return {
    serial = serial, key = loaded, pem = pem,
    effective_time = entry.effective_time, expire_time = entry.expire_time,
    not_before = cert.not_before, not_after = cert.not_after,
  }
end

--- check_download(apiv3_key, known, raw, target, merchant_serial) -> response | nil, err
-- raw: the transport's answer.  The response gets .certificates, a list
-- of { serial, key, pem, effective_time, expire_time, not_before, not_after }.
function certificates.check_download(apiv3_key, known, raw, target, merchant_serial)
  if raw.status < 200 or raw.status >= 300 then
    return verify.response(known, raw, target)   -- the API error, unverified
  end
  local res = response.new(raw)
  local decoded = res:json()
  if type(decoded) ~= "table" or type(decoded.data) ~= "table" then
    return nil, errors.new("malformed", "certificate download: the body is not {\"data\":[...]}", { response = res })
  end
  local list, keys = {}, {}
  for id, k in pairs(known) do keys[id] = k end
  for _, entry in ipairs(decoded.data) do
    local cert, err = open_certificate(apiv3_key, entry, merchant_serial)
    if not cert then
      err.response = res
      return nil, err
    end
    list[#list + 1] = cert
    -- an expired one is listed (to be reported) but verifies nothing
    if not certificates.expired(cert) then keys[cert.serial] = keys[cert.serial] or cert.key end
  end
  local ok, reason = verify.signed(keys, res.headers, res.body)
  if not ok then
    return nil, errors.new("verify", "certificate download: " .. reason, {
      status = res.status, request_id = res.headers["request-id"], response = res })
  end
  res.certificates = list
  return res
end

--- true for WeChat Pay's answer to a merchant that has only a public key.
function certificates.is_public_key_only(err)
  return type(err) == "table" and err.kind == "http" and err.status == 404
    and (type(err.message) == "string" and err.message:find(certificates.NO_CERTIFICATES, 1, true) ~= nil)
end

-- ---- stores ---------------------------------------------------------------------------

local DirStore = {}
DirStore.__index = DirStore

--- dir_store(path) -> store of files wechatpay_<SERIAL>.pem in path.
function certificates.dir_store(path)
  if type(path) ~= "string" or path == "" or path:find("%z") then
    error("certificates.dir_store: path must be a directory path", 2)
  end
  return setmetatable({ path = path:gsub("/+$", "") }, DirStore)
end

function DirStore:file(serial)
  return self.path .. "/wechatpay_" .. serial .. ".pem"
end

-- Listed by core.list_dir, never io.popen("ls"): this runs when a callback
-- names an unknown serial, before its signature is checked, and a fork
-- there would stall an nginx worker at a stranger's request.
function DirStore:load()
  local found = {}
  local names = core.list_dir(self.path)
  for _, name in ipairs(names or {}) do
    local serial = name:match("^wechatpay_(%x+)%.pem$")
    if serial then
      local f = io.open(self.path .. "/" .. name, "rb")
      if f then
        found[serial:upper()] = f:read("*a")
        f:close()
      end
    end
  end
  return found
end

-- temp file + rename: a reader sees the old file or the new one, never half.
-- A certificate is public, but what verifies every answer and callback: it
-- is written 0644 (or as the file it replaces), never writable by others,
-- whatever the umask.
function DirStore:save(serial, pem)
  if not is_serial(serial) then return nil, "not a hex serial" end
  local final = self:file(serial)
  local temp = ("%s/.wechatpay_%s.pem.%s.tmp"):format(self.path, serial, core.nonce(16))
  local guard, err = core.temp_file(temp, final, tonumber("644", 8))
  if not guard then return nil, tostring(err) end
  local written, werr = guard:write(pem)
  if not written then
    guard:remove()
    return nil, werr
  end
  -- synced before it is renamed into place, as a bill is: after a crash
  -- the file is whole or absent, never an empty one that loads as nothing
  return guard:commit(final)
end

local DictStore = {}
DictStore.__index = DictStore

--- shared_dict_store(dict [, { prefix = "wechatpay:cert:" }]) -> store
-- dict: an ngx.shared.DICT (get/set/add/delete/incr).  Serials are listed
-- under numbered keys (incr is atomic), so no worker's save is lost.
function certificates.shared_dict_store(dict, opts)
  if type(dict) ~= "table" and type(dict) ~= "userdata" then
    error("certificates.shared_dict_store: an ngx.shared.DICT is required", 2)
  end
  return setmetatable({ dict = dict, prefix = (opts and opts.prefix) or "wechatpay:cert:" }, DictStore)
end

function DictStore:load()
  local found, dict, p = {}, self.dict, self.prefix
  for i = 1, dict:get(p .. "count") or 0 do
    local serial = dict:get(p .. "serial:" .. i)
    local pem = serial and dict:get(p .. "pem:" .. serial)
    if pem then found[serial] = pem end
  end
  return found
end

-- A dict that had to evict to make room may have dropped another
-- certificate or the list: said, so certificate_stats() shows it.
local CROWDED = "the shared dict is full and evicted older entries: give its lua_shared_dict more room"

function DictStore:save(serial, pem)
  local dict, p = self.dict, self.prefix
  local ok, err, forcible = dict:add(p .. "pem:" .. serial, pem)
  if not ok then
    if err == "exists" then return true end
    return nil, "shared dict: " .. tostring(err)
  end
  local n, ierr, counted_forcibly = dict:incr(p .. "count", 1, 0)
  if not n then return nil, "shared dict: " .. tostring(ierr) end
  local listed, lerr, listed_forcibly = dict:set(p .. "serial:" .. n, serial)
  if not listed then return nil, "shared dict: " .. tostring(lerr) end
  if forcible or counted_forcibly or listed_forcibly then return nil, CROWDED end
  return true
end

function DictStore:lock(ttl)
  return (self.dict:add(self.prefix .. "lock", true, ttl or certificates.MIN_INTERVAL)) and true or false
end

function DictStore:unlock()
  self.dict:delete(self.prefix .. "lock")
end

-- The dict's one automatic refresh a minute: an entry that expires, never
-- deleted early, so no worker downloads for an unknown serial within a
-- minute of another's.
function DictStore:claim_auto(ttl)
  return (self.dict:add(self.prefix .. "auto", true, ttl)) and true or false
end

function DictStore:locked()
  return self.dict:get(self.prefix .. "lock") ~= nil
end

function DictStore:stamp()
  self.dict:set(self.prefix .. "refreshed", wall_now())
end

function DictStore:age()
  local at = self.dict:get(self.prefix .. "refreshed")
  return at and math.max(0, wall_now() - at) or nil
end

-- ---- the manager: one per client ---------------------------------------------------------

local Manager = {}
Manager.__index = Manager

--- manager{ keys, apiv3_key, merchant_serial, fetch, store, interval, clock, sleeper, stale_after }
-- keys: the client's map, which refreshes only ever add to;
-- fetch(check) -> promise of the checked download response;
-- sleeper() -> a sleep(seconds) that yields (ngx.sleep in a request or
-- timer) or nil where none may be used; stale_after: seconds after which
-- a download still in flight can no longer settle (longer than any call's
-- deadline) and is no longer joined.
function certificates.manager(opts)
  local self = setmetatable({
    keys = opts.keys, apiv3_key = opts.apiv3_key, merchant_serial = opts.merchant_serial,
    fetch = opts.fetch, store = opts.store, on_change = opts.on_change, sleeper = opts.sleeper,
    stale_after = opts.stale_after or 600,
    interval = opts.interval == nil and certificates.REFRESH_INTERVAL or opts.interval,
    clock = opts.clock or core.monotonic,
    downloads = 0,
    awaiting = 0,   -- requests of this process waiting for another's download
  }, Manager)
  self.last_refresh = self.clock()
  if self.store then self:load_store() end
  return self
end

-- What went wrong during a refresh that did not fail it (a store method
-- that raised, a certificate not kept): last_error shows it, and a
-- download that then succeeds keeps it there rather than clearing it.
function Manager:note(message)
  self.noted = message
  self.last_error = message
end

-- A store's optional method (a Redis-backed store may raise on a broken
-- connection): -> its result, or nil, true when it raised (kept in
-- last_error).  An unknown serial in a forged callback reaches these: the
-- caller gets nil, err, never the store's raise.
function Manager:ask_store(method, ...)
  local ok, result = pcall(self.store[method], self.store, ...)
  if ok then return result end
  if errors.is_interrupt(result) then error(result, 0) end
  self:note(("the certificate store's %s failed: %s"):format(method, tostring(result)))
  return nil, true
end

-- Adds a certificate unless its serial is known; true when added.  Its
-- callers (accept, load_store) have already refused an expired one.
function Manager:add(serial, loaded)
  if self.keys[serial] or serial == self.merchant_serial then return false end
  self.keys[serial] = loaded
  return true
end

--- Picks up what another process or worker saved.  -> how many were new
function Manager:load_store()
  local added = 0
  local ok, found = pcall(self.store.load, self.store)
  if not ok or type(found) ~= "table" then return 0 end
  for serial, pem in pairs(found) do
    serial = key.normalize_serial(serial)
    if is_serial(serial) and not self.keys[serial] and type(pem) == "string" then
      local loaded = key.public(pem)
      local cert = loaded and loaded:certificate()
      if cert and cert.serial == serial and not certificates.expired(cert) and self:add(serial, loaded) then
        added = added + 1
      end
    end
  end
  if added > 0 and self.on_change then self.on_change() end
  return added
end

--- true when the client can download (an APIv3 key, not a public-key-only merchant).
function Manager:enabled()
  return self.apiv3_key ~= nil and not self.public_key_only
end

local function holds_certificates(keys)
  for id in pairs(keys) do
    if not is_public_key_id(id) then return true end
  end
  return false
end

-- The download in flight, unless it is stale: inside nginx the request
-- (or timer) that drove it may have ended first, taking its light threads
-- with it (ngx.exit does), and such a promise never settles.  A stale one
-- is dropped, so the next refresh downloads instead of joining it.
function Manager:running()
  local p = self.inflight
  if p and (p.state ~= "pending" or self.clock() - self.inflight_since > self.stale_after) then
    self.inflight = nil
    return nil
  end
  return p
end

--- scheduled(true | false): a background refresh waits for its timer (the
-- client's, inside nginx), which counts as running.  A timer nginx dropped
-- (lua_max_running_timers reached) never says so: after MIN_INTERVAL the
-- mark no longer counts.
function Manager:scheduled(waiting)
  self.scheduled_at = waiting and self.clock() or nil
end

--- true when a periodic refresh is due: only for merchants on certificates.
function Manager:due()
  if not self:enabled() or self:running() or not self.interval then return false end
  local now = self.clock()
  if self.scheduled_at and now - self.scheduled_at < certificates.MIN_INTERVAL then return false end
  if now - self.last_refresh < self.interval then return false end
  if self.last_attempt and now - self.last_attempt < certificates.MIN_INTERVAL then return false end
  return holds_certificates(self.keys)
end

--- true when a verify error names an unknown certificate serial that a
-- refresh may bring: single-flight, at most one download a minute.
function Manager:wants(err)
  if type(err) ~= "table" or err.kind ~= "verify" or not is_serial(err.unknown_serial) then return false end
  -- another process or worker may have saved it (a cron job's cert_dir, a
  -- shared dict): look there first, at most once a second
  if self.store and not self:running() then
    local now = self.clock()
    if not self.last_load or now - self.last_load >= 1 then
      self.last_load = now
      if self:load_store() > 0 and self.keys[err.unknown_serial] then return "reloaded" end
    end
  end
  if not self:enabled() then return false end
  -- joining a download, or waiting for another worker's, costs no download
  if self:running() or self.awaiting > 0 then return true end
  if self.store and self.store.locked and self:ask_store("locked") then return true end
  return not self.last_auto or self.clock() - self.last_auto >= certificates.MIN_INTERVAL
end

-- What a finished download does: keep the new ones, everywhere.
function Manager:accept(list)
  local added = 0
  for _, cert in ipairs(list) do
    if certificates.expired(cert) then
      self:note(("certificate %s expired: not kept"):format(cert.serial))
    else
      if self:add(cert.serial, cert.key) then added = added + 1 end
      if self.store then
        -- the client has it either way; the stats say the store does not
        local saved, err = self.store:save(cert.serial, cert.pem)
        if not saved then self:note("kept in memory; the store did not keep it safely: " .. tostring(err)) end
      end
    end
  end
  self.last_refresh = self.clock()
  if self.store and self.store.stamp then pcall(self.store.stamp, self.store) end
  if added > 0 and self.on_change then self.on_change() end
  return added
end

--- Another worker holds the store's lock: wait (yielding, bounded by
-- LOCK_WAIT) until its download ends, then take what it saved.  Where no
-- sleep may be used, only looks once.  -> how many were new
local LOCK_STEP = 0.05

function Manager:await_store()
  local sleep = self.sleeper and self.sleeper()
  if sleep and self.store.locked then
    for _ = 1, math.ceil(certificates.LOCK_WAIT / LOCK_STEP) do
      if not self:ask_store("locked") then break end
      sleep(LOCK_STEP)
    end
  end
  return self:load_store()
end

--- refresh_async(driver [, auto [, max_age]]) -> promise of the number of
-- certificates added; auto: started by an unknown serial or the period
-- (rate-limited); max_age: no download when the store says one ended
-- less than max_age seconds ago (another worker's), only a load.  A
-- refresh already running is joined, never doubled.  A failure adds
-- nothing and drops nothing; WeChat Pay's 404 for a public-key-only
-- merchant resolves with 0 and turns automatic downloads off.
function Manager:refresh_async(driver, auto, max_age)
  local running = self:running()
  if running then return running end
  -- WeChat Pay has said (404) it has no certificates for this merchant
  if self.public_key_only then return promise.resolved(0, driver) end
  if auto then self.last_auto = self.clock() end
  self.noted = nil
  local locked   -- this refresh holds the store's lock
  if self.store then
    local loaded = self:load_store()
    -- another worker or process brought new certificates since this one
    -- last looked: what an automatic refresh is for, without a download
    if auto and loaded > 0 then return promise.resolved(loaded, driver) end
    local age = max_age and self.store.age and self:ask_store("age")
    if age and age < max_age then
      self.last_refresh = self.clock()
      return promise.resolved(loaded, driver)
    end
    local broken
    if self.store.lock then locked, broken = self:ask_store("lock", certificates.MIN_INTERVAL) end
    -- a store whose lock raised is passed by: a download without it
    if self.store.lock and not locked and not broken then
      -- another worker downloads; its certificates arrive through the store
      self.last_attempt = self.clock()
      self.awaiting = self.awaiting + 1
      local ok, added = pcall(self.await_store, self)
      self.awaiting = self.awaiting - 1
      if not ok then error(added, 0) end
      return promise.resolved(loaded + added, driver)
    end
    if self.store.lock and auto then
      -- another worker's download may have ended (saved, then unlocked)
      -- between the look above and taking the lock: look again
      local late = self:load_store()
      if late > 0 then
        if locked then self:ask_store("unlock") end
        return promise.resolved(loaded + late, driver)
      end
    end
    -- at most one automatic download a minute per merchant, not per
    -- worker: forged callbacks with made-up serials reach every worker.
    -- Asked once the lock is taken, so a download in flight is waited for.
    if auto and self.store.claim_auto and self:ask_store("claim_auto", certificates.MIN_INTERVAL) == false then
      if locked then self:ask_store("unlock") end
      -- another worker's download: what it brings arrives through the store
      -- (and a periodic refresh is not due again for its interval)
      self.last_attempt, self.last_refresh = self.clock(), self.clock()
      return promise.resolved(loaded, driver)
    end
  end
  self.last_attempt = self.clock()
  self.downloads = self.downloads + 1
  local apiv3_key = self.apiv3_key
  local check = function(raw, target)
    return certificates.check_download(apiv3_key(), self.keys, raw, target, self.merchant_serial)
  end
  local p
  local function done()
    -- a stale download that settles after all no longer owns the lock
    if self.inflight ~= p and p ~= nil then return end
    self.inflight = nil
    if locked and self.store.unlock then self:ask_store("unlock") end
  end
  p = self.fetch(check):next(function(res)
    self.last_error = self.noted
    -- saved before the lock is dropped: a worker waiting on it finds them
    local ok, added = pcall(self.accept, self, res.certificates)
    done()
    if not ok then error(added, 0) end
    return added, res
  end, function(err)
    done()
    if certificates.is_public_key_only(err) then
      self.public_key_only = true
      return 0
    end
    self.last_error = err
    error(err, 0)
  end)
  if p.state == "pending" then self.inflight, self.inflight_since = p, self.clock() end
  return p
end

return certificates
