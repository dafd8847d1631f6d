#!/bin/sh
# Benchmarks (`make bench`): every bench script under every runtime on both
# crypto backends (OpenSSL's build and mbedTLS's), mbedTLS called directly
# from C (bench/sign_direct.c) and `openssl speed`, merged into one Markdown
# table that can go into the README as it is.
#
# A bench script is a Lua file that, with BENCH_TSV=1, prints one line per
# operation: "id<TAB>ops/s<TAB>what[<TAB>note]".  Rows with the same id from
# different runtimes and from C share a table row.  To add one, drop it in
# bench/ (all of bench/*.lua run by default) or list it in BENCH_SCRIPTS.
#
# Environment:
#   BENCH_SCRIPTS    Lua bench scripts, default bench/*.lua
#   BENCH_RUNTIMES   default "lua5.4 luajit"; each uses build/<runtime>/
#   BENCH_SECONDS    CPU seconds per run (1); BENCH_RUNS runs per median (5)
#   BENCH_OPENSSL=0  skip `openssl speed` (it takes ~7 s)
#   BENCH_CALLGRIND=0  skip counting, with valgrind, the instructions Lua adds to
#                    a sign (~25 s): exact where ops/s on a busy machine are not
#   BUILD            the OpenSSL build folder, default build
#   MBEDTLS_BUILD    the mbedTLS build folder, default $BUILD/mbedtls ("" to skip it)
#   BENCH_CLIENT=0   skip the client benchmarks (bench/client/grants.lua)
#   BENCH_PEER=0     skip our client side by side with the Node SDK (bench/peer/run.sh,
#                    its own PEER_* settings; ~2.5 min)
set -u
cd "$(dirname "$0")/.." || exit 2

scripts=${BENCH_SCRIPTS:-$(ls bench/*.lua 2>/dev/null)}
runtimes=${BENCH_RUNTIMES:-"lua5.4 luajit"}
build=${BUILD:-build}
case $build in /*) ;; *) build="./$build" ;; esac
mbuild=${MBEDTLS_BUILD-$build/mbedtls}
case $mbuild in /*|./*|"") ;; *) mbuild="./$mbuild" ;; esac
export BENCH_SECONDS=${BENCH_SECONDS:-1} BENCH_RUNS=${BENCH_RUNS:-5}
out=build/bench
mkdir -p "$out"

tmp=$(mktemp -d) || exit 2
trap 'rm -rf "$tmp"' EXIT INT TERM

# ---- the C baseline and the shared key material -----------------------------
${CC:-cc} -O2 -g -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra bench/sign_direct.c \
  -o "$out/sign_direct" -lmbedtls -lmbedx509 -lmbedcrypto || exit 2

export BENCH_KEYDIR="$tmp"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/key.pem" 2>/dev/null &&
  openssl pkey -in "$tmp/key.pem" -pubout -out "$tmp/pub.pem" || exit 2
# a request's signing message of 200 bytes: method, URL, time, nonce, body
{ printf 'POST\n/v3/pay/transactions/jsapi\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n'
  printf '{"appid":"wxd678efh567hg6787","mchid":"1230000109","description":"Image形象店-深圳腾大-QQ公仔"}'
  printf '%0200d' 0; } | head -c 199 > "$tmp/msg.bin" && printf '\n' >> "$tmp/msg.bin"

# ---- the machine ------------------------------------------------------------
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "## Benchmarks"
echo
echo "- CPU: ${cpu:-unknown} ($(grep -c '^processor' /proc/cpuinfo) logical CPUs), $(uname -sr)"
for rt in $runtimes; do
  echo "- $($rt -v 2>&1 | head -n 1 | sed 's/ --.*//; s/ *Copyright.*//')"
done
echo "- $("$out/sign_direct" --version)"
echo "- $(openssl version)"
echo "- ops/s: median of $BENCH_RUNS runs of ~${BENCH_SECONDS}s of process CPU time; RSA keys 2048-bit"
echo

# ---- run ----------------------------------------------------------------------
status=0
columns=""
# a column per runtime and backend: "lua5.4" runs OpenSSL's build, "lua5.4-mbedtls" mbedTLS's
for rt in $runtimes; do
  if ! command -v "$rt" >/dev/null 2>&1; then echo "bench: $rt not found, skipped" >&2; continue; fi
  for col in "$rt" "$rt-mbedtls"; do
    dir=$build
    [ "$col" = "$rt-mbedtls" ] && dir=$mbuild
    [ -n "$dir" ] || continue
    if [ ! -f "$dir/$rt/wechatpay/core.so" ]; then
      echo "bench: $dir/$rt/wechatpay/core.so missing (run make backends), $col skipped" >&2; continue
    fi
    : > "$tmp/$col.tsv"
    for s in $scripts; do
      echo "running $s under $rt with $dir ..." >&2
      LUA_PATH='./lua/?.lua;./lua/?/init.lua;./mock/?.lua;./mock/?/init.lua;;' LUA_CPATH="$dir/$rt/?.so;;" BENCH_TSV=1 \
        "$rt" "$s" >> "$tmp/$col.tsv" || { echo "bench: $s failed under $col" >&2; status=1; }
    done
    columns="$columns $col"
  done
done

echo "running bench/sign_direct.c ..." >&2
"$out/sign_direct" "$tmp/key.pem" "$tmp/msg.bin" "$BENCH_SECONDS" "$BENCH_RUNS" > "$tmp/C.tsv" || status=1
columns="$columns C"

if [ "${BENCH_OPENSSL:-1}" != 0 ]; then
  echo "running openssl speed -seconds 3 rsa2048 ..." >&2
  # "rsa 2048 bits 0.000563s 0.000017s   1775.9  58962.0": sign/s and verify/s last
  openssl speed -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048 bits/ {
    printf "rsa.sign\t%s\topenssl speed rsa2048 sign\n", $(NF-1)
    printf "rsa.verify\t%s\topenssl speed rsa2048 verify\n", $NF }' > "$tmp/OpenSSL.tsv"
  columns="$columns OpenSSL"
fi

# ---- the table ------------------------------------------------------------------
# Rows in the order the first runtime printed them, then ids only C has.
header() {
  case $1 in
    lua5.4) echo "Lua 5.4, OpenSSL" ;; luajit) echo "LuaJIT, OpenSSL" ;;
    lua5.4-mbedtls) echo "Lua 5.4, mbedTLS" ;; luajit-mbedtls) echo "LuaJIT, mbedTLS" ;; C) echo "C, mbedTLS direct" ;;
    OpenSSL) echo "openssl speed" ;; *) echo "$1" ;;
  esac
}
{
  for c in $columns; do
    [ -f "$tmp/$c.tsv" ] && awk -F '\t' -v col="$c" -v title="$(header "$c")" \
      'NF >= 2 { print col "\t" title "\t" $1 "\t" $2 "\t" $3 }' "$tmp/$c.tsv"
  done
} | awk -F '\t' '
  function fmt(x) { return x == "" ? "-" : (x >= 100 ? sprintf("%.0f", x) : sprintf("%.1f", x)) }
  !(($1) in seen_col) { seen_col[$1] = 1; cols[++ncol] = $1; title[$1] = $2 }
  !(($3) in seen_row) { seen_row[$3] = 1; rows[++nrow] = $3 }
  { ops[$3, $1] = $4; if (!(($3) in what)) what[$3] = $5 }
  END {
    line = "| operation"; sep = "|---"
    for (c = 1; c <= ncol; c++) { line = line " | " title[cols[c]]; sep = sep "|---:" }
    print line " |"; print sep "|"
    for (r = 1; r <= nrow; r++) {
      line = "| " what[rows[r]]
      for (c = 1; c <= ncol; c++) line = line " | " fmt(ops[rows[r], cols[c]])
      print line " |"
    }
  }'
echo
echo "(ops/s; higher is better.  The Lua columns run the same bench/*.lua on the OpenSSL build (the default)"
echo "and on the mbedTLS build (CRYPTO=mbedtls).  \"C, mbedTLS direct\" signs the same key and message from C with"
echo "mbedtls_rsa_rsassa_pkcs1_v15_sign, what the mbedTLS build calls; \"openssl speed\" is OpenSSL's own loop.)"
echo

# ---- the targets: mbedTLS's Lua sign within 5% of its C sign; OpenSSL's Lua
# sign at least 0.9 of `openssl speed`'s in the same run ----------------------------
c_sign=$(awk -F '\t' '$1 == "rsa.sign" { print $2 }' "$tmp/C.tsv")
speed_sign=$(awk -F '\t' '$1 == "rsa.sign" { print $2 }' "$tmp/OpenSSL.tsv" 2>/dev/null)
for rt in $runtimes; do
  if [ -f "$tmp/$rt-mbedtls.tsv" ] && [ -n "$c_sign" ]; then
    lua_sign=$(awk -F '\t' '$1 == "rsa.sign" { print $2 }' "$tmp/$rt-mbedtls.tsv")
    [ -n "$lua_sign" ] && awk -v rt="$(header "$rt-mbedtls")" -v l="$lua_sign" -v c="$c_sign" 'BEGIN {
      o = (c / l - 1) * 100
      printf "Lua sign vs direct C sign (%s): %.1f%% overhead (%.0f vs %.0f signs/s; target: within 5%%)\n", rt, o, l, c }'
  fi
  if [ -f "$tmp/$rt.tsv" ] && [ -n "$speed_sign" ]; then
    lua_sign=$(awk -F '\t' '$1 == "rsa.sign" { print $2 }' "$tmp/$rt.tsv")
    [ -n "$lua_sign" ] && awk -v rt="$(header "$rt")" -v l="$lua_sign" -v c="$speed_sign" 'BEGIN {
      printf "Lua sign vs openssl speed (%s): %.2fx (%.0f vs %.0f signs/s; target: at least 0.9x)\n", rt, l / c, l, c }'
  fi
done

for rt in $runtimes; do [ -f "$tmp/$rt.tsv" ] && awk -F '\t' -v rt="$(header "$rt")" '$1 == "callback.crypto" { c = $2 } $1 == "callback.parse" { p = $2 } $1 == "callback.handle" { h = $2 } $1 == "callback.parse_plain" { n = $2 } $1 == "callback.parse_flat" { f = $2 } END { if (c && p) printf "Callback handling vs its crypto (%s): parse %.1f%%, handle %.1f%% overhead on a documented payment result with a coupon (%.0f, %.0f vs %.0f callbacks/s); parse %.1f%% without the coupon, %.1f%% on one long member (target: within 20%%)\n", rt, (c / p - 1) * 100, (c / h - 1) * 100, p, h, c, (c / n - 1) * 100, (c / f - 1) * 100 }' "$tmp/$rt.tsv"; done
# ---- optional: instruction counts, which noise does not move ------------------------
# Instructions outside mbedtls_rsa_rsassa_pkcs1_v15_sign per call (argument checks, the
# SHA-256, base64, the Lua call), from runs of N1 and N2 calls: the difference leaves out
# start-up and key parsing, and subtracting the sign itself leaves out the blinding's
# random variation.
if [ "${BENCH_CALLGRIND:-1}" = 1 ] && command -v valgrind >/dev/null 2>&1; then
  echo
  n1=5; n2=25
  # prints "TOTAL SIGN": all instructions, and those inside the mbedTLS sign
  ir() {
    valgrind --tool=callgrind --callgrind-out-file="$tmp/cg" "$@" > /dev/null 2>&1 || return 1
    callgrind_annotate --inclusive=yes --threshold=100 "$tmp/cg" 2>/dev/null | tr -d , | awk -v q="'" '
      /PROGRAM TOTALS/ { total = $1 }
      /:mbedtls_rsa_rsassa_pkcs1_v15_sign / && !index($0, q) && !sign { sign = $1 }
      END { print total, sign }'
  }
  c1=$(ir "$out/sign_direct" "$tmp/key.pem" "$tmp/msg.bin" --count $n1 rsa.sign)
  c2=$(ir "$out/sign_direct" "$tmp/key.pem" "$tmp/msg.bin" --count $n2 rsa.sign)
  # the mbedTLS build: the same library function on both sides
  for rt in $runtimes; do
    [ -f "$tmp/$rt-mbedtls.tsv" ] || continue
    l1=$(LUA_PATH='./lua/?.lua;./lua/?/init.lua;./mock/?.lua;./mock/?/init.lua;;' LUA_CPATH="$mbuild/$rt/?.so;;" BENCH_ONLY=rsa.sign \
      BENCH_COUNT=$n1 ir "$rt" bench/crypto.lua)
    l2=$(LUA_PATH='./lua/?.lua;./lua/?/init.lua;./mock/?.lua;./mock/?/init.lua;;' LUA_CPATH="$mbuild/$rt/?.so;;" BENCH_ONLY=rsa.sign \
      BENCH_COUNT=$n2 ir "$rt" bench/crypto.lua)
    echo "$c1 $c2 $l1 $l2" | awk -v rt="$(header "$rt-mbedtls")" -v n=$((n2 - n1)) '{
      sign = ($4 - $2) / n                               # mbedTLS sign, per call
      c = (($3 - $4) - ($1 - $2)) / n                    # the rest, C program
      l = (($7 - $8) - ($5 - $6)) / n                    # the rest, through Lua
      printf "callgrind (%s): mbedTLS sign %.0f instructions/call; around it: C %.0f, Lua %.0f;", rt, sign, c, l
      printf " Lua adds %.0f = %.3f%% of a sign\n", l - c, (l - c) / sign * 100 }'
  done
fi
# ---- the client against the loopback mock: calls/s and CPU per call ---------------
# BENCH_CLIENT_RUNTIMES (default lua5.4), BENCH_CLIENT_PARTS (default all), and
# bench/client/grants.lua's own BENCH_GRANTS, BENCH_ASYNC_GRANTS, BENCH_LATENCY.
if [ "${BENCH_CLIENT:-1}" != 0 ]; then
  for rt in ${BENCH_CLIENT_RUNTIMES:-lua5.4}; do
    echo
    echo "running bench/client/grants.lua under $rt ..." >&2
    LUA_PATH='./lua/?.lua;./lua/?/init.lua;./mock/?.lua;./mock/?/init.lua;;' LUA_CPATH="./$build/$rt/?.so;;" \
      "$rt" bench/client/grants.lua ${BENCH_CLIENT_PARTS:-} || { echo "bench: client benchmark failed under $rt" >&2; status=1; }
  done
fi
# ---- our client side by side with the official Node SDK, one mock -----------------
if [ "${BENCH_PEER:-1}" != 0 ]; then
  echo
  echo "running bench/peer/run.sh ..." >&2
  BUILD="$build" bench/peer/run.sh || { echo "bench: bench/peer/run.sh failed" >&2; status=1; }
fi
exit $status
