--- Small helpers the mock needs both in the launcher and in the nginx worker.
local util = {}

--- Lower-case hex of a byte string.
function util.hex(bytes)
  return (bytes:gsub(".", function(c)
    return string.format("%02x", c:byte())
  end))
end

--- read_file(path) -> contents | nil, err
function util.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then
    return nil, err
  end
  local data = f:read("*a")
  f:close()
  return data
end

--- write_file(path, data) -> true | nil, err
function util.write_file(path, data)
  local f, err = io.open(path, "wb")
  if not f then
    return nil, err
  end
  local ok, werr = f:write(data)
  f:close()
  if not ok then
    return nil, werr
  end
  return true
end

return util
