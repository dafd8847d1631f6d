-- core.inflater and core.hasher (csrc/lstream.c) against the `gzip` and
-- `openssl dgst` command lines: the inflated bytes are gzip -d's, the
-- digests openssl's, fed in pieces of every awkward size.
local core = require("wechatpay.core")
local ossl = require("support.openssl")

describe("core.inflater and core.hasher against gzip and openssl", function()
  local dir
  local q = ossl.quote
  local function tmp(name) return dir .. "/" .. name end

  local function dgst(algorithm, path)
    local out = ossl.run("openssl dgst -" .. algorithm .. " -r " .. q(path))
    return assert(out:match("^(%x+)"), out)
  end

  -- Inflates `data` fed in pieces of `piece` bytes; -> output | nil, err
  local function inflate(data, piece, max_output)
    local inf = core.inflater(max_output)
    local out = {}
    for at = 1, #data, piece do
      local chunk, pos = data:sub(at, at + piece - 1), 1
      repeat
        local bytes, next_pos, more = inf:update(chunk, pos)
        if not bytes then return nil, next_pos end
        assert.is_true(#bytes <= (max_output or 262144))
        out[#out + 1] = bytes
        pos = next_pos
      until pos > #chunk and not more
    end
    local ended, err = inf:finish()
    if not ended then return nil, err end
    return table.concat(out)
  end

  setup(function()
    dir = ossl.tmpdir()
    -- compressible text and incompressible noise, gzipped by gzip(1)
    local lines = {}
    for i = 1, 20000 do lines[i] = ("`2026-11-26 10:00:%02d,`order-%d,`SUCCESS,`1.00"):format(i % 60, i) end
    ossl.write(tmp("text.csv"), table.concat(lines, "\r\n"))
    ossl.random_file(tmp("noise.bin"), 300000)
    ossl.write(tmp("empty.bin"), "")
    for _, name in ipairs{ "text.csv", "noise.bin", "empty.bin" } do
      ossl.run("gzip -n -c " .. q(tmp(name)) .. " > " .. q(tmp(name .. ".gz")))
    end
    -- two members back to back, as `cat a.gz b.gz` makes them
    ossl.run("cat " .. q(tmp("text.csv.gz")) .. " " .. q(tmp("noise.bin.gz")) .. " > " .. q(tmp("both.gz")))
  end)

  teardown(function() ossl.remove(dir) end)

  for _, case in ipairs{
    { "text", "text.csv", 1 }, { "text", "text.csv", 7 }, { "text", "text.csv", 65536 },
    { "noise", "noise.bin", 4093 }, { "empty", "empty.bin", 10 },
  } do
    it(("inflates gzip's %s fed %d bytes at a time to what gzip -d gives"):format(case[1], case[3]), function()
      local gz = ossl.read(tmp(case[2] .. ".gz"))
      local out = assert(inflate(gz, case[3]))
      assert.equal(ossl.run("gzip -d -c " .. q(tmp(case[2] .. ".gz"))), out)
      assert.equal(ossl.read(tmp(case[2])), out)
    end)
  end

  it("bounds the output of one call, however much one piece inflates to", function()
    local gz = ossl.read(tmp("text.csv.gz"))
    local out = assert(inflate(gz, #gz, 1000))   -- the whole file as one piece, 1000 bytes a call
    assert.equal(ossl.read(tmp("text.csv")), out)
  end)

  it("inflates members back to back, as gzip -d does", function()
    local out = assert(inflate(ossl.read(tmp("both.gz")), 5000))
    assert.equal(ossl.run("gzip -d -c " .. q(tmp("both.gz"))), out)
  end)

  it("ignores zero bytes padding the end, as gzip -d does, and nothing else after them", function()
    local gz = ossl.read(tmp("text.csv.gz"))
    local padded = gz .. string.rep("\0", 700)
    ossl.write(tmp("padded.gz"), padded)
    local expected = ossl.run("gzip -d -c " .. q(tmp("padded.gz")))   -- gzip -d fails on anything it refuses
    assert.equal(ossl.read(tmp("text.csv")), expected)
    for _, piece in ipairs{ 1, 333, #gz, #padded } do
      assert.equal(expected, assert(inflate(padded, piece)))
    end
    -- gzip -d calls what follows padding "trailing garbage"; here it is corrupt
    for _, after in ipairs{ "\1", ossl.read(tmp("noise.bin.gz")) } do
      local out, err = inflate(padded .. after, 4096)
      assert.is_nil(out)
      assert.equal("corrupt gzip stream (bytes after its zero padding)", err)
    end
  end)

  it("says a gzip stream cut short is truncated, at any cut", function()
    local gz = ossl.read(tmp("text.csv.gz"))
    for _, keep in ipairs{ 1, 10, math.floor(#gz / 2), #gz - 4, #gz - 1 } do
      local out, err = inflate(gz:sub(1, keep), 999)
      assert.is_nil(out)
      assert.matches("truncated gzip stream", err)
    end
  end)

  it("says a corrupt stream is corrupt: a flipped byte, a bad CRC, not gzip at all", function()
    local gz = ossl.read(tmp("text.csv.gz"))
    local middle = math.floor(#gz / 2)
    local flipped = gz:sub(1, middle - 1) .. string.char((gz:byte(middle) + 1) % 256) .. gz:sub(middle + 1)
    local crc = #gz - 7   -- the trailer: CRC32 then the length, 4 bytes each
    local bad_crc = gz:sub(1, crc - 1) .. string.char((gz:byte(crc) + 1) % 256) .. gz:sub(crc + 1)
    for _, input in ipairs{ flipped, bad_crc, "plain text, not gzip", gz .. "trailing junk" } do
      local out, err = inflate(input, 4096)
      assert.is_nil(out)
      assert.matches("corrupt gzip stream", err)
    end
    -- a failed inflater stays failed
    local inf = core.inflater()
    assert.is_nil((inf:update("not gzip")))
    assert.is_nil((inf:update(gz)))
  end)

  it("refuses bad arguments and a closed inflater", function()
    assert.has_error(function() core.inflater(0) end)
    assert.has_error(function() core.inflater(1e12) end)
    local inf = core.inflater()
    assert.has_error(function() inf:update({}) end)
    assert.has_error(function() inf:update("abc", 5) end)
    assert.has_error(function() inf:update("abc", 0) end)
    inf:close()
    inf:close()
    assert.has_error(function() inf:update("abc") end)
    assert.matches("closed", tostring(inf))
  end)

  for _, algorithm in ipairs{ "sha1", "sha256" } do
    it(algorithm .. " in pieces equals openssl dgst on the whole file", function()
      for _, name in ipairs{ "text.csv", "noise.bin", "empty.bin" } do
        local data = ossl.read(tmp(name))
        for _, piece in ipairs{ 1, 63, 64, 65, 100000 } do
          if piece > 1 or #data < 30000 then   -- byte by byte only on small inputs
            local h = core.hasher(algorithm)
            for at = 1, #data, piece do assert.equal(h, h:update(data:sub(at, at + piece - 1))) end
            assert.equal(dgst(algorithm, tmp(name)), h:final())
          end
        end
      end
    end)
  end

  it("a hasher gives its digest once, and refuses unknown algorithms", function()
    local h = core.hasher("sha256")
    h:update("abc")
    assert.equal(dgst("sha256", ossl.write(tmp("abc.txt"), "abc")), h:final())
    assert.has_error(function() h:final() end)
    assert.has_error(function() h:update("more") end)
    assert.has_error(function() core.hasher("md5") end)
    assert.has_error(function() core.hasher() end)
    local closed = core.hasher("sha1")
    closed:close()
    assert.has_error(function() closed:update("x") end)
  end)
end)
