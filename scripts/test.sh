#!/bin/sh
# Runs the busted suite under Lua 5.4 and LuaJIT and ends with one line
# "N passed, N failed".  WECHATPAY_VALGRIND=1 runs it under memcheck.
# Usage: scripts/test.sh BUILD_DIR [busted args...]
build=${1:-build}; [ $# -gt 0 ] && shift
export WECHATPAY_BUILD="./$build"
passed=0; failed=0; status=0
logdir=$(mktemp -d); trap 'rm -rf "$logdir"' EXIT

runner=""
if [ -n "$WECHATPAY_VALGRIND" ]; then
  runner="valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
    --show-leak-kinds=definite --suppressions=scripts/valgrind.supp --trace-children=no"
fi
dev=""
if [ -d "$build" ] && [ "${build#build/dev}" != "$build" ]; then
  # DEV=1 build: the stock interpreters are not instrumented, so the suite
  # runs in small ASan-linked hosts; the programs the specs start do not.
  dev=1
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
  san="-g -fsanitize=address,undefined -fno-omit-frame-pointer"
  cc $san scripts/lua_host.c -I/usr/include/lua5.4 -llua5.4 -o "$build/lua5.4-host" &&
    cc $san scripts/lua_host.c -I/usr/include/luajit-2.1 -lluajit-5.1 -o "$build/luajit-host" || exit 2
fi

for lua in lua5.4 luajit; do
  echo "== busted under $lua"
  interpreter=$lua
  # specs that start the interpreter again (the batch tool) use the same one
  export WECHATPAY_LUA=$lua
  [ -n "$dev" ] && interpreter="$build/$lua-host" && export WECHATPAY_LUA="$(pwd)/$interpreter"
  # LuaJIT's machine code makes memcheck crawl; the interpreter runs the
  # same C module calls, which is what memcheck is here for
  [ -n "$WECHATPAY_VALGRIND" ] && [ "$lua" = luajit ] && interpreter="luajit -joff"
  $runner $interpreter /usr/bin/busted -o plainTerminal "$@" > "$logdir/$lua.log" 2>&1
  rc=$?
  cat "$logdir/$lua.log"
  summary=$(grep -E '^[0-9]+ successes? / [0-9]+ failures? / [0-9]+ errors?' "$logdir/$lua.log" | tail -n 1)
  if [ -z "$summary" ]; then
    echo "busted under $lua ended without a summary (exit $rc)"
    failed=$((failed + 1)); status=1
    continue
  fi
  ok=$(echo "$summary" | sed -E 's/^([0-9]+) success.*/\1/')
  bad=$(echo "$summary" | sed -E 's#^[0-9]+ successes? / ([0-9]+) failures? / ([0-9]+) errors?.*#\1 \2#')
  f=$(echo "$bad" | awk '{print $1 + $2}')
  passed=$((passed + ok)); failed=$((failed + f))
  if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ]; then status=1; fi
  [ "$rc" -eq 99 ] && echo "valgrind reported errors under $lua"
done
echo "$passed passed, $failed failed"
exit $status
