--- The chained call style of wechatpay-php, with segments kept byte for byte.
--
--   client.v3.multiuse.users._openid_.coupons:post{ openid = ..., json = {...} }
--   client:chain("v3/multiuse/users/{openid}/coupons"):post{ ... }
--   client["v3/multiuse/users/{openid}/coupons"]:post{ ... }
--   client.v3.multiuse.users[openid].coupons:post{ ... }
--
-- Each indexed name is one path segment; `_name_` is the template `{name}`,
-- filled from the request option `name` and percent-encoded as a path
-- segment (`{+name}` keeps reserved characters).  Nodes are cached, so a
-- chain walked on every call costs table lookups only.
local chain = {}

-- The verbs a node answers to; any other name is a child segment.
local VERBS = { get = "GET", post = "POST", put = "PUT", patch = "PATCH", delete = "DELETE" }

local node_state = setmetatable({}, { __mode = "k" })   -- node -> { client, segments, path }

local node_mt = {}

--- A whole-segment `_name_` is the template `{name}`.
local function template_segment(segment)
  local name = segment:match("^_([%a][%w_]-)_$")
  return name and ("{" .. name .. "}") or segment
end

local function new_node(client, segments)
  local node = setmetatable({}, node_mt)
  node_state[node] = { client = client, segments = segments, path = table.concat(segments, "/") }
  return node
end

local verb_methods = {}
for name, method in pairs(VERBS) do
  verb_methods[name] = function(node, opts)
    local state = node_state[node]
    if not state then error(("%s: call it with a colon: node:%s{...}"):format(name, name), 2) end
    return state.client:request(method, state.path, opts)
  end
  verb_methods[name .. "Async"] = function(node, opts)
    local state = node_state[node]
    if not state then error(("%sAsync: call it with a colon: node:%sAsync{...}"):format(name, name), 2) end
    return state.client:request_async(method, state.path, opts)
  end
end

node_mt.__index = function(node, key)
  local verb = verb_methods[key]
  if verb then return verb end
  if type(key) ~= "string" and type(key) ~= "number" then
    error(("bad path segment: string expected, got %s"):format(type(key)), 2)
  end
  key = tostring(key)
  if key == "" then error("bad path segment: empty", 2) end
  local state = node_state[node]
  local segments = {}
  for i = 1, #state.segments do segments[i] = state.segments[i] end
  segments[#segments + 1] = template_segment(key)
  local child = new_node(state.client, segments)
  rawset(node, key, child)
  return child
end

node_mt.__tostring = function(node)
  return "wechatpay.chain (" .. node_state[node].path .. ")"
end

--- A node for a whole path "v3/multiuse/users/{openid}/coupons".
function chain.from_path(client, path)
  if type(path) ~= "string" then
    error(("chain: path must be a string, got %s"):format(type(path)), 3)
  end
  local segments = {}
  for segment in path:gsub("^/+", ""):gsub("/+$", ""):gmatch("[^/]+") do
    segments[#segments + 1] = template_segment(segment)
  end
  if #segments == 0 then error("chain: empty path", 3) end
  return new_node(client, segments)
end

--- The root node of a client: its children are the first segments.
function chain.root(client)
  return new_node(client, {})
end

-- ---- turning a path template and options into the request target --------

local function percent_encode(value, keep)
  return (value:gsub(keep, function(c) return ("%%%02X"):format(c:byte()) end))
end

-- Unreserved characters (RFC 3986) stay; everything else is encoded.
local ENCODE_SEGMENT = "[^%w%-%._~]"
-- {+name}: reserved characters and existing escapes stay too.
local ENCODE_RESERVED = "[^%w%-%._~:/%?#%[%]@!%$&'%(%)%*%+,;=%%]"
-- Literal segments keep what a path may hold; bytes that may not (spaces,
-- non-ASCII, ? and #) are encoded so the target is what goes on the wire.
local ENCODE_LITERAL = "[^%w%-%._~!%$&'%(%)%*%+,;=:@%%]"

local function template_value(path, name, opts)
  local value = opts and opts[name]
  if value == nil then
    error(("missing path variable '%s' for %s: pass it as the request option %s = ..."):format(name, path, name), 6)
  end
  if type(value) ~= "string" and type(value) ~= "number" then
    error(("path variable '%s' must be a string or number, got %s"):format(name, type(value)), 6)
  end
  value = tostring(value)
  if value == "" then error(("path variable '%s' is empty"):format(name), 6) end
  return value
end

local function literal(path, piece)
  if piece:find("[{}]") then
    error(("malformed path template in %s: unmatched brace in '%s'"):format(path, piece), 5)
  end
  return percent_encode(piece, ENCODE_LITERAL)
end

local function expand_segment(path, segment, opts)
  local out, pos = {}, 1
  while true do
    local s, e, plus, name = segment:find("{(%+?)([%a_][%w_]*)}", pos)
    if not s then break end
    out[#out + 1] = literal(path, segment:sub(pos, s - 1))
    out[#out + 1] = percent_encode(template_value(path, name, opts),
                                   plus == "+" and ENCODE_RESERVED or ENCODE_SEGMENT)
    pos = e + 1
  end
  out[#out + 1] = literal(path, segment:sub(pos))
  return table.concat(out)
end

--- Expands the path templates: returns "/v3/..." as sent and signed.
function chain.expand(path, opts)
  local out = {}
  for segment in path:gmatch("[^/]+") do
    out[#out + 1] = expand_segment(path, segment, opts)
  end
  return "/" .. table.concat(out, "/")
end

--- Encodes a query table (keys sorted, arrays repeated) or passes a string as is.
function chain.encode_query(query)
  if query == nil then return nil end
  if type(query) == "string" then return query ~= "" and query or nil end
  if type(query) ~= "table" then
    error(("query must be a table or a string, got %s"):format(type(query)), 4)
  end
  local keys = {}
  for k in pairs(query) do
    if type(k) ~= "string" then error("query keys must be strings", 4) end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  local pairs_out = {}
  local function add(k, v)
    local tv = type(v)
    if tv ~= "string" and tv ~= "number" and tv ~= "boolean" then
      error(("query value of '%s' must be a string, number or boolean, got %s"):format(k, tv), 5)
    end
    pairs_out[#pairs_out + 1] = percent_encode(k, ENCODE_SEGMENT) .. "=" .. percent_encode(tostring(v), ENCODE_SEGMENT)
  end
  for _, k in ipairs(keys) do
    local v = query[k]
    if type(v) == "table" then
      for _, item in ipairs(v) do add(k, item) end
    else
      add(k, v)
    end
  end
  if #pairs_out == 0 then return nil end
  return table.concat(pairs_out, "&")
end

return chain
