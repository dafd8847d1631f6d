#!/bin/sh
# The batch tool end to end: 1,000 synthetic users (deterministic openids,
# Chinese names, 18-digit ID numbers) granted a stock by bin/wechatpay-grant
# against the built-in mock WeChat Pay, which is seeded from the same CSV.
# Usage: scripts/demo_batch.sh [ROWS]   (from anywhere; Lua 5.4; run `make` first)
set -e
cd "$(dirname "$0")/.."
rows=${1:-1000}
export LUA_PATH="./lua/?.lua;./lua/?/init.lua;./mock/?.lua;./mock/?/init.lua;;"
export LUA_CPATH="./build/lua5.4/?.so;;"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

lua5.4 - "$rows" "$dir/users.csv" <<'LUA'
-- Synthetic users: "o" + 27 characters derived from the row number (mixed
-- case, "_" and "-", as real openids have), a name from common surnames and
-- given names, and an ID number with a valid GB 11643 check digit.
local sha256 = require("wechatpay.hash").sha256
local rows, path = tonumber(arg[1]), arg[2]
local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
local SURNAMES = { "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "欧阳", "司马" }
local GIVEN = { "伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀兰", "霞" }
local WEIGHTS = { 7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2 }
local CHECK = "10X98765432"
local function byte_at(h, i) return tonumber(h:sub(2 * i - 1, 2 * i), 16) end
local out = assert(io.open(path, "wb"))
out:write("openid,name,id_card_number\n")
for i = 1, rows do
  local h = sha256("wechatpay-lua demo user " .. i)
  local openid = { "o" }
  for j = 1, 27 do
    local k = byte_at(h, j) % 64 + 1
    openid[#openid + 1] = ALPHABET:sub(k, k)
  end
  local name = SURNAMES[byte_at(h, 28) % #SURNAMES + 1] .. GIVEN[byte_at(h, 29) % #GIVEN + 1]
    .. (byte_at(h, 30) % 2 == 0 and GIVEN[byte_at(h, 31) % #GIVEN + 1] or "")
  local born = ("%04d%02d%02d"):format(1960 + byte_at(h, 32) % 45, 1 + byte_at(h, 1) % 12, 1 + byte_at(h, 2) % 28)
  local id = ("110101%s%03d"):format(born, i % 1000)
  local sum = 0
  for j = 1, 17 do sum = sum + tonumber(id:sub(j, j)) * WEIGHTS[j] end
  local check = sum % 11 + 1
  out:write(table.concat(openid), ",", name, ",", id, CHECK:sub(check, check), "\n")
end
out:close()
LUA

echo "== $rows users in $dir/users.csv, e.g.:"
sed -n '1,3p' "$dir/users.csv" | sed 's/^/   /'
echo "== bin/wechatpay-grant --mock (Lua 5.4), concurrency 8, --rate 100000:"
echo "   the demo lifts the default 1000 grants/min (WeChat Pay's documented limit) so it is not throttled"
set +e
lua5.4 bin/wechatpay-grant --mock --stock 9856000 --appid wx233544546545989 \
  --input "$dir/users.csv" --results "$dir/results.csv" --rate 100000
status=$?
set -e
echo "== results ($(($(wc -l < "$dir/results.csv") - 1)) lines), first three:"
sed -n '1,4p' "$dir/results.csv" | sed 's/^/   /'
echo "== exit status $status"
exit $status
