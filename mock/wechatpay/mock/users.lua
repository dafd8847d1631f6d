-- The seeded real-name table of the mock: openid -> { name, id_card }.
-- The openids are deliberately awkward (mixed case, "_" and "-") because
-- clients that "normalise" path segments break on exactly those.
local users = {}

local DEFAULT = {
  ["oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"] = { name = "张三", id_card = "110101199003071234" },
  ["o-Xy_9aBcD-eF_gH1iJ2kL3mN4oP"] = { name = "李四", id_card = "11010519491231002X" },
  ["OPENID_Mixed-Case_wang-wu"] = { name = "王五", id_card = "440301198512120018" },
  ["oAbC-123_dEf-456_GhI-789_jk"] = { name = "欧阳娜娜", id_card = "310104200001010026" },
}

-- A fresh copy, so callers may mutate it.
function users.defaults()
  local copy = {}
  for openid, user in pairs(DEFAULT) do
    copy[openid] = { name = user.name, id_card = user.id_card }
  end
  return copy
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
      table_in_effect[openid] = { name = user.name, id_card = user.id_card }
    else
      error("wechatpay.mock: users[" .. openid .. "] must be { name = string, id_card = string } or false", 3)
    end
  end
  return table_in_effect
end

return users
