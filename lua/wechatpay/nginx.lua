--- Where a call may run inside nginx (OpenResty, or nginx + its Lua module),
-- and with what.  Cosockets, light threads and semaphores exist only while a
-- request or a timer runs; before any request (init_by_lua, init_worker)
-- nothing else is served, so blocking there costs nobody anything.
local nginx = {}

--- true when this Lua state runs inside nginx's Lua module.
nginx.ACTIVE = type(ngx) == "table" and type(ngx.get_phase) == "function"

-- Phases where a call runs on cosockets, in the current request's context.
local COSOCKET = { rewrite = true, server_rewrite = true, access = true, content = true, timer = true }
-- Phases that serve no request: the curl transport may block there.
local BLOCKING = { init = true, init_worker = true }

--- mode() -> "cosocket" | "blocking" | nil, phase (outside nginx: nil, nil)
function nginx.mode()
  if not nginx.ACTIVE then return nil, nil end
  local phase = ngx.get_phase()
  if COSOCKET[phase] then return "cosocket", phase end
  if BLOCKING[phase] then return "blocking", phase end
  return nil, phase
end

--- The error of a call made in a phase where it can neither yield nor block.
function nginx.phase_error(phase)
  return ("wechatpay: a call cannot be made in nginx's %s phase: cosockets do not exist there and a "
    .. "blocking call would stall the worker. Make it in rewrite, access or content, or schedule it "
    .. "with ngx.timer.at(0, function() ... end) (timers may call WeChat Pay)"):format(tostring(phase))
end

--- The error of a blocking transport used while requests are served.
function nginx.blocking_error(phase, what)
  return ("wechatpay: the %s transport blocks, and in nginx's %s phase it would stall every request of "
    .. "this worker: build the client with transport = \"auto\" (the default) or \"ngx\" to use cosockets")
    :format(what, tostring(phase))
end

--- The error of a base_url naming an IP address, inside nginx.
function nginx.ip_literal_error(base_url)
  return ("wechatpay: base_url %s names an IP address: nginx checks a cosocket's TLS certificate by host "
    .. "name (X509_check_host), which never matches an IP address. Use the host name on the certificate, "
    .. "and pin it to the address with the client option resolve = { [\"host:port\"] = \"address\" }")
    :format(base_url)
end

--- warn(message): a warning in nginx's error log (the client takes no
-- logger: inside nginx, ngx.log is where operators look).
function nginx.warn(message)
  if nginx.ACTIVE then ngx.log(ngx.WARN, message) end
end

--- pause(): yields this request's light thread a moment, while nginx runs
-- the others (a promise another request's context settles is waited for so).
function nginx.pause()
  ngx.sleep(0.005)
end

--- context() -> the table of the current request (or timer), where a client
-- keeps the dispatcher of the calls made in it.
function nginx.context()
  return ngx.ctx
end

return nginx
