--- When a failed call is sent again, and after how long.
--
-- By default only failures before any byte reached the server are retried
-- (the transport says so: failure.retry == "safe").  With
-- `retry = { idempotent = true }` timeouts, resets after sending, 429 and
-- 5xx are retried too, but only for requests a replay cannot duplicate:
-- a GET, or a body whose merchant number makes WeChat Pay return the first
-- result.  Every attempt is signed anew by the caller.
local retry = {}

--- The policy of a client made without `retry`: see README.
retry.DEFAULT = { attempts = 3, backoff = 0.2, max_backoff = 5, deadline = 30, idempotent = false }

--- The policy `retry = false` stands for.
retry.NONE = { attempts = 1, backoff = 0, max_backoff = 0, deadline = 0, idempotent = false }

-- Merchant numbers that make a replay return the first result.
local IDEMPOTENCY_FIELDS = { "out_request_no", "out_trade_no", "out_refund_no", "out_batch_no" }

--- is_idempotent(method, json_table_or_nil, body) -> boolean
function retry.is_idempotent(method, json, body)
  if method == "GET" then return true end
  for _, field in ipairs(IDEMPOTENCY_FIELDS) do
    if json then
      if json[field] ~= nil and json[field] ~= "" then return true end
    elseif body:find('"' .. field .. '"%s*:%s*"[^"]') then
      return true
    end
  end
  return false
end

-- May this failure be sent again at all?
local function retryable(policy, idempotent, err)
  if err.kind == "network" or err.kind == "timeout" then
    if err.retry == "safe" then return true end
    return err.retry == "idempotent" and policy.idempotent and idempotent
  end
  if err.kind == "http" and (err.status == 429 or err.status >= 500) then
    return policy.idempotent and idempotent
  end
  return false
end

-- The seconds an answer's Retry-After asks for (delta-seconds; an
-- HTTP-date is ignored and the backoff applies), or nil.
local function retry_after(err)
  local res = err.response
  if err.kind ~= "http" or type(res) ~= "table" or type(res.headers) ~= "table" then return nil end
  local value = res.headers["retry-after"]
  local seconds = type(value) == "string" and value:match("^%s*(%d+)%s*$")
  -- past any deadline already: a longer one need not be exact
  return seconds and math.min(tonumber(seconds), 1e9) or nil
end

--- delay(policy, idempotent, err, attempts, elapsed [, random]) -> seconds | nil, why
-- attempts: sent so far; elapsed: seconds since the first attempt.  An
-- answer's Retry-After is a floor: never sooner than the server asked.
-- why: set when a retry was due but the wait does not fit the deadline.
function retry.delay(policy, idempotent, err, attempts, elapsed, random)
  if attempts >= policy.attempts or not retryable(policy, idempotent, err) then return nil end
  local delay = math.min(policy.max_backoff, policy.backoff * 2 ^ (attempts - 1))
  delay = delay * (0.5 + (random or math.random)() * 0.5)   -- jitter: retries of a batch do not align
  local asked = retry_after(err)
  if asked and asked > delay then delay = asked end
  if elapsed + delay > policy.deadline then
    if asked and asked == delay then
      return nil, ("not retried: the answer asks to wait %.0f s (Retry-After), past the call's deadline"):format(asked)
    end
    return nil
  end
  return delay
end

return retry
