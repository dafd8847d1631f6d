--- The chained call style of wechatpay-php, with segments kept byte for byte.
--
--   client.v3.multiuse.users._openid_.coupons:post{ openid = ..., json = {...} }
--   client:chain("v3/multiuse/users/{openid}/coupons"):post{ ... }
--   client["v3/multiuse/users/{openid}/coupons"]:post{ ... }
--   client.v3.multiuse.users[openid].coupons:post{ ... }
--
-- Each indexed name is one path segment; `_name_` is the template `{name}`,
-- filled from the request option `name` (see wechatpay.request).  A node
-- holds its client and its path on itself, and nothing holds a node: a
-- chain walked for one call is garbage after it, whatever openid it holds
-- (a cache of nodes would keep every openid ever seen).  Hold a node in a
-- local to reuse it.
local errors = require("wechatpay.errors")

local chain = {}

-- The verbs a node answers to; any other name is a child segment.
local VERBS = { get = "GET", post = "POST", put = "PUT", patch = "PATCH", delete = "DELETE" }

-- Keys no segment name can equal: a node's own fields.
local CLIENT, PATH = {}, {}

local node_mt = {}

--- A whole-segment `_name_` is the template `{name}`.
local function template_segment(segment)
  local name = segment:match("^_([%a][%w_]-)_$")
  return name and ("{" .. name .. "}") or segment
end

local function new_node(client, path)
  return setmetatable({ [CLIENT] = client, [PATH] = path }, node_mt)
end

local verb_methods = {}
for name, method in pairs(VERBS) do
  verb_methods[name] = function(node, opts)
    if getmetatable(node) ~= node_mt then errors.raise(("%s: call it with a colon: node:%s{...}"):format(name, name)) end
    return node[CLIENT]:request(method, node[PATH], opts)
  end
  verb_methods[name .. "Async"] = function(node, opts)
    if getmetatable(node) ~= node_mt then
      errors.raise(("%sAsync: call it with a colon: node:%sAsync{...}"):format(name, name))
    end
    return node[CLIENT]:request_async(method, node[PATH], opts)
  end
end

local function segment_name(key)
  if type(key) ~= "string" and type(key) ~= "number" then
    errors.raise(("bad path segment: string expected, got %s"):format(type(key)))
  end
  if type(key) == "number" then
    key = (key % 1 == 0 and math.abs(key) < 2 ^ 53) and ("%.0f"):format(key) or tostring(key)
  end
  if key == "" then errors.raise("bad path segment: empty") end
  return template_segment(key)
end

node_mt.__index = function(node, key)
  local verb = verb_methods[key]
  if verb then return verb end
  return new_node(node[CLIENT], node[PATH] .. "/" .. segment_name(key))
end

node_mt.__newindex = function()
  errors.raise("a chain node is read-only: index it to add a segment")
end

node_mt.__tostring = function(node)
  return "wechatpay.chain (" .. node[PATH] .. ")"
end

--- child(client, name) -> the node of the first segment `name`.
function chain.child(client, name)
  return new_node(client, segment_name(name))
end

--- from_path(client, "v3/multiuse/users/{openid}/coupons") -> node
function chain.from_path(client, path)
  if type(path) ~= "string" then
    errors.raise(("chain: path must be a string, got %s"):format(type(path)))
  end
  local segments = {}
  for segment in path:gsub("^/+", ""):gsub("/+$", ""):gmatch("[^/]+") do
    segments[#segments + 1] = template_segment(segment)
  end
  if #segments == 0 then errors.raise("chain: empty path") end
  return new_node(client, table.concat(segments, "/"))
end

--- path(node) -> "v3/multiuse/users/{openid}/coupons", or nil for a non-node.
function chain.path(node)
  return getmetatable(node) == node_mt and node[PATH] or nil
end

return chain
