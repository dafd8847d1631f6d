#!/bin/sh
# The README's first command: grant coupons against the built-in mock
# WeChat Pay (started and stopped by the example itself).
set -e
export LUA_PATH="./lua/?.lua;./lua/?/init.lua;./mock/?.lua;./mock/?/init.lua;;"
export LUA_CPATH="./build/lua5.4/?.so;;"
echo "== examples/grant_multiuse_coupon.lua --mock (Lua 5.4)"
lua5.4 examples/grant_multiuse_coupon.lua --mock
echo "== examples/download_bill.lua --mock (Lua 5.4)"
lua5.4 examples/download_bill.lua --mock
