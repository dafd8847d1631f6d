#!/bin/sh
# The README's first command: grant coupons, upload an image and check a configuration, against the built-in mock
# WeChat Pay (started and stopped by the example itself).
set -e
export LUA_PATH="./lua/?.lua;./lua/?/init.lua;./mock/?.lua;./mock/?/init.lua;;"
export LUA_CPATH="./build/lua5.4/?.so;;"
echo "== examples/grant_multiuse_coupon.lua --mock (Lua 5.4)"
lua5.4 examples/grant_multiuse_coupon.lua --mock
echo "== examples/upload_media.lua --mock (Lua 5.4)"
lua5.4 examples/upload_media.lua --mock
echo "== examples/download_bill.lua --mock (Lua 5.4)"
lua5.4 examples/download_bill.lua --mock
echo "== examples/send_red_packet.lua --mock (Lua 5.4): one APIv2 red packet over mutual TLS"
lua5.4 examples/send_red_packet.lua --mock
echo "== bin/wechatpay doctor --mock (Lua 5.4): every check of a configuration, against a fresh mock"
lua5.4 bin/wechatpay doctor --mock
