/*
 * The baseline for bench/crypto.lua's rsa.sign: the same key and message,
 * signed by calling mbedTLS directly from C, with a ctr_drbg for blinding as
 * csrc/crypto_mbedtls.c seeds it.  Each signature hashes the message too, as
 * the Lua path does.  Built and run by scripts/bench.sh.
 *
 *   sign_direct KEY.pem MESSAGE [seconds=1] [runs=5]
 *   sign_direct KEY.pem MESSAGE --count N OP     N calls of OP, for callgrind
 *   sign_direct --version
 *
 * Prints "id<TAB>ops/s<TAB>what<TAB>note" lines: the median of `runs` runs of
 * about `seconds` of process CPU time each.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/md.h>
#include <mbedtls/pk.h>
#include <mbedtls/rsa.h>
#include <mbedtls/version.h>

#if MBEDTLS_VERSION_NUMBER >= 0x03000000
#define MBEDTLS3 1
#endif

static mbedtls_pk_context pk;
static mbedtls_ctr_drbg_context drbg;
static unsigned char *msg;
static size_t msglen;
static unsigned char sig[MBEDTLS_MPI_MAX_SIZE];
static size_t siglen;

static void die(const char *what, int rc) {
  fprintf(stderr, "sign_direct: %s failed (-0x%04x)\n", what, (unsigned)-rc);
  exit(1);
}

static double cpu_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static unsigned char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  unsigned char *buf;
  long n;
  if (!f || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
    perror(path);
    exit(1);
  }
  buf = malloc((size_t)n + 1);
  if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) { perror(path); exit(1); }
  fclose(f);
  buf[n] = '\0';
  *len = (size_t)n;
  return buf;
}

static void hash_message(unsigned char hash[32]) {
  int rc = mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), msg, msglen, hash);
  if (rc != 0) die("mbedtls_md", rc);
}

/* mbedtls_rsa_rsassa_pkcs1_v15_sign: what wp_rsa_sign_sha256 calls. */
static void op_rsassa_sign(void) {
  unsigned char hash[32];
  int rc;
  hash_message(hash);
#ifdef MBEDTLS3
  rc = mbedtls_rsa_rsassa_pkcs1_v15_sign(mbedtls_pk_rsa(pk), mbedtls_ctr_drbg_random, &drbg,
                                         MBEDTLS_MD_SHA256, 32, hash, sig);
#else
  rc = mbedtls_rsa_rsassa_pkcs1_v15_sign(mbedtls_pk_rsa(pk), mbedtls_ctr_drbg_random, &drbg,
                                         MBEDTLS_RSA_PRIVATE, MBEDTLS_MD_SHA256, 32, hash, sig);
#endif
  if (rc != 0) die("mbedtls_rsa_rsassa_pkcs1_v15_sign", rc);
  siglen = mbedtls_pk_get_len(&pk);
}

/* mbedtls_pk_sign: the generic entry point. */
static void op_pk_sign(void) {
  unsigned char hash[32];
  int rc;
  hash_message(hash);
#ifdef MBEDTLS3
  rc = mbedtls_pk_sign(&pk, MBEDTLS_MD_SHA256, hash, 32, sig, sizeof sig, &siglen,
                       mbedtls_ctr_drbg_random, &drbg);
#else
  rc = mbedtls_pk_sign(&pk, MBEDTLS_MD_SHA256, hash, 32, sig, &siglen,
                       mbedtls_ctr_drbg_random, &drbg);
#endif
  if (rc != 0) die("mbedtls_pk_sign", rc);
}

static void op_verify(void) {
  unsigned char hash[32];
  int rc;
  hash_message(hash);
  rc = mbedtls_pk_verify(&pk, MBEDTLS_MD_SHA256, hash, 32, sig, siglen);
  if (rc != 0) die("mbedtls_pk_verify", rc);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median ops/s of `runs` runs of a call count calibrated to `seconds`. */
static double measure(void (*op)(void), double seconds, int runs, long *calls) {
  double rates[64], t0, dt;
  long n = 1, i;
  int r;
  for (;;) {   /* calibrate */
    t0 = cpu_seconds();
    for (i = 0; i < n; i++) op();
    dt = cpu_seconds() - t0;
    if (dt >= 0.1) break;
    n *= dt < 0.01 ? 10 : 2;
  }
  n = (long)((double)n * seconds / dt);
  if (n < 1) n = 1;
  for (r = 0; r < runs; r++) {
    t0 = cpu_seconds();
    for (i = 0; i < n; i++) op();
    rates[r] = (double)n / (cpu_seconds() - t0);
  }
  qsort(rates, (size_t)runs, sizeof rates[0], cmp_double);
  *calls = n;
  return runs % 2 ? rates[runs / 2] : (rates[runs / 2 - 1] + rates[runs / 2]) / 2;
}

int main(int argc, char **argv) {
  static const char personal[] = "wechatpay-lua";
  static const struct { const char *id, *what; void (*op)(void); } cases[] = {
    { "rsa.sign", "C: mbedtls_rsa_rsassa_pkcs1_v15_sign (+ SHA-256)", op_rsassa_sign },
    { "rsa.sign.pk", "C: mbedtls_pk_sign (+ SHA-256)", op_pk_sign },
    { "rsa.verify", "C: mbedtls_pk_verify (+ SHA-256)", op_verify },
  };
  mbedtls_entropy_context entropy;
  unsigned char *pem;
  size_t pemlen, i;
  double seconds = 1;
  int runs = 5, rc;
  long count = 0, calls;
  const char *only = NULL;

  if (argc == 2 && strcmp(argv[1], "--version") == 0) {
    char v[32];
    mbedtls_version_get_string(v);
    printf("mbedTLS %s (library), %s (headers)\n", v, MBEDTLS_VERSION_STRING);
    return 0;
  }
  if (argc < 3) {
    fprintf(stderr, "usage: %s KEY.pem MESSAGE [seconds [runs]] | --count N OP\n", argv[0]);
    return 2;
  }
  if (argc == 6 && strcmp(argv[3], "--count") == 0) {
    count = atol(argv[4]);
    only = argv[5];
  } else {
    if (argc > 3) seconds = atof(argv[3]);
    if (argc > 4) runs = atoi(argv[4]);
    if (runs < 1 || runs > 64 || seconds <= 0) { fprintf(stderr, "bad seconds or runs\n"); return 2; }
  }

  pem = read_file(argv[1], &pemlen);
  msg = read_file(argv[2], &msglen);
  mbedtls_entropy_init(&entropy);
  mbedtls_ctr_drbg_init(&drbg);
  rc = mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy,
                             (const unsigned char *)personal, sizeof personal - 1);
  if (rc != 0) die("mbedtls_ctr_drbg_seed", rc);
  mbedtls_pk_init(&pk);
#ifdef MBEDTLS3
  rc = mbedtls_pk_parse_key(&pk, pem, pemlen + 1, NULL, 0, mbedtls_ctr_drbg_random, &drbg);
#else
  rc = mbedtls_pk_parse_key(&pk, pem, pemlen + 1, NULL, 0);
#endif
  if (rc != 0) die("mbedtls_pk_parse_key", rc);
  if (mbedtls_pk_get_type(&pk) != MBEDTLS_PK_RSA) { fprintf(stderr, "not an RSA key\n"); return 1; }
  op_rsassa_sign();   /* a signature for op_verify */

  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    if (only) {
      if (strcmp(only, cases[i].id) == 0) {
        long k;
        for (k = 0; k < count; k++) cases[i].op();
      }
      continue;
    }
    double ops = measure(cases[i].op, seconds, runs, &calls);
    printf("%s\t%.1f\t%s\t%ld calls/run\n", cases[i].id, ops, cases[i].what, calls);
    fflush(stdout);
  }
  mbedtls_pk_free(&pk);
  mbedtls_ctr_drbg_free(&drbg);
  mbedtls_entropy_free(&entropy);
  free(pem);
  free(msg);
  return 0;
}
