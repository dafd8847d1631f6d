#!/bin/sh
# Our client side by side with the official Node SDK (wechatpay-axios-plugin,
# npm, pinned in bench/peer/package.json): one mock, the same keys, the same
# N grants, sequential and at concurrency 16, each configuration run
# PEER_RUNS times interleaved (so a busy neighbour slows every client alike);
# prints one Markdown table of medians and the ratios.
#
#   bench/peer/run.sh                (or from scripts/bench.sh: make bench)
#
# Environment:
#   PEER_N            grants per run (1000)
#   PEER_RUNS         runs per configuration, the median is shown (5)
#   PEER_CONCURRENCY  the concurrent mode's calls in flight (16)
#   PEER_RUNTIMES     our client's runtimes (default "lua5.4 luajit"), each with build/<rt>/
#   PEER_NODE=0       skip the Node SDK
#   BUILD             module build folder (build)
# Needs node and npm (the SDK is installed into bench/peer/node_modules by
# `npm ci` from the committed lockfile when missing), nginx with the lua module
# and luaossl/luasocket/cjson for the mock (scripts/deps.sh), and `make`.
set -u
cd "$(dirname "$0")/../.." || exit 2

n=${PEER_N:-1000}
runs=${PEER_RUNS:-5}
conc=${PEER_CONCURRENCY:-16}
runtimes=${PEER_RUNTIMES:-"lua5.4 luajit"}
build=${BUILD:-build}
case $build in /*) ;; *) build="./$build" ;; esac
lua_path='./lua/?.lua;./lua/?/init.lua;./mock/?.lua;./mock/?/init.lua;;'
export PEER_CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"

node_ok=0
if [ "${PEER_NODE:-1}" != 0 ]; then
  if ! command -v node >/dev/null 2>&1; then
    echo "peer: node not found, the Node SDK is skipped" >&2
  elif [ -f bench/peer/node_modules/wechatpay-axios-plugin/package.json ] ||
       (cd bench/peer && npm ci --no-audit --no-fund --loglevel=error >&2); then
    node_ok=1
  else
    echo "peer: npm ci failed in bench/peer, the Node SDK is skipped" >&2
  fi
fi

clients=""
for rt in $runtimes; do
  if ! command -v "$rt" >/dev/null 2>&1; then echo "peer: $rt not found, skipped" >&2; continue; fi
  if [ ! -f "$build/$rt/wechatpay/core.so" ]; then echo "peer: $build/$rt/wechatpay/core.so missing (make), $rt skipped" >&2; continue; fi
  clients="$clients $rt"
done
[ "$node_ok" = 1 ] && clients="node $clients"
[ -n "$clients" ] || { echo "peer: nothing to run" >&2; exit 2; }

tmp=$(mktemp -d) || exit 2
mock_pid=""
cleanup() {
  exec 3>&-          # closing its stdin stops the mock
  [ -n "$mock_pid" ] && wait "$mock_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- ONE mock for every client and run: it runs until fd 3 closes ------------
mkfifo "$tmp/stdin" || exit 2
mock_rt=lua5.4; command -v lua5.4 >/dev/null 2>&1 || mock_rt=luajit
LUA_PATH="$lua_path" LUA_CPATH="$build/$mock_rt/?.so;;" "$mock_rt" bench/peer/mock.lua < "$tmp/stdin" > "$tmp/mock.json" &
mock_pid=$!
exec 3> "$tmp/stdin"
i=0
until [ -s "$tmp/mock.json" ]; do
  i=$((i + 1))
  if [ $i -gt 300 ] || ! kill -0 "$mock_pid" 2>/dev/null; then echo "peer: the mock did not start" >&2; exit 2; fi
  sleep 0.1
done
export PEER_MOCK="$tmp/mock.json"

run_one() {  # client concurrency
  case $1 in
    node) node bench/peer/grants.js "$2" "$n" ;;
    *) LUA_PATH="$lua_path" LUA_CPATH="$build/$1/?.so;;" "$1" bench/peer/grants.lua "$2" "$n" ;;
  esac
}

raw=build/bench/peer-runs.tsv   # every run's line, kept for a second look
mkdir -p build/bench && : > "$raw"
echo "peer: $n grants a run, $runs runs, clients:$clients, concurrency 1 and $conc, mock $(sed 's/.*"base_url":"\([^"]*\)".*/\1/; s/\\//g' "$tmp/mock.json")" >&2
status=0
r=0
while [ $r -lt "$runs" ]; do
  r=$((r + 1))
  for c in $clients; do
    for k in 1 "$conc"; do
      echo "peer: run $r/$runs, $c, concurrency $k ..." >&2
      run_one "$c" "$k" | tee -a "$raw" >> "$tmp/runs.tsv" || { echo "peer: $c at concurrency $k failed" >&2; status=1; }
    done
  done
done

for c in $clients; do
  [ "$c" = node ] && continue
  echo "peer: bench/peer/overhead.lua under $c ..." >&2
  LUA_PATH="$lua_path" LUA_CPATH="$build/$c/?.so;;" "$c" bench/peer/overhead.lua 300 > "$tmp/overhead.$c.tsv" || status=1
done

nproc=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo "?")
echo "### Our client and the official Node SDK, side by side"
echo
echo "$n coupon grants a run (POST /v3/multiuse/users/{openid}/coupons: 2 OAEP encryptions, 1 request signature,"
echo "1 response verification), over HTTPS keep-alive to one loopback mock (nginx, 1 worker) on $nproc logical CPUs"
echo "shared by client and mock; median of $runs interleaved runs. Command: \`bench/peer/run.sh\` (PEER_N=$n PEER_RUNS=$runs)."
echo
# runs.tsv: client mode n wall cpu mock crypto failed
awk -F '\t' -v conc="$conc" -v ncpu="$nproc" '
  function med(list, count,   i, j, t, a) {
    split(list, a, " ")
    for (i = 1; i <= count; i++) for (j = i + 1; j <= count; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return count % 2 ? a[(count + 1) / 2] : (a[count / 2] + a[count / 2 + 1]) / 2
  }
  {
    key = $1 "\t" $2
    if (!(key in count)) { keys[++nkeys] = key }
    count[key]++
    rate[key] = rate[key] " " $3 / $4
    cpu[key] = cpu[key] " " $5 * 1000 / $3
    crypto[key] = crypto[key] " " $7
    other[key] = other[key] " " ($5 * 1000 / $3 - $7)
    mock[key] = mock[key] " " $6 * 1000 / $3
    cbusy[key] = cbusy[key] " " $5 / $4
    mbusy[key] = mbusy[key] " " $6 / $4
    obusy[key] = obusy[key] " " ($9 - $5 - $6) / $4
    failed[key] += $8
    n[key] = $3
  }
  END {
    print "| client | mode | N | calls/s | client CPU ms/call | crypto ms/grant | CPU beyond crypto ms/call | mock CPU ms/call | client CPU / wall | mock CPU / wall | other CPU / wall | limit |"
    print "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    for (i = 1; i <= nkeys; i++) {
      k = keys[i]; c = count[k]
      split(k, parts, "\t")
      R[k] = med(rate[k], c); C[k] = med(cpu[k], c)
      cb = med(cbusy[k], c); mb = med(mbusy[k], c); ob = med(obusy[k], c); if (ob < 0) ob = 0
      if (mb >= 0.85) limit = "the mock (its one nginx worker at " sprintf("%.0f", mb * 100) "% of a core)"
      else if (cb >= 0.85 && parts[2] != "sequential") limit = "the client (" sprintf("%.0f", cb * 100) "% of a core)"
      else if (cb + mb + ob >= 0.85 * ncpu && ob >= 0.25) limit = "the shared CPUs (other processes used " sprintf("%.1f", ob) " of " ncpu ")"
      else if (cb + mb + ob >= 0.85 * ncpu) limit = "all " ncpu " CPUs (client + mock)"
      else if (parts[2] == "sequential") limit = "round trips (one call at a time)"
      else limit = "neither is saturated"
      printf "| %s | %s | %d | %.0f | %.3f | %.3f | %.3f | %.3f | %.2f | %.2f | %.2f | %s |\n", parts[1], parts[2], n[k], R[k], C[k],
        med(crypto[k], c), med(other[k], c), med(mock[k], c), cb, mb, ob, limit
      if (parts[1] ~ /^Node/) node = parts[1]
      if (failed[k]) printf "(%s %s: %d grants failed)\n", parts[1], parts[2], failed[k]
    }
    if (node == "") exit
    print ""
    seq = "sequential"; par = "concurrency " conc
    for (i = 1; i <= nkeys; i++) {
      split(keys[i], parts, "\t")
      if (parts[1] == node || parts[2] != seq) continue
      us = parts[1]
      printf "%s vs the Node SDK: CPU per grant %.2fx sequential, %.2fx at %d (target <= 0.5x); calls/s at %d %.2fx (target >= 1.5x)\n",
        us, C[us "\t" seq] / C[node "\t" seq], C[us "\t" par] / C[node "\t" par], conc, conc, R[us "\t" par] / R[node "\t" par]
    }
  }' "$tmp/runs.tsv"
echo
echo "(client CPU: the client process's user + system time over the timed grants, Lua os.clock(), Node process.cpuUsage(),"
echo "all threads; crypto: one grant's sign + verify + 2 OAEP, timed in the same process on the same keys; mock CPU: the"
echo "nginx worker's, from /proc; other: the rest of the machine's busy time (/proc/stat) over the same span, i.e. other"
echo "processes. Client CPU / wall above 1 is possible for Node (its helper threads). The mock's single worker caps"
echo "the concurrent calls/s at about 1000 / (mock CPU ms/call).)"
echo
echo "Our client without the network (bench/peer/overhead.lua: a transport double answers a signed 200, so every"
echo "call still signs, encrypts and verifies), ms of CPU per grant; the real call's CPU minus no_network is curl,"
echo "TLS and the kernel:"
echo
for c in $clients; do
  [ -s "$tmp/overhead.$c.tsv" ] || continue
  echo "$c:"
  awk -F '\t' '{ printf "  %-14s %7.4f  %s\n", $1, $2, $3 }' "$tmp/overhead.$c.tsv"
done
exit $status
