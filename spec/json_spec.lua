-- core.json_decode (csrc/json.c + ljson.c), the strict decoder for what
-- WeChat Pay sends, checked against decoders that are not ours: lua-cjson
-- for the values of generated documents, Node's JSON.parse for what is
-- valid JSON at all (hand-picked edge cases and seeded random mutations).
local core = require("wechatpay.core")
local cjson = require("cjson")
local ossl = require("support.openssl")

local decode = core.json_decode
local is54 = math.type ~= nil

-- A seeded generator of documents: objects, arrays, strings with escapes
-- and multi-byte characters, integers up to 2^53, fractions, literals.
local function generator(seed)
  local state = seed
  local function rand(n)   -- 1..n, a small LCG so both runtimes draw alike
    state = (state * 1103515245 + 12345) % 2147483648
    return state % n + 1
  end
  local pieces = { "a", "Z", "0", " ", "/", "\\", "\"", "\n", "\t", "\1", "\31", "é", "支付", "😀", "\127" }
  local function str()
    local t = {}
    for i = 1, rand(12) - 1 do t[i] = pieces[rand(#pieces)] end
    return table.concat(t)
  end
  local value
  function value(depth)
    local kind = rand(depth > 5 and 5 or 7)
    if kind == 1 then return str()
    elseif kind == 2 then return rand(2) == 1 and rand(1000000) - 500000 or (rand(2^30) * rand(2^23)) * (rand(2) == 1 and -1 or 1)
    elseif kind == 3 then return (rand(2000000) - 1000000) / 64
    elseif kind == 4 then return rand(2) == 1
    elseif kind == 5 then return cjson.null
    elseif kind == 6 then
      local t = {}
      for i = 1, rand(6) - 1 do t[i] = value(depth + 1) end
      return t
    else
      local t = {}
      for _ = 1, rand(6) do t["k" .. str()] = value(depth + 1) end
      return t
    end
  end
  return function() return value(0) end
end

local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

describe("core.json_decode", function()
  it("decodes what lua-cjson encodes to the values lua-cjson decodes (600 generated documents, some over 4 KiB)", function()
    local next_doc = generator(20261127)
    local big = 0
    for i = 1, 600 do
      local doc = { next_doc(), next_doc(), next_doc() }
      if i % 50 == 0 then   -- long strings and members: the scratch path for escapes
        doc.long = ("\\/\"é"):rep(800)
        for j = 1, 300 do doc["m" .. j] = j end
      end
      local text = cjson.encode(doc)
      if #text > 4096 then big = big + 1 end
      local ours, err = decode(text)
      assert(ours, err)
      assert.is_true(same(cjson.decode(text), ours), text)
    end
    assert.is_true(big >= 12)
  end)

  it("containers around the size where a table is made early (63, 64, 65, 200 members, nested after it)", function()
    for _, n in ipairs{ 0, 1, 63, 64, 65, 200 } do
      local list, map = {}, {}
      for i = 1, n do
        list[i] = i % 7 == 0 and { i, { k = i } } or i
        map["k" .. i] = i % 5 == 0 and { i, "s" .. i } or "v" .. i
      end
      for _, doc in ipairs{ list, map, { list, map }, { a = list, b = map } } do
        local text = cjson.encode(doc)
        local ours = assert(decode(text))
        assert.is_true(same(cjson.decode(text), ours), text)
        if doc == list then assert.equal(n, #ours) end
      end
    end
  end)

  it("keeps integers integers (Lua 5.4), exact to 64 bits; the rest are floats; null is cjson.null", function()
    local v = assert(decode('{"total":100,"neg":-7,"max":9223372036854775807,"min":-9223372036854775808,'
      .. '"over":9223372036854775808,"frac":1.5,"exp":1e2,"zero":-0,"n":null,"t":true,"f":false,"o":{},"a":[]}'))
    assert.equal(100, v.total)
    assert.equal(-7, v.neg)
    assert.equal(1.5, v.frac)
    assert.equal(100, v.exp)
    assert.equal(0, v.zero)
    assert.equal(cjson.null, v.n)
    assert.is_true(v.t)
    assert.is_false(v.f)
    assert.same({}, v.o)
    assert.same({}, v.a)
    if is54 then
      assert.equal("integer", math.type(v.total))
      assert.equal(math.maxinteger, v.max)
      assert.equal(math.mininteger, v.min)
      assert.equal("float", math.type(v.over))
      assert.equal(2^63, v.over)
      assert.equal("float", math.type(v.exp))
      assert.equal("100", tostring(v.total))
    end
  end)

  it("unescapes as JSON says: \\u0000, BMP characters and surrogate pairs as UTF-8", function()
    assert.equal("a\0b", decode('"a\\u0000b"'))
    assert.equal("支付/\"\\\b\f\n\r\t", decode('"\\u652f\\u4ED8\\/\\"\\\\\\b\\f\\n\\r\\t"'))
    assert.equal("😀", decode('"\\ud83d\\ude00"'))
    assert.equal("\240\144\128\128", decode('"\\uD800\\uDC00"'))
  end)

  it("refuses, naming the offset and never the text: lone surrogates, control characters, too deep", function()
    local function refused(text, pattern)
      local v, err = decode(text)
      assert.is_nil(v)
      assert.matches(pattern, err)
      assert.is_nil(err:find("S3CRET", 1, true))
      return err
    end
    refused('{"S3CRET":"\\ud800"}', "lone high surrogate at offset 11")
    refused('["S3CRET\\udc00"]', "lone low surrogate")
    refused('["S3CRET\1"]', "control character in a string at offset 8")
    refused('{"S3CRET" 1}', "expected ':' at offset 10")
    refused('["S3CRET", 1e400]', "a number Lua cannot represent")
    refused(("["):rep(129) .. ("]"):rep(129), "nesting too deep at offset 128")
    assert.is_table(decode(("["):rep(128) .. ("]"):rep(128)))
  end)

  it("answers, never raises, when wide objects nested deep fill LuaJIT's stack of 8000 slots", function()
    -- 100 levels of 63 members each: every level's members wait on the stack
    local parts = {}
    for level = 1, 100 do
      local members = {}
      for m = 1, 62 do members[m] = ('"m%d":%d'):format(m, m) end
      parts[level] = "{" .. table.concat(members, ",") .. ',"next":'
    end
    local text = table.concat(parts) .. "null" .. ("}"):rep(100)
    local ok, value, err = pcall(decode, text)
    assert.is_true(ok, tostring(value))
    if value == nil then
      assert.is_truthy(jit, "only LuaJIT's stack is this small")
      assert.matches("nested too deeply for the Lua stack at offset %d+", err)
    else
      local depth, node = 0, value
      while type(node) == "table" do depth, node = depth + 1, node.next end
      assert.equal(100, depth)
    end
  end)

  it("raises only on a programmer error (not a string)", function()
    assert.has_error(function() decode({}) end)
    assert.has_error(function() decode() end)
  end)

  describe("accepts exactly what Node's JSON.parse accepts", function()
    local dir
    setup(function() dir = ossl.tmpdir() end)
    teardown(function() ossl.remove(dir) end)

    -- Node's verdict per text: "ok", "no", or "skip" where the two differ
    -- by design (a lone surrogate, which Node keeps and we refuse; a number
    -- beyond a double, which Node makes Infinity).
    local NODE = [[
const fs = require("fs");
const texts = fs.readFileSync(process.argv[2], "utf8").split("\n").filter(Boolean)
  .map((b) => Buffer.from(b.slice(1), "base64").toString("utf8"));
const lone = /(^|[^\ud800-\udbff])[\udc00-\udfff]|[\ud800-\udbff](?![\udc00-\udfff])/;
function odd(v) {
  if (typeof v === "number") return !isFinite(v);
  if (typeof v === "string") return lone.test(v);
  if (v && typeof v === "object") return Object.keys(v).some((k) => lone.test(k) || odd(v[k]));
  return false;
}
console.log(texts.map((t) => { try { return odd(JSON.parse(t)) ? "skip" : "ok"; } catch (e) { return "no"; } }).join("\n"));
]]

    local function node_verdicts(texts)
      local list = {}
      for i, t in ipairs(texts) do list[i] = "b" .. core.base64_encode(t) end   -- "b": no line is empty
      ossl.write(dir .. "/texts", table.concat(list, "\n") .. "\n")
      ossl.write(dir .. "/verdict.js", NODE)
      local out = ossl.run("node " .. ossl.quote(dir .. "/verdict.js") .. " " .. ossl.quote(dir .. "/texts"))
      local verdicts = {}
      for v in out:gmatch("%a+") do verdicts[#verdicts + 1] = v end
      assert.equal(#texts, #verdicts)
      return verdicts
    end

    local function agree(texts)
      local verdicts, compared = node_verdicts(texts), 0
      for i, text in ipairs(texts) do
        if verdicts[i] ~= "skip" then
          local ours = decode(text) ~= nil
          if ours ~= (verdicts[i] == "ok") then
            error(("%q: Node says %s, core.json_decode %s"):format(text, verdicts[i], ours and "ok" or "no"))
          end
          compared = compared + 1
        end
      end
      return compared
    end

    it("on edge cases of the grammar", function()
      local cases = { "", " ", "null", " true ", "false", "0", "-0", "01", "-01", "1.", ".1", "1.e1", "1e", "1e+",
        "1E-2", "+1", "-", "--1", "0x10", "NaN", "Infinity", "-Infinity", "nul", "tru", "truee", "[", "]", "[]", "[,]",
        "[1,]", "[1 2]", "[1,,2]", "{}", "{,}", '{"a"}', '{"a":}', '{"a":1,}', '{"a":1 "b":2}', "{'a':1}", '{a:1}',
        '{"a":1}}', '[1]]', '"', '"\\"', '"\\a"', '"\\u12"', '"\\u12G4"', '"\\uD83D\\uDE00"', '"\t"', '"\127"',
        '"\\/"', "\239\187\191{}", "{}\0", " \r\n\t[ ] \n", "[\f]", '"\194\160"', "[1]\n", "[1]x", '"\255"',
        "1e400", "123456789012345678901234567890", "-9223372036854775809", "[" .. ("1,"):rep(100) .. "1]" }
      assert.is_true(agree(cases) >= #cases - 2)
    end)

    it("on 3,000 seeded mutations of valid documents", function()
      local next_doc, state = generator(7), 99
      local function rand(n)
        state = (state * 1103515245 + 12345) % 2147483648
        return state % n + 1
      end
      local alphabet = '{}[]",:0123456789-+.eE \\/untrfalsebx\n\t\1'
      local texts = {}
      for i = 1, 3000 do
        local text = cjson.encode({ next_doc() })
        for _ = 1, rand(3) do
          local at, op, k = rand(#text + 1), rand(3), rand(#alphabet)
          local c = alphabet:sub(k, k)
          if op == 1 then text = text:sub(1, at - 1) .. c .. text:sub(at)
          elseif op == 2 then text = text:sub(1, at - 1) .. text:sub(at + 1)
          else text = text:sub(1, at - 1) .. c .. text:sub(at + 1) end
        end
        texts[i] = text
      end
      assert.is_true(agree(texts) >= 2900)
    end)
  end)
end)
