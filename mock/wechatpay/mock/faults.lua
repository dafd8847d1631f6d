-- Fault names, option checks (shared by the launcher, which raises on
-- programmer errors, and the worker, which re-checks what arrives over the
-- admin port), and the queue of armed faults kept in a shared dict.
local faults = {}

-- name -> option checker; each returns the normalised options or nil, err.
local function number_opt(opts, key, required, min)
  local value = opts[key]
  if value == nil then
    if required then
      return nil, "opts." .. key .. " is required"
    end
    return true
  end
  if type(value) ~= "number" or (min and value < min) then
    return nil, "opts." .. key .. " must be a number" .. (min and (" >= " .. min) or "")
  end
  return true
end

local function status_opt(opts, default)
  local status = opts.status or default
  if type(status) ~= "number" or status % 1 ~= 0 or status < 400 or status > 599 then
    return nil, "opts.status must be an integer HTTP error status (400..599)"
  end
  opts.status = status
  if opts.code ~= nil and type(opts.code) ~= "string" then
    return nil, "opts.code must be a string"
  end
  if opts.message ~= nil and type(opts.message) ~= "string" then
    return nil, "opts.message must be a string"
  end
  local after = opts.retry_after
  if after ~= nil and (type(after) ~= "number" or after % 1 ~= 0 or after < 0) then
    return nil, "opts.retry_after must be a whole number of seconds"
  end
  return true
end

-- The four response-signature headers, by the short names missing_headers accepts.
faults.SIGNATURE_HEADERS = {
  timestamp = "Wechatpay-Timestamp",
  nonce = "Wechatpay-Nonce",
  signature = "Wechatpay-Signature",
  serial = "Wechatpay-Serial",
}

local CHECKS = {
  tamper_body = function() return true end,
  signtest = function() return true end,
  unknown_serial = function(opts)
    if opts.serial ~= nil and type(opts.serial) ~= "string" then
      return nil, "opts.serial must be a string"
    end
    return true
  end,
  timestamp = function(opts)
    return number_opt(opts, "offset", true)
  end,
  date = function(opts)
    return number_opt(opts, "offset", true)
  end,
  missing_headers = function(opts)
    local names = opts.headers
    if names == nil then
      return true
    end
    if type(names) ~= "table" then
      return nil, "opts.headers must be a list of header names"
    end
    local normalised = {}
    for i, name in ipairs(names) do
      local short = type(name) == "string" and name:lower():gsub("^wechatpay%-", "")
      if not faults.SIGNATURE_HEADERS[short] then
        return nil, "opts.headers[" .. i .. "] must name a Wechatpay-* signature header"
      end
      normalised[#normalised + 1] = short
    end
    opts.headers = normalised
    return true
  end,
  status = function(opts)
    return status_opt(opts, 500)
  end,
  status_after_grant = function(opts)
    return status_opt(opts, 500)
  end,
  delay = function(opts)
    local ok, err = number_opt(opts, "seconds", true, 0)
    if not ok then
      return nil, err
    end
    if opts.then_process ~= nil and type(opts.then_process) ~= "boolean" then
      return nil, "opts.then_process must be a boolean"
    end
    if not opts.then_process then
      return status_opt(opts, 504)
    end
    return true
  end,
  reset = function() return true end,
  -- APIv2 (wechatpay.mock.v2)
  v2_bad_sign = function() return true end,
  v2_tamper_sign = function() return true end,
  v2_unsigned = function() return true end,
  v2_answer_sign_type = function(opts)
    if opts.sign_type ~= "MD5" and opts.sign_type ~= "HMAC-SHA256" then
      return nil, "opts.sign_type must be MD5 or HMAC-SHA256"
    end
    return true
  end,
  v2_return_fail = function(opts)
    if opts.message ~= nil and type(opts.message) ~= "string" then return nil, "opts.message must be a string" end
    return true
  end,
  v2_result_fail = function(opts)
    if opts.code ~= nil and type(opts.code) ~= "string" then return nil, "opts.code must be a string" end
    if opts.message ~= nil and type(opts.message) ~= "string" then return nil, "opts.message must be a string" end
    return true
  end,
  truncate = function(opts)
    return number_opt(opts, "missing", false, 1)
  end,
  -- bills: the first call names a hash the file does not have
  wrong_hash = function() return true end,
  -- bills: the file in chunked transfer encoding (a variant, not an error)
  chunked = function() return true end,
  -- bills: a complete answer holding only opts.keep (0..1, default 0.5) of the file
  cut = function(opts)
    local ok, err = number_opt(opts, "keep", false, 0)
    if ok and opts.keep and opts.keep >= 1 then return nil, "opts.keep must be below 1" end
    return ok, err
  end,
}

function faults.known(name)
  return CHECKS[name] ~= nil
end

-- Checks and normalises opts in place (a copy); returns opts or nil, err.
function faults.check(name, opts)
  if type(name) ~= "string" or not CHECKS[name] then
    local names = {}
    for known in pairs(CHECKS) do
      names[#names + 1] = known
    end
    table.sort(names)
    return nil, "unknown fault " .. tostring(name) .. " (known: " .. table.concat(names, ", ") .. ")"
  end
  if opts ~= nil and type(opts) ~= "table" then
    return nil, "fault options must be a table"
  end
  local copy = {}
  for k, v in pairs(opts or {}) do
    copy[k] = v
  end
  local count = copy.count or 1
  if type(count) ~= "number" or count % 1 ~= 0 or count < 1 then
    return nil, "opts.count must be a positive integer"
  end
  copy.count = count
  if copy.path ~= nil then
    if type(copy.path) ~= "string" then
      return nil, "opts.path must be a Lua pattern string"
    end
    local ok = pcall(string.find, "", copy.path)
    if not ok then
      return nil, "opts.path is not a valid Lua pattern"
    end
  end
  local ok, err = CHECKS[name](copy)
  if not ok then
    return nil, name .. ": " .. err
  end
  return copy
end

-- Queue operations, worker side. The queue is one JSON array under one key:
-- there is one worker and no yield between get and set, so this is atomic.
local QUEUE_KEY = "queue"

local function load_queue(dict, cjson)
  local queue = dict:get(QUEUE_KEY)
  return queue and cjson.decode(queue) or {}
end

function faults.arm(dict, cjson, name, opts)
  local queue = load_queue(dict, cjson)
  queue[#queue + 1] = { name = name, opts = opts, left = opts.count }
  dict:set(QUEUE_KEY, cjson.encode(queue))
  return #queue
end

function faults.clear(dict)
  dict:delete(QUEUE_KEY)
end

-- The first armed fault (in arming order) whose path pattern matches uri;
-- uses up one of its counts. Returns { name = ..., opts = ... } or nil.
function faults.take(dict, cjson, uri)
  local queue = load_queue(dict, cjson)
  for i, fault in ipairs(queue) do
    local pattern = fault.opts and fault.opts.path
    if pattern == nil or uri:find(pattern) then
      fault.left = fault.left - 1
      if fault.left <= 0 then
        table.remove(queue, i)
      end
      if #queue == 0 then
        dict:delete(QUEUE_KEY)
      else
        dict:set(QUEUE_KEY, cjson.encode(queue))
      end
      return fault
    end
  end
  return nil
end

function faults.pending(dict, cjson)
  return load_queue(dict, cjson)
end

return faults
