--- Test support: files of each type WeChat Pay's upload endpoints take, as
-- their first bytes (what `file --mime-type` and the mock judge by) and
-- filler up to the size a spec wants.  Nothing binary is committed: the
-- bytes are made here.
local M = {}

local PAD = ("\0"):rep(64)

--- The first bytes of a file of each type.
M.HEADERS = {
  jpeg = "\255\216\255\224\0\16JFIF\0\1\1\0\0\1\0\1\0\0",
  png = "\137PNG\r\n\26\n\0\0\0\13IHDR\0\0\0\1\0\0\0\1\8\2\0\0\0",
  gif = "GIF89a\1\0\1\0\0\0\0",
  bmp = "BM\226\0\0\0\0\0\0\0\26\0\0\0\12\0\0\0\1\0\1\0\1\0\24\0",
  mp4 = "\0\0\0\24ftypisom\0\0\2\0isomiso2\0\0\0\8free",
  mov = "\0\0\0\20ftypqt  \0\0\2\0qt  \0\0\0\8wide",
  m4v = "\0\0\0\24ftypM4V \0\0\0\1M4V isom\0\0\0\8free",
  f4v = "\0\0\0\24ftypF4V \0\0\0\1F4V isom\0\0\0\8free",
  avi = "RIFF\200\0\0\0AVI LIST",
  wmv = "\48\38\178\117\142\102\207\17\166\217\0\170\0\98\206\108",
  mpeg = "\0\0\1\186\68\0\4\0\4\1\1\137\195\248",
  mkv = "\26\69\223\163\159\66\134\129\1\66\247\129\1\66\242\129\4\66\243\129\8\66\130\136matroska"
    .. "\66\135\129\4\66\133\129\2",
  flv = "FLV\1\5\0\0\0\9\0\0\0\0",
  rmvb = ".RMF\0\0\0\18\0\1\0\0\0\0\0\0\0\5",
}

--- The Content-Type the client must send for each, and the ones
-- `file --mime-type` (libmagic 5.44) may name for the same bytes.
M.TYPES = {
  jpeg = { "image/jpeg" }, png = { "image/png" }, gif = { "image/gif" }, bmp = { "image/bmp", "image/x-ms-bmp" },
  mp4 = { "video/mp4" }, mov = { "video/quicktime" }, m4v = { "video/x-m4v" }, f4v = { "video/x-f4v", "video/mp4" },
  avi = { "video/x-msvideo" }, wmv = { "video/x-ms-wmv", "video/x-ms-asf" }, mpeg = { "video/mpeg" },
  mkv = { "video/x-matroska" }, flv = { "video/x-flv" },
  rmvb = { "application/vnd.rn-realmedia-vbr", "application/vnd.rn-realmedia" },
}

--- bytes(kind, size [, tag]) -> exactly size bytes of that type; tag (a
-- string) makes files of the same size differ.
function M.bytes(kind, size, tag)
  local head = assert(M.HEADERS[kind], kind) .. PAD .. (tag or "")
  assert(size >= #head, "a sample is at least " .. #head .. " bytes")
  return head .. ("\0"):rep(size - #head)
end

return M
