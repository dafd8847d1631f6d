--- The nginx transport: HTTP/1.1 over ngx.socket.tcp cosockets, one light
-- thread (ngx.thread) per call, so a call never blocks the worker: while it
-- waits for WeChat Pay, nginx serves every other request.
--
-- The same interface as transport/curl.lua (submit/step/close); a request
-- table in, { status, headers = { lower_name = value }, body } or a failure
-- { kind = "network" | "timeout", message, sent, retry = "safe" | "idempotent" | false } out.
-- request.on_chunk(bytes) -> true streams a 2xx body to it in pieces of at
-- most STREAM_PIECE bytes (Content-Length, chunked or to the end of the
-- connection), from the call's light thread; the response's body is then "".
-- An interrupt (errors.is_interrupt) raised by on_chunk closes the
-- connection, fails the call with { kind = "interrupted", raised } and is
-- raised again from step, in the thread that waits.
--
-- One transport belongs to one request context (a request or a timer: its
-- light threads and semaphore cannot serve another).  Connections outlive
-- it in nginx's cosocket pool (setkeepalive: idle 7 s, below WeChat Pay's
-- 8 s), named by scheme, host, port, address and trust settings, so a
-- reused connection skips the TLS handshake.
--
-- TLS is always verified: sslhandshake(nil, host, true) against nginx's
-- lua_ssl_trusted_certificate, up to lua_ssl_verify_depth.
--
-- Mutual TLS (APIv2 security = true, request.client_cert): the merchant
-- certificate and key are parsed once per worker (ngx.ssl) into the holder
-- the client gives, presented with tcpsock:setclientcert, and such
-- connections pool apart from the others.
local core = require("wechatpay.core")
local errors = require("wechatpay.errors")

local ngx_transport = {}
ngx_transport.__index = ngx_transport

--- Declares that this transport never blocks the worker.
ngx_transport.nonblocking = true

local DEFAULT_MAX_BODY = 64 * 1024 * 1024
local MAX_HEADER_BYTES = 64 * 1024
local STREAM_PIECE = 256 * 1024
local SEND_PIECE = 64 * 1024
local STREAM_ERROR_BODY = 64 * 1024   -- a streamed request's non-2xx body: WeChat Pay's JSON error
local STOPPED = "the response's consumer stopped the transfer"
local monotonic = core.monotonic

--- new{ resolve = { ["host:port"] = address }, pool_size, idle_timeout (s), max_body, client_tls }
-- client_tls: { source = function() -> { cert = PEM, key =, key_type =, passphrase } end, serial = },
-- a holder kept by the client: what is parsed from it stays there.
function ngx_transport.new(opts)
  opts = opts or {}
  return setmetatable({
    client_tls = opts.client_tls,
    resolve = opts.resolve or {},
    pool_size = opts.pool_size or 64,
    idle_ms = math.floor((opts.idle_timeout or 7) * 1000),
    max_body = opts.max_body or DEFAULT_MAX_BODY,
    running = 0,
    dispatching = {},   -- light thread -> true while it runs a callback (a handler may wait in one)
    finished = {},      -- spawning thread -> the light threads of its calls that ended, to reap
    waiting = {},       -- light thread -> true while it waits in step for a post
    closed = false,
  }, ngx_transport)
end

--- parse_url(url) -> host, port, target | nil
function ngx_transport.parse_url(url)
  local host, port, target = url:match("^https://([^/:%[%]]+):?(%d*)(/.*)$")
  if not host then
    host, port, target = url:match("^https://%[([%x:.]+)%]:?(%d*)(/.*)$")
    if not host then return nil end
  end
  return host:lower(), tonumber(port) or 443, target
end

--- is_ip_literal(host) -> true for 127.0.0.1 or ::1: cosocket TLS checks
-- names with X509_check_host, which never matches an IP address SAN.
function ngx_transport.is_ip_literal(host)
  return host:match("^%d+%.%d+%.%d+%.%d+$") ~= nil or host:find(":", 1, true) ~= nil
end

local function failure(kind, message, sent, retry)
  return nil, { kind = kind, message = message, sent = sent or 0, retry = retry }
end

local function ms(seconds)
  return math.max(1, math.floor(seconds * 1000 + 0.5))
end

-- The message of a connect failure, with what to do about it.
local function connect_failure(host, port, err)
  local where = host .. ":" .. port
  if err == "timeout" then return failure("timeout", "connect to " .. where .. " timed out", 0, "safe") end
  if err:find("no resolver defined", 1, true) then
    return failure("network", ("cannot resolve %s: %s. Add a `resolver` directive to nginx.conf (nginx does "
      .. "not read /etc/hosts), or pin the name with the client option resolve = { [\"%s\"] = \"address\" }")
      :format(host, err, where), 0, false)
  end
  return failure("network", "connect to " .. where .. " failed: " .. err, 0, "safe")
end

-- lua-nginx-module reports a certificate that does not verify as "NN: why"
-- (X509_verify_cert_error_string), a name mismatch as "certificate host
-- mismatch" or "certificate does not match host ..."; Debian's
-- lua-resty-core raises "assertion failed!" on the mismatch.
local function verification_failed(err)
  return err:find("^%d+: ") ~= nil or err:find("certificate", 1, true) ~= nil
    or err:find("mismatch", 1, true) ~= nil or err:find("assertion failed", 1, true) ~= nil
end

-- A handshake that failed before any byte of the request was sent: "safe"
-- (another host may be tried, as curl classes CURLE_SSL_CONNECT_ERROR),
-- except a certificate that does not verify or name the host, which no
-- retry mends (false).
local function handshake_failure(host, port, err)
  err = tostring(err)
  if err == "timeout" then
    return failure("timeout", "TLS handshake with " .. host .. ":" .. port .. " timed out", 0, "safe")
  end
  if not verification_failed(err) then
    return failure("network", ("TLS handshake with %s:%d failed (%s); nothing was sent"):format(host, port, err),
      0, "safe")
  end
  return failure("network", ("TLS handshake with %s:%d failed (%s): nginx verifies the server's certificate "
    .. "against lua_ssl_trusted_certificate, up to lua_ssl_verify_depth (3 or more for WeChat Pay's chain): "
    .. "check both directives in nginx.conf"):format(host, port, err), 0, false)
end

-- The merchant certificate and key as ngx.ssl objects, parsed at the first
-- call that presents them and kept in the client's holder; or nil, why.
local function client_certificate(holder)
  if holder.parsed then return holder.parsed end
  if holder.problem then return nil, holder.problem end
  local problem
  local source = holder.source()
  if not ngx.socket.tcp().setclientcert then
    problem = "this nginx Lua module has no tcpsock:setclientcert (it needs lua-nginx-module 0.10.23 with "
      .. "lua-resty-core 0.1.25 or later)"
  elseif source.key_type ~= "PEM" or source.passphrase then
    problem = "inside nginx, mutual TLS needs private_key as unencrypted PEM (ngx.ssl.parse_pem_priv_key)"
  else
    local loaded, ssl = pcall(require, "ngx.ssl")
    if not loaded then
      problem = "ngx.ssl (lua-resty-core) cannot be loaded"
    else
      local cert, err = ssl.parse_pem_cert(source.cert)
      local pkey = cert and ssl.parse_pem_priv_key(source.key)
      if not cert then
        problem = "merchant_cert cannot be parsed by ngx.ssl: " .. tostring(err)
      elseif not pkey then
        problem = "private_key cannot be parsed by ngx.ssl"
      else
        holder.parsed = { cert = cert, pkey = pkey }
        return holder.parsed
      end
    end
  end
  holder.problem = problem
  return nil, problem
end

-- Connects (or takes a pooled connection) and, for a new one, verifies TLS
-- (presenting tls.cert and tls.pkey when given).  -> sock, reused | nil, failure
local function open(self, host, port, deadline, connect_timeout, tls)
  local address = self.resolve[host .. ":" .. port] or host
  local pool = ("wechatpay:https:%s:%d:%s:verify"):format(host, port, address)
  if tls then pool = pool .. ":client:" .. tostring(self.client_tls.serial) end
  local sock = ngx.socket.tcp()
  -- connect_timeout covers the TCP connect and the TLS handshake together:
  -- the handshake gets what the connect (and a name lookup before it, which
  -- nginx does not count in the connect's own timer) left.
  local connect_by = math.min(monotonic() + connect_timeout, deadline)
  local budget = connect_by - monotonic()
  if budget <= 0 then return failure("timeout", "no time left to connect to " .. host, 0, "safe") end
  sock:settimeout(ms(budget))
  local ok, err = sock:connect(address, port, { pool = pool, pool_size = self.pool_size })
  if not ok then return connect_failure(host, port, tostring(err)) end
  local reused = (sock:getreusedtimes() or 0) > 0
  if not reused then
    budget = connect_by - monotonic()
    if budget <= 0 then
      sock:close()
      return failure("timeout", "connect to " .. host .. ":" .. port .. " left no time for the TLS handshake", 0, "safe")
    end
    sock:settimeout(ms(budget))
    if tls then
      local set, serr = sock:setclientcert(tls.cert, tls.pkey)
      if not set then
        sock:close()
        return failure("network", "cannot present the merchant certificate: " .. tostring(serr), 0, false)
      end
    end
    -- Debian's lua-resty-core can raise "assertion failed!" here on a name
    -- mismatch: a raise is a failed handshake too.
    local called, session, herr = pcall(sock.sslhandshake, sock, nil, host, true)
    if not called or not session then
      sock:close()
      return handshake_failure(host, port, called and herr or session)
    end
  end
  return sock, reused
end

local function request_bytes(request, host, port, target)
  local out = { request.method, " ", target, " HTTP/1.1\r\nHost: ", host }
  if port ~= 443 then out[#out + 1] = ":" .. port end
  out[#out + 1] = "\r\n"
  local headers = request.headers or {}
  for i = 1, #headers do out[#out + 1] = headers[i] .. "\r\n" end
  local body = request.body
  if body or request.method == "POST" or request.method == "PUT" or request.method == "PATCH" then
    out[#out + 1] = "Content-Length: " .. #(body or "") .. "\r\n"
  end
  out[#out + 1] = "\r\n"
  if body then out[#out + 1] = body end
  return table.concat(out)
end

-- Reading a response, within the call's deadline.  A cosocket's receive
-- of a line or of n bytes restarts its timer at every byte, so a server
-- that trickles could hold one far past any timeout: the reader takes
-- whatever has arrived (receiveany), keeps what it has not handed out, and
-- checks the deadline before every read.  A line is refused past `max`
-- bytes before it is whole, not after.
--   reader(sock, deadline) -> r; line(r, max) -> text without CR LF;
--   some(r, n) -> 1 to n bytes; exact(r, n) -> n bytes; each | nil, err
--   r.buf ~= "" once the answer is read: bytes past its end
local LINE_READ = 4096

local function reader(sock, deadline)
  return { sock = sock, deadline = deadline, buf = "" }
end

local function more(r, n)
  local left = r.deadline - monotonic()
  if left <= 0 then return nil, "timeout" end
  r.sock:settimeout(ms(left))
  return r.sock:receiveany(n)
end

local function line(r, max)
  while true do
    local lf = r.buf:find("\n", 1, true)
    if lf then
      local text = r.buf:sub(1, lf - 1)
      r.buf = r.buf:sub(lf + 1)
      return (text:gsub("\r$", ""))
    end
    if #r.buf > max then return nil, "too long" end
    local data, err = more(r, LINE_READ)
    if not data then return nil, err end
    r.buf = r.buf .. data
  end
end

local function some(r, n)
  if r.buf ~= "" then
    local piece = r.buf:sub(1, n)
    r.buf = r.buf:sub(n + 1)
    return piece
  end
  return more(r, n)
end

local function exact(r, n)
  local got = ""
  while #got < n do
    local piece, err = some(r, n - #got)
    if not piece then return nil, err end
    got = got .. piece
  end
  return got
end

local function read_failure(err, what, sent)
  if err == "timeout" then
    return failure("timeout", "timed out waiting for " .. what, sent, "idempotent")
  end
  if err == "too long" then
    return failure("network", what .. " in the response is over " .. MAX_HEADER_BYTES .. " bytes", sent, false)
  end
  return failure("network", "connection " .. tostring(err) .. " while reading " .. what, sent, "idempotent")
end

local function read_head(r, sent)
  while true do
    local status_line, err = line(r, MAX_HEADER_BYTES)
    if not status_line then return read_failure(err, "the status line", sent) end
    local version, status = status_line:match("^HTTP/(%d%.%d) (%d%d%d)")
    if not status then
      return failure("network", "malformed status line from the server", sent, "idempotent")
    end
    status = tonumber(status)
    local headers, size, last = {}, 0, nil
    while true do
      local h, herr = line(r, MAX_HEADER_BYTES - size)
      if not h then return read_failure(herr, "the response headers", sent) end
      if h == "" then break end
      size = size + #h
      if size > MAX_HEADER_BYTES then
        return failure("network", "response headers over " .. MAX_HEADER_BYTES .. " bytes", sent, false)
      end
      local name, value = h:match("^([^:%s]+):[ \t]*(.-)[ \t]*$")
      if name then
        name = name:lower()
        headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
        last = name
      elseif last and h:find("^[ \t]") then   -- an obsolete folded line: part of the last value
        headers[last] = headers[last] .. " " .. h:match("^[ \t]*(.-)[ \t]*$")
      end
    end
    -- 1xx answers (100 Continue) come before the real one
    if status >= 200 or status == 101 then return status, headers, version end
  end
end

-- The bytes of a body as they arrive, by its framing (chunked,
-- Content-Length, or up to the close), each piece to sink.take(piece) ->
-- true to go on; -> true, reusable | nil, failure.
--   sink.limit      a body declared or grown past it is refused
--   sink.consumes   take passes bytes on for good (to a file, a function):
--                   once it has, no failure may be retried
--   sink.stopped()  the failure when take answers anything but true
local function take_body(r, headers, sent, sink)
  local handed, total = false, 0
  local function broken(err, what)
    local _, f = read_failure(err, what, sent)
    if handed then f.retry = false end
    return nil, f
  end
  local function malformed(what)
    local _, f = failure("network", "malformed " .. what .. " in the response", sent, not handed and "idempotent" or false)
    return nil, f
  end
  -- refuses n more bytes that would take the body past sink.limit
  local function grows(n)
    total = total + n
    if sink.limit and total > sink.limit then
      local _, f = failure("network", "response body over max_body (" .. sink.limit .. " bytes)", sent, false)
      return nil, f
    end
    return true
  end
  local function hand(piece)
    if piece == "" then return true end
    if sink.consumes then handed = true end
    return sink.take(piece) == true
  end
  -- `length` bytes in pieces
  local function pass(length, what)
    local ok, f = grows(length)
    if not ok then return nil, f end
    while length > 0 do
      local piece, err = some(r, math.min(length, STREAM_PIECE))
      if not piece then return broken(err, what) end
      length = length - #piece
      if not hand(piece) then return nil, sink.stopped() end
    end
    return true
  end
  local te = headers["transfer-encoding"]
  if te and te:lower():find("chunked", 1, true) then
    while true do
      local size_line, err = line(r, MAX_HEADER_BYTES)
      if not size_line then return broken(err, "a chunk size") end
      local size = tonumber(size_line:match("^%s*(%x+)") or "", 16)
      if not size then return malformed("chunk size") end
      if size == 0 then
        local trailers = 0
        repeat   -- trailers, up to the blank line
          local t, terr = line(r, MAX_HEADER_BYTES - trailers)
          if not t then return broken(terr, "the chunked trailer") end
          trailers = trailers + #t
        until t == ""
        return true, true
      end
      local ok, f = pass(size, "a chunk")
      if not ok then return nil, f end
      local crlf, cerr = exact(r, 2)
      if not crlf then return broken(cerr, "a chunk") end
      if crlf ~= "\r\n" then return malformed("chunk end") end
    end
  end
  local length = headers["content-length"]
  if length then
    -- the same value repeated ("2, 2") is one length (RFC 9110 8.6)
    local first = length:match("^(%d+)")
    if first and length:gsub("%s*,%s*" .. first, "") == first then length = first end
    length = tonumber(length:match("^%d+$"))
    if not length then return malformed("Content-Length") end
    local ok, f = pass(length, "the response body")
    if not ok then return nil, f end
    return true, true
  end
  while true do   -- to the end of the connection, never more than one byte past the limit
    local want = sink.limit and math.min(STREAM_PIECE, sink.limit - total + 1) or STREAM_PIECE
    local piece, err = some(r, want)
    if not piece then
      if err == "closed" then return true, false end
      return broken(err, "the response body")
    end
    local ok, f = grows(#piece)
    if not ok then return nil, f end
    if not hand(piece) then return nil, sink.stopped() end
  end
end

-- The whole body, at most `limit` bytes: -> body, reusable | nil, failure.
local function read_body(r, method, status, headers, sent, limit)
  if method == "HEAD" or status == 204 or status == 304 then return "", true end
  local parts = {}
  local ok, reusable = take_body(r, headers, sent, { limit = limit,
    take = function(piece) parts[#parts + 1] = piece return true end })
  if not ok then return nil, reusable end
  return table.concat(parts), reusable
end

-- A 2xx body handed to on_chunk as it arrives: -> "", reusable | nil, failure.
-- A failure after bytes were handed on is never retried (retry = false).
local function stream_body(r, status, headers, sent, on_chunk)
  if status == 204 or status == 304 then return "", true end
  local interrupt
  local ok, reusable = take_body(r, headers, sent, {
    consumes = true,
    take = function(bytes)
      local called, more = pcall(on_chunk, bytes)
      if not called and errors.is_interrupt(more) then interrupt = more end
      return called and more
    end,
    stopped = function()
      if interrupt ~= nil then
        return { kind = "interrupted", message = "interrupted while taking the response's body", sent = sent,
                 retry = false, raised = interrupt }
      end
      return { kind = "network", message = STOPPED, sent = sent, retry = false, stopped = true }
    end,
  })
  if not ok then return nil, reusable end
  return "", reusable
end

local function keep_alive(headers, version, reusable)
  if not reusable then return false end
  local connection = (headers.connection or ""):lower()
  if connection:find("close", 1, true) then return false end
  return version ~= "1.0" or connection:find("keep-alive", 1, true) ~= nil
end

-- Sends bytes within the deadline: -> true | nil, err ("no time" before
-- the first byte, else the cosocket's).  nginx restarts a send's timer
-- whenever the peer takes some bytes, so a peer that reads slowly would
-- stretch one send of a large body (a media upload) past any timeout: the
-- body goes in pieces, each given only the time left.
local function send(sock, bytes, deadline)
  local from = 1
  repeat
    local left = deadline - monotonic()
    if left <= 0 then return nil, from == 1 and "no time" or "timeout" end
    sock:settimeout(ms(left))
    local ok, err = sock:send(from == 1 and #bytes <= SEND_PIECE and bytes or bytes:sub(from, from + SEND_PIECE - 1))
    if not ok then return nil, err end
    from = from + SEND_PIECE
  until from > #bytes
  return true
end

-- One request to completion: -> response | nil, failure.
local function perform(self, request)
  local host, port, target = ngx_transport.parse_url(request.url)
  if not host then return failure("network", "not an https URL: " .. tostring(request.url), 0, false) end
  local deadline = monotonic() + (request.timeout or 30)
  local tls
  if request.client_cert then
    if not self.client_tls then
      return failure("network", "security = true: this transport holds no merchant certificate", 0, false)
    end
    local why
    tls, why = client_certificate(self.client_tls)
    if not tls then return failure("network", "APIv2 security = true inside nginx: " .. why, 0, false) end
  end
  local bytes = request_bytes(request, host, port, target)
  -- A pooled connection the server closed meanwhile fails the send: that
  -- one is tried once more on a fresh connection, as nothing was sent.
  for attempt = 1, 2 do
    local sock, reused = open(self, host, port, deadline, request.connect_timeout or 5, tls)
    if not sock then return nil, reused end
    local sent, err = send(sock, bytes, deadline)
    if not sent then
      sock:close()
      if err == "no time" then return failure("timeout", "no time left to send the request", 0, "safe") end
      if not (reused and attempt == 1) then
        if err == "timeout" then return failure("timeout", "timed out sending the request", 0, "idempotent") end
        return failure("network", "connection " .. tostring(err) .. " while sending the request", 0, "idempotent")
      end
    else
      local r = reader(sock, deadline)
      local status, headers, version = read_head(r, #bytes)
      if not status then sock:close() return nil, headers end
      local body, reusable
      if request.on_chunk and status >= 200 and status < 300 and request.method ~= "HEAD" then
        body, reusable = stream_body(r, status, headers, #bytes, request.on_chunk)
      else   -- a streamed request's error answer is small: WeChat Pay's JSON
        body, reusable = read_body(r, request.method, status, headers, #bytes,
          request.on_chunk and math.min(self.max_body, STREAM_ERROR_BODY) or self.max_body)
      end
      if not body then sock:close() return nil, reusable end
      -- bytes past the answer's end would be read as the next one's: never pooled
      if not (r.buf == "" and keep_alive(headers, version, reusable) and sock:setkeepalive(self.idle_ms, self.pool_size)) then
        sock:close()
      end
      return { status = status, headers = headers, body = body }
    end
  end
end

local MAIN = {}   -- the key of the main thread, which LuaJIT's coroutine.running() gives as nil
local function current_thread()
  return coroutine.running() or MAIN
end

-- Wakes every light thread waiting in step: any of them may be the one
-- whose promise this settled (a handler waiting on a nested call, and the
-- request waiting on the handler's promise, wait at once).
local function wake_all(self)
  local sema = self.semaphore
  if sema then
    self.waiting = {}   -- each is about to run again: busy until it waits anew
    sema:post(math.max(1, -sema:count()))
  end
end

-- The light thread of one call: perform, then report.  The callback runs
-- here, in the calling request's own context; while it runs (a promise
-- handler may make and wait on another call) the transport is busy.
local function run(self, request, callback, parent)
  local ok, res, fail = pcall(perform, self, request)
  if not ok then
    res, fail = nil, { kind = "network", message = "the nginx transport raised: " .. tostring(res), sent = 0, retry = false }
  end
  self.running = self.running - 1
  if not self.closed then
    local thread = current_thread()
    self.dispatching[thread] = true
    local called, err = pcall(callback, res, fail)
    self.dispatching[thread] = nil
    if not called and self.first_error == nil then self.first_error = err end
    if fail and fail.kind == "interrupted" and fail.raised ~= nil then self.first_error = fail.raised end
    wake_all(self)
  end
  -- last, with nothing left that yields: the spawner reaps it (see reap);
  -- one whose spawner has ended is freed by nginx itself
  if parent ~= MAIN and coroutine.status(parent) ~= "dead" then
    local done = self.finished[parent]
    if not done then done = {}; self.finished[parent] = done end
    done[#done + 1] = coroutine.running()
  end
end

--- busy() -> true while a call runs, or another light thread's callback
-- does and is not itself waiting: a waiter must not conclude that nothing
-- can settle its promise while a handler may still settle it.  A handler
-- that waits (as this caller may, in its own callback) settles nothing
-- until something else does: two that wait on each other end in the
-- "nothing is in flight" error, not a hang.
function ngx_transport:busy()
  if self.running > 0 then return true end
  local me = current_thread()
  for thread in pairs(self.dispatching) do
    if thread ~= me and not self.waiting[thread] then return true end
  end
  return false
end

-- A light thread that ended stays in its request (or timer) until the
-- thread that spawned it waits on it: a timer making thousands of calls
-- would keep them all.  Each thread reaps the calls it spawned that have
-- ended whenever it steps; only the spawner may (ngx.thread.wait).
local function reap(self, me)
  local finished = self.finished
  -- spawners that ended (a call's thread that queued the next call): nginx
  -- frees their ended children, this forgets them
  for parent in pairs(finished) do
    if coroutine.status(parent) == "dead" then finished[parent] = nil end
  end
  local done = finished[me]
  if not done or not ngx.thread.wait then return end
  finished[me] = nil
  for i = 1, #done do ngx.thread.wait(done[i]) end
end

--- submit(request, callback): starts the call on a light thread of the
-- current request (or timer).
function ngx_transport:submit(request, callback)
  if self.closed then error("the nginx transport is closed", 2) end
  if not self.semaphore then self.semaphore = require("ngx.semaphore").new() end
  self.running = self.running + 1
  local thread, err = ngx.thread.spawn(run, self, request, callback, current_thread())
  if not thread then
    self.running = self.running - 1
    error("cannot start a light thread: " .. tostring(err), 2)
  end
end

--- step(wait_seconds): yields this light thread until a call finishes or
-- the time is up; the worker serves other requests meanwhile.
function ngx_transport:step(wait)
  if self.first_error ~= nil then
    local err = self.first_error
    self.first_error = nil
    error(err, 0)
  end
  if not self.semaphore then self.semaphore = require("ngx.semaphore").new() end
  local me = current_thread()
  self.waiting[me] = true
  self.semaphore:wait(math.max(0, wait or 0))
  self.waiting[me] = nil
  reap(self, me)
  if self.first_error ~= nil then
    local err = self.first_error
    self.first_error = nil
    error(err, 0)
  end
  return 0
end

function ngx_transport:pending()
  return self.running
end

--- close(): calls still running finish on their own (their callbacks are
-- not called); pooled connections stay in nginx's pool.
function ngx_transport:close()
  self.closed = true
  wake_all(self)
end

return ngx_transport
