-- The seeded real-name table of the mock: openid -> { name, id_card, appids }.
-- The openids are deliberately awkward (mixed case, "_" and "-") because
-- clients that "normalise" path segments break on exactly those. An openid
-- belongs to the apps in appids (a grant naming another appid is refused);
-- a user given without appid/appids belongs to users.DEFAULT_APPIDS, the
-- appids the specs and examples use.
local users = {}

users.DEFAULT_APPIDS = { "wx233544546545989", "wxd678efh567hg6787" }

-- The seeded consumption-gold stocks (stock_id -> true): the ids the specs
-- and examples use. A grant naming another stock is refused.
users.DEFAULT_STOCKS = { ["9856000"] = true, ["9856001"] = true }

local DEFAULT = {
  ["oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"] = { name = "张三", id_card = "110101199003071234" },
  ["o-Xy_9aBcD-eF_gH1iJ2kL3mN4oP"] = { name = "李四", id_card = "11010519491231002X" },
  ["OPENID_Mixed-Case_wang-wu"] = { name = "王五", id_card = "440301198512120018" },
  ["oAbC-123_dEf-456_GhI-789_jk"] = { name = "欧阳娜娜", id_card = "310104200001010026" },
}

local function list_copy(list)
  local copy = {}
  for i, v in ipairs(list) do copy[i] = v end
  return copy
end

-- A fresh copy, so callers may mutate it.
function users.defaults()
  local copy = {}
  for openid, user in pairs(DEFAULT) do
    copy[openid] = { name = user.name, id_card = user.id_card, appids = list_copy(users.DEFAULT_APPIDS) }
  end
  return copy
end

-- The appids of a user entry: appid = "wx..." or appids = { "wx...", ... },
-- else the defaults; nil, reason when they are malformed.
local function appids_of(user)
  if user.appid ~= nil and user.appids ~= nil then
    return nil, "give appid or appids, not both"
  end
  if user.appid ~= nil then
    if type(user.appid) ~= "string" or user.appid == "" then return nil, "appid must be a non-empty string" end
    return { user.appid }
  end
  if user.appids == nil then return list_copy(users.DEFAULT_APPIDS) end
  if type(user.appids) ~= "table" or #user.appids == 0 then
    return nil, "appids must be a non-empty list of strings"
  end
  for _, a in pairs(user.appids) do
    if type(a) ~= "string" or a == "" then return nil, "appids must be a non-empty list of strings" end
  end
  return list_copy(user.appids)
end

-- extra: { [openid] = { name = ..., id_card = ... } | false } merged over the
-- defaults; false removes a seeded user.
function users.merge(extra)
  local table_in_effect = users.defaults()
  for openid, user in pairs(extra or {}) do
    if type(openid) ~= "string" or openid == "" then
      error("wechatpay.mock: users keys must be non-empty openid strings", 3)
    end
    if user == false then
      table_in_effect[openid] = nil
    elseif type(user) == "table" and type(user.name) == "string"
        and type(user.id_card) == "string" then
      local appids, why = appids_of(user)
      if not appids then
        error("wechatpay.mock: users[" .. openid .. "]: " .. why, 3)
      end
      table_in_effect[openid] = { name = user.name, id_card = user.id_card, appids = appids }
    else
      error("wechatpay.mock: users[" .. openid .. "] must be { name = string, id_card = string"
        .. " [, appid = string | appids = { string, ... }] } or false", 3)
    end
  end
  return table_in_effect
end

-- extra: { [stock_id] = true | false } merged over DEFAULT_STOCKS; false
-- removes a seeded stock.
function users.stocks(extra)
  local in_effect = {}
  for id in pairs(users.DEFAULT_STOCKS) do in_effect[id] = true end
  for id, on in pairs(extra or {}) do
    if type(id) ~= "string" or not id:match("^[%w_%-]+$") or #id > 20 then
      error("wechatpay.mock: stocks keys must be stock ids (letters, digits, _ and -, at most 20)", 3)
    end
    if type(on) ~= "boolean" then
      error("wechatpay.mock: stocks[" .. id .. "] must be true or false", 3)
    end
    in_effect[id] = on or nil
  end
  return in_effect
end

return users
