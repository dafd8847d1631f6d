-- Nonces and random bytes: shape, uniqueness, a loose uniformity check, and
-- fresh randomness in every forked process (nginx forks its workers after
-- the module is loaded and the generator may already be seeded).
local random = require("wechatpay.random")
local ossl = require("support.openssl")

local ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

-- Pearson's chi-square statistic of `counts` (keyed 1..k) against a uniform law.
local function chi_square(counts, k, total)
  local expected = total / k
  local sum = 0
  for i = 1, k do
    local d = (counts[i] or 0) - expected
    sum = sum + d * d / expected
  end
  return sum
end


describe("wechatpay.random", function()
  describe("nonce", function()
    it("is 32 characters of [0-9A-Za-z] by default", function()
      for _ = 1, 100 do
        local n = random.nonce()
        assert.equal(32, #n)
        assert.matches("^[0-9A-Za-z]+$", n)
      end
    end)

    it("has the length asked for, from 1 to 128", function()
      for _, len in ipairs{ 1, 2, 12, 16, 31, 32, 33, 64, 100, 127, 128 } do
        local n = random.nonce(len)
        assert.equal(len, #n)
        assert.matches("^[0-9A-Za-z]+$", n)
      end
    end)

    it("10,000 nonces are all distinct", function()
      local seen = {}
      for i = 1, 10000 do
        local n = random.nonce()
        assert.is_nil(seen[n], "repeated nonce after " .. i)
        seen[n] = true
      end
    end)

    it("uses the 62 symbols about equally (loose chi-square bound)", function()
      local index = {}
      for i = 1, #ALPHABET do index[ALPHABET:sub(i, i)] = i end
      local counts, first, total = {}, {}, 0
      for _ = 1, 10000 do
        local n = random.nonce()
        for i = 1, #n do
          local c = index[n:sub(i, i)]
          counts[c] = (counts[c] or 0) + 1
        end
        total = total + #n
        local f = index[n:sub(1, 1)]
        first[f] = (first[f] or 0) + 1
      end
      for i = 1, 62 do
        assert.is_true((counts[i] or 0) > 0, "never saw " .. ALPHABET:sub(i, i))
      end
      -- 61 degrees of freedom: mean 61, sd 11.  150 is about 8 sd away, so a
      -- sound generator never fails; a biased one (e.g. `byte % 62` without
      -- rejection: the first 8 symbols 1.25x as likely) scores about 2000.
      local stat = chi_square(counts, 62, total)
      assert.is_true(stat < 150, ("chi-square %.1f over all characters"):format(stat))
      -- and no symbol is more than 1.1x or less than 0.9x as frequent as expected
      local expected = total / 62
      for i = 1, 62 do
        local ratio = counts[i] / expected
        assert.is_true(ratio > 0.9 and ratio < 1.1, ("%s at %.3f of its share"):format(ALPHABET:sub(i, i), ratio))
      end
      local stat_first = chi_square(first, 62, 10000)
      assert.is_true(stat_first < 150, ("chi-square %.1f over the first character"):format(stat_first))
    end)

    it("raises for a length outside 1..128 or not a number", function()
      for _, bad in ipairs{ 0, -1, 129, 1000, "abc", {} } do
        assert.has_error(function() random.nonce(bad) end)
      end
    end)
  end)

  describe("bytes", function()
    it("has the length asked for", function()
      for _, len in ipairs{ 0, 1, 16, 32, 255, 1000, 1048576 } do
        assert.equal(len, #random.bytes(len))
      end
    end)

    it("two draws differ", function()
      assert.are_not.equal(random.bytes(32), random.bytes(32))
    end)

    it("uses the 256 byte values about equally (loose chi-square bound)", function()
      local data = random.bytes(1048576)
      local counts = {}
      for i = 1, #data, 4096 do
        local chunk = { data:byte(i, i + 4095) }
        for j = 1, #chunk do
          local b = chunk[j] + 1
          counts[b] = (counts[b] or 0) + 1
        end
      end
      -- 255 degrees of freedom: mean 255, sd 22.6; 450 is over 8 sd away.
      local stat = chi_square(counts, 256, #data)
      assert.is_true(stat < 450, ("chi-square %.1f"):format(stat))
      local odd = 0
      for b = 2, 256, 2 do odd = odd + (counts[b] or 0) end
      assert.is_true(math.abs(odd / #data - 0.5) < 0.01, "odd bytes " .. odd)
    end)

    it("raises for a bad length", function()
      for _, bad in ipairs{ -1, 1048577, "abc", {} } do
        assert.has_error(function() random.bytes(bad) end)
      end
      assert.has_error(function() random.bytes() end)
    end)
  end)

  describe("in forked processes", function()
    local dir, proc

    setup(function()
      dir = ossl.tmpdir()
      proc = require("support.process").api(dir)
    end)

    teardown(function() ossl.remove(dir) end)

    -- The child's fn() result, through a pipe.
    local function in_child(fn) return proc.collect(proc.spawn(fn)) end

    it("a child's next nonce differs from the parent's", function()
      for _ = 1, 3 do
        random.nonce()                     -- seeded in the parent before the fork
        local child = in_child(random.nonce)
        local parent = random.nonce()
        assert.matches("^[0-9A-Za-z]+$", child)
        assert.equal(32, #child)
        assert.are_not.equal(parent, child)
      end
    end)

    it("two children differ from each other and from the parent", function()
      random.nonce()
      local first = in_child(random.nonce)
      local second = in_child(random.nonce)
      local parent = random.nonce()
      assert.equal(32, #first)
      assert.equal(32, #second)
      assert.are_not.equal(first, second)
      assert.are_not.equal(parent, first)
      assert.are_not.equal(parent, second)
    end)

    it("random bytes differ between parent and child too", function()
      random.bytes(16)
      local child = in_child(function() return random.bytes(32) end)
      local parent = random.bytes(32)
      assert.equal(32, #child)
      assert.are_not.equal(parent, child)
    end)

    it("a grandchild differs from its parent and grandparent", function()
      random.nonce()
      local pair = in_child(function()
        random.nonce()
        local grandchild = in_child(random.nonce)
        return random.nonce() .. grandchild
      end)
      local parent = random.nonce()
      assert.equal(64, #pair)
      local child, grandchild = pair:sub(1, 32), pair:sub(33)
      assert.are_not.equal(child, grandchild)
      assert.are_not.equal(parent, child)
      assert.are_not.equal(parent, grandchild)
    end)
  end)
end)
