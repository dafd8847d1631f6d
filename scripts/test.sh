#!/bin/sh
# Runs the busted suite under Lua 5.4 and LuaJIT for each build folder given
# (`make test` gives OpenSSL's and mbedTLS's: four runs) and ends with ONE
# line "N passed, N failed", the totals of every run.
# WECHATPAY_VALGRIND=1 runs it under memcheck.
# Usage: scripts/test.sh BUILD_DIR... [-- busted args...]
builds=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do builds="$builds $1"; shift; done
[ "${1:-}" = "--" ] && shift
[ -z "$builds" ] && builds="build"
passed=0; failed=0; status=0
logdir=$(mktemp -d); trap 'rm -rf "$logdir"' EXIT

runner=""
if [ -n "$WECHATPAY_VALGRIND" ]; then
  runner="valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
    --show-leak-kinds=definite --suppressions=scripts/valgrind.supp --trace-children=no"
fi

# The specs that compare backends (spec/backends_spec.lua) load the other
# builds' core.so by path: every folder of this run, as one list.
WECHATPAY_BUILDS=""
for b in $builds; do WECHATPAY_BUILDS="$WECHATPAY_BUILDS ./$b"; done
export WECHATPAY_BUILDS

for build in $builds; do
  export WECHATPAY_BUILD="./$build"
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
    name="$lua, $build"
    echo "== busted under $lua with $build/$lua/wechatpay/core.so"
    if [ ! -f "$build/$lua/wechatpay/core.so" ]; then
      echo "$build/$lua/wechatpay/core.so is missing (make backends)"
      failed=$((failed + 1)); status=1
      continue
    fi
    interpreter=$lua
    # specs that start the interpreter again (the batch tool) use the same one
    export WECHATPAY_LUA=$lua
    [ -n "$dev" ] && interpreter="$build/$lua-host" && export WECHATPAY_LUA="$(pwd)/$interpreter"
    # LuaJIT's machine code makes memcheck crawl; the interpreter runs the
    # same C module calls, which is what memcheck is here for
    [ -n "$WECHATPAY_VALGRIND" ] && [ "$lua" = luajit ] && interpreter="luajit -joff"
    log="$logdir/$(echo "$name" | tr -c 'A-Za-z0-9.\n' _).log"
    $runner $interpreter /usr/bin/busted -o plainTerminal "$@" > "$log" 2>&1
    rc=$?
    cat "$log"
    summary=$(grep -E '^[0-9]+ successes? / [0-9]+ failures? / [0-9]+ errors?' "$log" | tail -n 1)
    if [ -z "$summary" ]; then
      echo "busted under $name ended without a summary (exit $rc)"
      failed=$((failed + 1)); status=1
      continue
    fi
    ok=$(echo "$summary" | sed -E 's/^([0-9]+) success.*/\1/')
    bad=$(echo "$summary" | sed -E 's#^[0-9]+ successes? / ([0-9]+) failures? / ([0-9]+) errors?.*#\1 \2#')
    f=$(echo "$bad" | awk '{print $1 + $2}')
    echo "-- $name: $ok ok, $f not ok"
    passed=$((passed + ok)); failed=$((failed + f))
    if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ]; then status=1; fi
    [ "$rc" -eq 99 ] && echo "valgrind reported errors under $name"
  done
done
echo "$passed passed, $failed failed"
exit $status
