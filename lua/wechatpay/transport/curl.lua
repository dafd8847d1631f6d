--- The libcurl transport: a request table in, a response table out.
--
-- A transport is any object with
--   transport:submit(request, callback) -> id    starts a request
--   transport:step(wait_seconds) -> n            runs transfers, calls callbacks of finished ones
--   transport:request(request) -> response | nil, err   one request, to completion
-- request  = { method, url, headers = { "Name: value", ... }, body, timeout, connect_timeout,
--              client_cert = true (present new{client_tls}'s certificate: APIv2 mutual TLS),
--              on_chunk }
-- on_chunk(bytes) -> true: optional; a 2xx body is then streamed to it in
--   pieces (between performs, never from a curl callback) and the response's
--   body is ""; any other return (or a raise) stops the transfer, which fails
--   with { kind = "network", stopped = true, retry = false }.  An interrupt
--   (Ctrl-C, errors.is_interrupt) raised there cancels the transfer, fails it
--   with { kind = "interrupted", raised = the error } and is raised again
--   from step once every finished transfer is dispatched.  A streamed
--   transfer that fails after handing bytes on says retry = false: a replay
--   would hand them again.
-- response = { status, headers = { lower_name = value }, body }
-- err      = { kind = "timeout" | "network", message, sent = bytes of request sent,
--              retry = "safe" (nothing reached the server) | "idempotent" (it may have) | false (permanent) }
-- Waiting on one request drives every other in flight on the same transport.
local core = require("wechatpay.core")
local errors = require("wechatpay.errors")

local curl_transport = {}
curl_transport.__index = curl_transport

-- { ["host:port"] = address } as curl's CURLOPT_RESOLVE list, sorted.
local function resolve_list(resolve)
  if not resolve then return nil end
  local list = {}
  for name, address in pairs(resolve) do
    if address:find(":", 1, true) then address = "[" .. address .. "]" end
    list[#list + 1] = name .. ":" .. address
  end
  table.sort(list)
  return list
end

--- new{ cafile, ca_pem, capath, proxy, resolve, max_connections, idle_timeout, max_body, client_tls }
-- client_tls = { cert = PEM, key = PEM or DER bytes, key_type = "PEM" | "DER", passphrase,
--                private_key = the key object those bytes load to }:
-- held by the session (from memory, never re-read) for requests with
-- client_cert.  An encrypted key goes to curl decrypted (the key object,
-- loaded here when not given): curl never holds the passphrase.
-- ca_pem (the bundle's bytes) is used instead of reading cafile again;
-- resolve = { ["host:port"] = address } pins names, as CURLOPT_RESOLVE.
-- The client key as the session takes it: bytes, or, for an encrypted
-- one, the key object it decrypts to.
local function client_key(tls)
  if not tls then return nil end
  if tls.private_key then return tls.private_key end
  if tls.passphrase == nil then return tls.key end
  local loaded, err = core.key_from_pem(tls.key, tls.passphrase)
  if not loaded then errors.raise("client_tls.key: " .. tostring(err)) end
  return loaded
end

function curl_transport.new(opts)
  opts = opts or {}
  local tls = opts.client_tls
  local key = client_key(tls)
  local self = setmetatable({
    session = core.http_session{
      cafile = opts.cafile,
      ca_pem = opts.ca_pem,
      resolve = resolve_list(opts.resolve),
      capath = opts.capath,
      proxy = opts.proxy,
      max_connections = opts.max_connections,
      idle_timeout = opts.idle_timeout or 7,   -- below WeChat Pay's 8 s keep-alive
      max_body = opts.max_body,
      client_cert = tls and tls.cert,
      client_key = key,
      client_key_type = type(key) == "string" and tls.key_type or nil,
    },
    callbacks = {},
    chunk_handlers = {},
    handed = {},   -- id -> true once a streamed transfer handed bytes on
    -- what perform gave and no callback has had yet: a callback may wait on
    -- a call whose result is further down, and its nested step takes it from here
    ready = {}, ready_head = 1, ready_tail = 0,
  }, curl_transport)
  return self
end

-- The session's request: the same fields, and stream = true when the
-- caller takes the body in pieces.
local function session_request(request)
  if not request.on_chunk then return request end
  local copy = {}
  for k, v in pairs(request) do if k ~= "on_chunk" then copy[k] = v end end
  copy.stream = true
  return copy
end

function curl_transport:submit(request, callback)
  local id = self.session:submit(session_request(request))
  self.callbacks[id] = callback
  self.chunk_handlers[id] = request.on_chunk
  return id
end

local STOPPED = "the response's consumer stopped the transfer"

-- Bytes of a streamed 2xx body to its handler: true when it wants more;
-- false, raised when it raised an interrupt, which must go on up.
local function hand_chunk(on_chunk, bytes)
  if bytes == "" then return true end
  local ok, more = pcall(on_chunk, bytes)
  if not ok and errors.is_interrupt(more) then return false, more end
  return ok and more == true
end

-- The failure of a transfer its handler stopped (raised: an interrupt).
local function stopped(raised, sent)
  if raised ~= nil then
    return { kind = "interrupted", message = "interrupted while taking the response's body", sent = sent or 0,
             retry = false, raised = raised }
  end
  return { kind = "network", message = STOPPED, sent = sent or 0, retry = false, stopped = true }
end

-- What a finished transfer's callback is called with; a streamed 2xx body's
-- last bytes go to its handler first.
local function outcome(r, on_chunk, handed)
  if r.error then
    return nil, { kind = r.error, message = r.message, sent = r.sent, retry = not handed and r.retry }
  end
  if on_chunk and r.status >= 200 and r.status < 300 then
    local more, raised = hand_chunk(on_chunk, r.body)
    if not more then return nil, stopped(raised) end
    return { status = r.status, headers = r.headers, body = "" }
  end
  return { status = r.status, headers = r.headers, body = r.body }
end

function curl_transport:pending()
  return self.session:pending()
end

-- Raises (once) the error of another transfer's callback that request()
-- kept back so that its caller got its own answer.
local function raise_held(self)
  local held = self.held_error
  if held ~= nil then
    self.held_error = nil
    error(held, 0)
  end
end

--- Runs transfers for up to `wait` seconds and dispatches what finished.
-- A callback that raises does not lose the others' results: the first
-- error is raised again once all are dispatched (an interrupt before any).
-- An error that request() kept back is raised first, before anything runs.
function curl_transport:step(wait)
  raise_held(self)
  -- results already waiting are delivered now, not after a wait for more
  local done = self.session:perform(self.ready_head <= self.ready_tail and 0 or (wait or 0))
  for i = 1, #done do
    self.ready_tail = self.ready_tail + 1
    self.ready[self.ready_tail] = done[i]
  end
  local first_error, interrupt, delivered = nil, nil, 0
  -- self's fields, read afresh: a nested step may have taken some meanwhile
  while self.ready_head <= self.ready_tail do
    local r = self.ready[self.ready_head]
    self.ready[self.ready_head] = nil
    self.ready_head = self.ready_head + 1
    delivered = delivered + 1
    local callback, on_chunk = self.callbacks[r.id], self.chunk_handlers[r.id]
    local res, failure
    if r.chunk then   -- a streamed transfer goes on, unless its handler says stop
      self.handed[r.id] = true
      local more, raised = true, nil
      if on_chunk then more, raised = hand_chunk(on_chunk, r.chunk) end
      if not more then
        self.session:cancel(r.id)
        failure = stopped(raised)
      end
    else
      res, failure = outcome(r, on_chunk, self.handed[r.id])
    end
    if failure and failure.kind == "interrupted" and interrupt == nil then interrupt = failure.raised end
    if res or failure then
      self.callbacks[r.id], self.chunk_handlers[r.id], self.handed[r.id] = nil, nil, nil
      if callback then
        local ok, err = pcall(callback, res, failure)
        if not ok and first_error == nil then first_error = err end
      end
    end
  end
  if self.ready_head > self.ready_tail then self.ready_head, self.ready_tail = 1, 0 end
  if interrupt ~= nil then error(interrupt, 0) end
  if first_error ~= nil then error(first_error, 0) end
  return delivered
end

--- request(request) -> response | nil, err: submits one request and drives
-- the transport until it is done.  Another transfer's callback may raise in
-- the step that finishes this one: its error is kept and raised by the next
-- step or request, so this caller still gets its answer (an interrupt goes
-- up at once).
-- A held error goes up before anything is sent, and a request() that
-- raises cancels its own transfer: nothing goes out for a caller who saw
-- a failure.
function curl_transport:request(request)
  raise_held(self)
  local result, failure, finished = nil, nil, false
  local id = self:submit(request, function(res, err)
    result, failure, finished = res, err, true
  end)
  while not finished do
    local ok, err = pcall(self.step, self, 1)
    if not ok then
      if not finished then
        self.session:cancel(id)
        self.callbacks[id], self.chunk_handlers[id], self.handed[id] = nil, nil, nil
        error(err, 0)
      end
      if errors.is_interrupt(err) then error(err, 0) end
      if self.held_error == nil then self.held_error = err end
    end
  end
  return result, failure
end

--- close(): drops every transfer in flight (their callbacks are never
-- called) and the pooled connections.
function curl_transport:close()
  self.ready, self.ready_head, self.ready_tail = {}, 1, 0
  self.callbacks = {}
  self.chunk_handlers = {}
  self.handed = {}
  self.session:close()
end

return curl_transport
