#!/bin/sh
# Installs the Debian packages the build, the tests and the mock need.
# As root it runs apt-get; otherwise it prints the one line to run.
# `deps.sh peer` installs the Node SDK the APIv2 specs compare with, from
# npm (pinned in bench/peer/package-lock.json), so no spec waits on the
# registry; the demo and the fuzzers do without it.
set -e

# npm ci, tried three times: the registry is the one network this needs
install_peer() {
  peer="$(dirname "$0")/../bench/peer"
  [ -f "$peer/node_modules/wechatpay-axios-plugin/package.json" ] && return 0
  for wait in 5 15 0; do
    (cd "$peer" && npm ci --no-audit --no-fund --loglevel=error) && return 0
    [ "$wait" = 0 ] && break
    echo "npm ci failed; trying again in $wait s" >&2
    sleep "$wait"
  done
  echo "cannot install bench/peer's packages from npm: the APIv2 specs need them" >&2
  return 1
}
PACKAGES="gcc make pkg-config openssl curl \
  lua5.4 liblua5.4-dev luajit2 libluajit2-5.1-dev \
  libssl-dev libmbedtls-dev libcurl4-openssl-dev zlib1g-dev \
  lua-busted lua-cjson lua-expat lua-luaossl lua-socket lua-posix luarocks \
  nginx libnginx-mod-http-lua valgrind strace"
# the AES-GCM spec checks associated data against Node's crypto (luaossl
# cannot set it); the image may already ship its own node
command -v node >/dev/null 2>&1 || PACKAGES="$PACKAGES nodejs"
# the APIv2 specs check signs and XML against the Node SDK, which npm
# installs from bench/peer/package-lock.json
command -v npm >/dev/null 2>&1 || PACKAGES="$PACKAGES npm"
[ -n "$WECHATPAY_EXTRA_PACKAGES" ] && PACKAGES="$PACKAGES $WECHATPAY_EXTRA_PACKAGES"

if [ "$1" = peer ]; then
  install_peer
  exit 0
fi

missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ]; then
  echo "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
  echo "missing Debian packages; run:" >&2
  echo "  sudo apt-get install -y$missing" >&2
  exit 1
fi
