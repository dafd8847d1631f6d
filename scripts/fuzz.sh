#!/bin/sh
# Builds the libFuzzer harnesses csrc/fuzz_*.c against each crypto backend
# (crypto_openssl.c or crypto_mbedtls.c, base64.c, json.c; no Lua) into
# build/fuzz/<backend>/, replays the saved regression inputs in
# spec/fixtures/fuzz/ on each, then fuzzes each harness on each backend for
# FUZZ_SECONDS (default 60).  Any crash, leak, timeout or out-of-memory is
# copied to spec/fixtures/fuzz/<harness>-<sha1> and the script exits 1.
#
# Environment:
#   FUZZ_SECONDS   seconds per harness (0: build and replay only)
#   FUZZ_TARGETS   harnesses to run, default "pem base64 gcm json"
#   FUZZ_BACKENDS  crypto backends, default "openssl mbedtls"
#   FUZZ_TIMEOUT   seconds one input may take before it counts as a hang (25)
#   FUZZ_CC        a clang with libFuzzer (clang; Debian: clang libclang-rt-14-dev)
#   FUZZ_COVERAGE=1  then report the line coverage of csrc/ the corpora reach
#                  (llvm-cov and llvm-profdata, Debian package llvm)
# Seed corpora are made fresh in a temporary folder (keys by openssl) and
# kept, with what the fuzzer adds, in build/fuzz/corpus/<harness>/.
set -u

seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-"pem base64 gcm json"}
backends=${FUZZ_BACKENDS:-"openssl mbedtls"}
hang=${FUZZ_TIMEOUT:-25}
cc=${FUZZ_CC:-clang}
out=build/fuzz
fixtures=spec/fixtures/fuzz
sanitize="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
cflags="-g -O1 -fno-omit-frame-pointer -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Icsrc"
libs_mbedtls="-lmbedtls -lmbedx509 -lmbedcrypto -lpthread"
libs_openssl="-lcrypto -lpthread"
libs_of() { if [ "$1" = openssl ]; then echo "$libs_openssl"; else echo "$libs_mbedtls"; fi; }

cd "$(dirname "$0")/.." || exit 2
if ! command -v "$cc" >/dev/null 2>&1; then
  echo "fuzz: $cc not found (Debian: apt-get install clang libclang-rt-14-dev)" >&2
  exit 2
fi
if ! command -v openssl >/dev/null 2>&1; then
  echo "fuzz: the openssl command is needed for the seed keys" >&2
  exit 2
fi

# ---- build ------------------------------------------------------------------
mkdir -p "$out/logs" "$fixtures"
for b in $backends; do
  mkdir -p "$out/$b/obj"
  for src in "crypto_$b" base64 json; do
    # coverage for our code only: the system library is not instrumented
    $cc $cflags $sanitize -fsanitize=fuzzer-no-link -c "csrc/$src.c" -o "$out/$b/obj/$src.o" || exit 2
  done
  for t in $targets; do
    if [ ! -f "csrc/fuzz_$t.c" ]; then echo "fuzz: no harness csrc/fuzz_$t.c" >&2; exit 2; fi
    $cc $cflags $sanitize -fsanitize=fuzzer "csrc/fuzz_$t.c" "$out/$b/obj/crypto_$b.o" \
      "$out/$b/obj/base64.o" "$out/$b/obj/json.o" -o "$out/$b/fuzz_$t" $(libs_of "$b") || {
      echo "fuzz: cannot build fuzz_$t on $b (is libFuzzer installed? Debian: libclang-rt-14-dev)" >&2
      exit 2
    }
  done
done

# ---- seeds --------------------------------------------------------------------
tmp=$(mktemp -d) || exit 2
trap 'rm -rf "$tmp"' EXIT INT TERM

# seed NAME HARNESS PREFIX FILE: PREFIX is printf octal escapes (the selector bytes)
seed() {
  dir="$out/corpus/$2"
  mkdir -p "$dir"
  { printf "$3"; cat "$4"; } > "$dir/seed-$1"
}

make_pem_seeds() {
  k="$tmp/keys"; mkdir -p "$k"
  ossl() { openssl "$@" >/dev/null 2>&1 || echo "fuzz: openssl $1 failed, one seed fewer" >&2; }
  for bits in 512 1024 2048; do
    ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:$bits -out "$k/$bits.pem"
  done
  ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$k/ec.pem"
  ossl req -x509 -key "$k/ec.pem" -subj /CN=fuzz-ec -days 1 -out "$k/ec_cert.pem"
  ossl req -x509 -key "$k/2048.pem" -subj /CN=fuzz -days 1 -out "$k/2048_cert.pem"
  for bits in 512 1024; do
    p="$k/$bits"
    ossl pkcs8 -topk8 -nocrypt -in "$p.pem" -outform DER -out "$p.p8.der"
    ossl rsa -in "$p.pem" -traditional -out "$p.p1.pem"
    ossl rsa -in "$p.pem" -traditional -outform DER -out "$p.p1.der"
    ossl pkey -in "$p.pem" -pubout -out "$p.spki.pem"
    ossl pkey -in "$p.pem" -pubout -outform DER -out "$p.spki.der"
    ossl rsa -in "$p.pem" -RSAPublicKey_out -out "$p.p1pub.pem"
    ossl rsa -in "$p.pem" -RSAPublicKey_out -outform DER -out "$p.p1pub.der"
    ossl req -x509 -key "$p.pem" -subj /CN=fuzz -days 1 -out "$p.cert.pem"
    ossl x509 -in "$p.cert.pem" -outform DER -out "$p.cert.der"
    # one PBKDF2 iteration keeps encrypted seeds fast to try
    ossl pkcs8 -topk8 -in "$p.pem" -v2 aes256 -iter 1 -passout pass:s3cret -out "$p.enc_aes.pem"
    ossl pkcs8 -topk8 -in "$p.pem" -v2 aes128 -v2prf hmacWithSHA1 -iter 1 -passout pass:s3cret \
      -outform DER -out "$p.enc_aes.der"
    ossl pkcs8 -topk8 -in "$p.pem" -v2 des3 -iter 1 -passout pass:s3cret -out "$p.enc_des3.pem"
    ossl pkcs8 -topk8 -in "$p.pem" -v1 PBE-SHA1-3DES -iter 1 -passout pass:s3cret -out "$p.enc_p12.pem"
    ossl rsa -in "$p.pem" -traditional -aes128 -passout pass:s3cret -out "$p.enc_trad.pem"
  done
  # selector: bits 0-1 passphrase (1 = "s3cret"), bits 2-4 the PEM label to wrap DER in
  for f in "$k"/*.pem; do
    case $f in *enc_*) seed "${f##*/}" pem '\001' "$f" ;; *) seed "${f##*/}" pem '\000' "$f" ;; esac
  done
  for f in "$k"/*.der; do
    case $f in
      *.p8.der) sel='\004' ;; *.p1.der) sel='\010' ;; *.enc_aes.der) sel='\015' ;;
      *.spki.der) sel='\020' ;; *.p1pub.der) sel='\024' ;; *.cert.der) sel='\030' ;; *) sel='\000' ;;
    esac
    seed "${f##*/}" pem "$sel" "$f"
  done
  head -c 700 "$k/1024.pem" > "$tmp/truncated.pem" && seed truncated.pem pem '\000' "$tmp/truncated.pem"
  printf '\003\006s3cret' > "$tmp/pass" && cat "$k/512.enc_aes.pem" >> "$tmp/pass" &&
    seed inline_pass.pem pem '' "$tmp/pass"
}

make_base64_seeds() {
  for s in "" Zg== Zm8= Zm9v Zm9vYg== "QU=JQkND" "A===" "====" "Zm9v Zg==" "Zm9v\nYmFy"; do
    printf '%s' "$s" > "$tmp/b64"
    seed "$(printf '%s' "$s" | openssl dgst -sha1 -r | cut -c1-12)" base64 '' "$tmp/b64"
  done
  openssl rand 256 | openssl base64 -A > "$tmp/b64" && seed sig256 base64 '' "$tmp/b64"
  openssl rand 1000 > "$tmp/raw" && seed raw1000 base64 '' "$tmp/raw"
}

make_gcm_seeds() {
  # [key selector][iv length][aad length] key iv aad data
  for n in 0 1 15 16 17 64 1040; do
    openssl rand 300 > "$tmp/kia"
    if [ "$n" -gt 0 ]; then openssl rand "$n" >> "$tmp/kia"; fi
    seed "k32-iv12-$n" gcm '\002\014\013' "$tmp/kia"
    seed "k16-iv16-$n" gcm '\000\020\000' "$tmp/kia"
  done
  seed k24-iv1 gcm '\001\001\000' "$tmp/kia"
  seed k31 gcm '\177\014\020' "$tmp/kia"
  seed iv0 gcm '\002\000\000' "$tmp/kia"
}

make_json_seeds() {
  n=0
  for s in '{}' '[]' 'null' '-0.5e-3' '9223372036854775807' '-9223372036854775809' \
      '"\u00e9\ud83d\ude00\/\n"' \
      '{"id":"EV-1","resource":{"algorithm":"AEAD_AES_256_GCM","nonce":"n","ciphertext":"Zm9v","associated_data":null}}' \
      '[1,[2,[3,{"a":[true,false,null]}]],"x"]' '{"amount":{"total":100,"currency":"CNY"},"attach":""}'; do
    n=$((n + 1))
    printf '%s' "$s" > "$tmp/json" && seed "doc$n" json '' "$tmp/json"
  done
}

cat > "$out/json.dict" <<'EOF'
"{"
"}"
"["
"]"
"\""
"\\u"
"\\ud800"
"\\udc00"
"true"
"false"
"null"
"-0"
"1e"
"E+"
".5"
EOF

cat > "$out/pem.dict" <<'EOF'
"-----BEGIN "
"-----END "
"PRIVATE KEY-----"
"PUBLIC KEY-----"
"CERTIFICATE-----"
"-----BEGIN ENCRYPTED PRIVATE KEY-----"
"-----BEGIN RSA PRIVATE KEY-----"
"Proc-Type: 4,ENCRYPTED"
"DEK-Info: AES-128-CBC,"
"DEK-Info: DES-EDE3-CBC,"
"\x2a\x86\x48\x86\xf7\x0d\x01\x05\x0d"
"\x2a\x86\x48\x86\xf7\x0d\x01\x05\x0c"
"\x60\x86\x48\x01\x65\x03\x04\x01\x2a"
"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01"
"\x02\x82\x01\x01\x00"
"\x30\x82"
"\x30\x84\xff\xff\xff\xff"
EOF

for t in $targets; do
  case $t in
    pem) make_pem_seeds ;; base64) make_base64_seeds ;; gcm) make_gcm_seeds ;; json) make_json_seeds ;;
  esac
done

# ---- replay, fuzz, collect ----------------------------------------------------
# Where a sanitizer report points in our sources: the first csrc/ frame.
crash_site() {
  grep -oE 'in [A-Za-z_0-9]+ [^ ]*csrc/[A-Za-z_0-9]+\.c:[0-9]+' "$1" | head -n 1 | sed 's/^in //; s# [^ ]*csrc/# csrc/#'
}

status=0
summary=""
for b in $backends; do
for t in $targets; do
  bin="$out/$b/fuzz_$t"
  corpus="$out/corpus/$t"   # shared: what one backend's run finds seeds the other's
  art="$out/artifacts/$b/$t"
  log="$out/logs/$b-$t.log"
  mkdir -p "$corpus" "$art"
  rm -f "$art"/*

  known=$(ls "$fixtures" 2>/dev/null | grep "^$t-" || true)
  known_sigs=""
  if [ -n "$known" ]; then
    replay_failed=""
    for f in $known; do
      if ! "$bin" -runs=1 "$fixtures/$f" > "$out/logs/$b-$t-replay.log" 2>&1; then
        replay_failed="$replay_failed $f"
        known_sigs="$known_sigs|$(crash_site "$out/logs/$b-$t-replay.log")"
      fi
    done
    if [ -n "$replay_failed" ]; then
      echo "== $t on $b: saved inputs still fail:$replay_failed"
      status=1
    else
      echo "== $t on $b: $(echo "$known" | wc -l) saved input(s) pass"
    fi
  fi

  [ "$seconds" -gt 0 ] || continue
  dict=""
  [ -f "$out/$t.dict" ] && dict="-dict=$out/$t.dict"
  echo "== fuzzing $t on $b for ${seconds}s (log: $log)"
  "$bin" -max_total_time="$seconds" -timeout="$hang" -rss_limit_mb=2048 -max_len=8192 \
    -print_final_stats=1 -artifact_prefix="$art/" $dict "$corpus" > "$log" 2>&1
  rc=$?

  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  [ -n "$execs" ] || execs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#')
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
  units=$(ls "$corpus" | wc -l)
  found=""
  for a in "$art"/*; do
    [ -f "$a" ] || continue
    name=${a##*/}                       # crash-<sha1>, leak-…, timeout-…, oom-…
    case $name in
      slow-unit-*)                      # slow (-report_slow_units, 10 s) but no hang: a note
        cp "$a" "$fixtures/$t-slow-${name#slow-unit-}"
        echo "   slow input (>10 s, under ${hang}s): $fixtures/$t-slow-${name#slow-unit-}"
        continue ;;
    esac
    dest="$fixtures/$t-${name#*-}"
    site=$(crash_site "$log")
    if [ -f "$dest" ]; then
      found="$found ${name%%-*}(known: $dest)"
    elif [ -n "$site" ] && echo "$known_sigs|" | grep -qF "|$site|"; then
      # the same place as a saved input that still fails: one file per bug is enough
      found="$found ${name%%-*}(same place as a saved input: $site)"
    else
      cp "$a" "$dest"
      found="$found ${name%%-*}:$dest"
    fi
  done
  if [ -n "$found" ] || [ "$rc" -ne 0 ]; then
    status=1
    echo "   FOUND:${found:- exit $rc with no artifact, see $log}"
    grep -m 3 -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error)' "$log" | sed 's/^/   /'
  fi
  line=$(printf '%-7s %-7s %12s execs %8s/s  cov %5s  corpus %5s  %s' "$b" "$t" "${execs:-?}" \
    "${speed:-?}" "${cov:-?}" "$units" "${found:+CRASH}")
  echo "   $line"
  summary="$summary
$line"
done
done

if [ "$seconds" -gt 0 ]; then
  echo "== fuzz summary (${seconds}s per harness)$summary"
fi

if [ "${FUZZ_COVERAGE:-0}" = 1 ]; then
  cov=$(command -v llvm-cov || command -v llvm-cov-14)
  profdata=$(command -v llvm-profdata || command -v llvm-profdata-14)
  if [ -z "$cov" ] || [ -z "$profdata" ]; then
    echo "fuzz: FUZZ_COVERAGE needs llvm-cov and llvm-profdata (Debian: llvm)" >&2
  else
    mkdir -p "$out/cov"
    for t in $targets; do
      b=${backends%% *}
      $cc -g -O0 -std=c99 -D_POSIX_C_SOURCE=200809L -Icsrc -fsanitize=fuzzer \
        -fprofile-instr-generate -fcoverage-mapping "csrc/fuzz_$t.c" "csrc/crypto_$b.c" csrc/base64.c \
        -o "$out/cov/fuzz_$t" $(libs_of "$b") || continue
      rm -f "$out/cov/$t.profraw"
      LLVM_PROFILE_FILE="$out/cov/$t.profraw" "$out/cov/fuzz_$t" -runs=0 "$out/corpus/$t" > /dev/null 2>&1
      "$profdata" merge -o "$out/cov/$t.profdata" "$out/cov/$t.profraw" || continue
      echo "== line coverage of the $t corpus (llvm-cov show $out/cov/fuzz_$t -instr-profile=$out/cov/$t.profdata csrc/...)"
      "$cov" report "$out/cov/fuzz_$t" -instr-profile="$out/cov/$t.profdata" \
        "csrc/crypto_$b.c" csrc/base64.c 2>/dev/null |
        awk 'NR > 2 && NF > 10 { printf "   %-18s lines %6s  branches %6s\n", $1, $10, $13 }'
    done
  fi
fi
[ "$status" -eq 0 ] && echo "fuzz: no crashes" || echo "fuzz: FAILED (inputs saved in $fixtures/)"
exit $status
