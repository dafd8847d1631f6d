--- The libcurl transport: a request table in, a response table out.
--
-- A transport is any object with
--   transport:submit(request, callback) -> id    starts a request
--   transport:step(wait_seconds) -> n            runs transfers, calls callbacks of finished ones
--   transport:request(request) -> response | nil, err   one request, to completion
-- request  = { method, url, headers = { "Name: value", ... }, body, timeout, connect_timeout,
--              client_cert = true (present new{client_tls}'s certificate: APIv2 mutual TLS) }
-- response = { status, headers = { lower_name = value }, body }
-- err      = { kind = "timeout" | "network", message, sent = bytes of request sent,
--              retry = "safe" (nothing reached the server) | "idempotent" (it may have) | false (permanent) }
-- Waiting on one request drives every other in flight on the same transport.
local core = require("wechatpay.core")

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
-- client_tls = { cert = PEM, key = PEM or DER bytes, key_type = "PEM" | "DER", passphrase }:
-- held by the session (from memory, never re-read) for requests with client_cert.
-- ca_pem (the bundle's bytes) is used instead of reading cafile again;
-- resolve = { ["host:port"] = address } pins names, as CURLOPT_RESOLVE.
function curl_transport.new(opts)
  opts = opts or {}
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
      client_cert = opts.client_tls and opts.client_tls.cert,
      client_key = opts.client_tls and opts.client_tls.key,
      client_key_type = opts.client_tls and opts.client_tls.key_type,
      client_key_passphrase = opts.client_tls and opts.client_tls.passphrase,
    },
    callbacks = {},
  }, curl_transport)
  return self
end

function curl_transport:submit(request, callback)
  local id = self.session:submit(request)
  self.callbacks[id] = callback
  return id
end

function curl_transport:pending()
  return self.session:pending()
end

--- Runs transfers for up to `wait` seconds and dispatches what finished.
-- A callback that raises does not lose the others' results: the first
-- error is raised again once all are dispatched.
function curl_transport:step(wait)
  local done = self.session:perform(wait or 0)
  local first_error
  for i = 1, #done do
    local r = done[i]
    local callback = self.callbacks[r.id]
    self.callbacks[r.id] = nil
    if callback then
      local ok, err
      if r.error then
        ok, err = pcall(callback, nil, { kind = r.error, message = r.message, sent = r.sent, retry = r.retry })
      else
        ok, err = pcall(callback, { status = r.status, headers = r.headers, body = r.body })
      end
      if not ok and first_error == nil then first_error = err end
    end
  end
  if first_error ~= nil then error(first_error, 0) end
  return #done
end

function curl_transport:request(request)
  local result, failure, finished = nil, nil, false
  self:submit(request, function(res, err)
    result, failure, finished = res, err, true
  end)
  while not finished do self:step(1) end
  return result, failure
end

--- close(): drops every transfer in flight (their callbacks are never
-- called) and the pooled connections.
function curl_transport:close()
  self.callbacks = {}
  self.session:close()
end

return curl_transport
