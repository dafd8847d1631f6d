--- The chained call style of wechatpay-php, with segments kept byte for byte.
--
--   client.v3.multiuse.users._openid_.coupons:post{ openid = ..., json = {...} }
--   client:chain("v3/multiuse/users/{openid}/coupons"):post{ ... }
--   client["v3/multiuse/users/{openid}/coupons"]:post{ ... }
--   client.v3.multiuse.users[openid].coupons:post{ ... }
--
-- Each indexed name is one path segment, percent-encoded so that an id
-- holding "/", "%" or braces stays one literal segment; `_name_` (or
-- `{name}`, `{+name}` whole) is a template, filled from the request option
-- `name` (see wechatpay.request).  A verb's name is a segment too
-- (POST /v3/profitsharing/receivers/delete is receivers.delete:post{...}):
-- called as a method, node:delete{...}, it is the verb.  A node
-- holds its client and its path on itself, and nothing holds a node: a
-- chain walked for one call is garbage after it, whatever openid it holds
-- (a cache of nodes would keep every openid ever seen).  Hold a node in a
-- local to reuse it.
local errors = require("wechatpay.errors")
local request = require("wechatpay.request")

local chain = {}

-- The verbs a node answers to; any other name is a child segment.
local VERBS = { get = "GET", post = "POST", put = "PUT", patch = "PATCH", delete = "DELETE" }

-- Keys no segment name can equal: a node's own fields (VERB: the method
-- of a node named after one).
local CLIENT, PATH, VERB = {}, {}, {}

local node_mt = {}

--- A whole-segment `_name_` is the template `{name}`.
local function template_segment(segment)
  local name = segment:match("^_([%a][%w_]-)_$")
  return name and ("{" .. name .. "}") or segment
end

local function new_node(client, path, verb)
  return setmetatable({ [CLIENT] = client, [PATH] = path, [VERB] = verb }, node_mt)
end

local verb_methods = {}
for name, method in pairs(VERBS) do
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
  if type(key) == "number" then key = request.number_text(key, "path segment") end
  if key == "" then errors.raise("bad path segment: empty") end
  if key:find("^{%+?[%a_][%w_]*}$") then return key end
  local template = template_segment(key)
  return template ~= key and template or request.segment(key)
end

node_mt.__index = function(node, key)
  local verb = verb_methods[key]
  if verb then return verb end
  return new_node(node[CLIENT], node[PATH] .. "/" .. segment_name(key), VERBS[key])
end

-- node:delete{...} is node.delete(node, {...}): the child named "delete"
-- called with its parent is the verb on the parent.
node_mt.__call = function(child, parent, opts)
  local method = rawget(child, VERB)
  if not method then
    errors.raise(("a chain node is not a function: end %s with :get{...}, :post{...}..."):format(child[PATH]))
  end
  local name = child[PATH]:match("[^/]+$")
  if getmetatable(parent) ~= node_mt or parent[PATH] .. "/" .. name ~= child[PATH] then
    errors.raise(("%s: call it with a colon: node:%s{...}"):format(name, name))
  end
  return parent[CLIENT]:request(method, parent[PATH], opts)
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
  -- "v3//x" is not "v3/x": refused, never collapsed (a path of slashes only is the root)
  if path:find("[^/]") then request.refuse_empty_segments(path, path, "chain") end
  local segments = {}
  for segment in path:gsub("^/+", ""):gsub("/+$", ""):gmatch("[^/]+") do
    segments[#segments + 1] = template_segment(segment)
  end
  if #segments == 0 then errors.raise("chain: empty path") end
  -- kept: a few endpoints end in "/" (v3/applyment4sub/applyment/)
  return new_node(client, table.concat(segments, "/") .. (path:find("/$") and "/" or ""))
end

--- path(node) -> "v3/multiuse/users/{openid}/coupons", or nil for a non-node.
function chain.path(node)
  return getmetatable(node) == node_mt and node[PATH] or nil
end

return chain
