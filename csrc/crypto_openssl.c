/*
 * The OpenSSL backend of crypto.h: OpenSSL 3 EVP, OSSL_DECODER and X509
 * APIs only (built with OPENSSL_NO_DEPRECATED, so an RSA_* call does not
 * compile).  The default backend: RSA-2048 signing, most of a call's
 * crypto, runs several times faster than on mbedTLS 2.28.
 *
 * Costs paid once: algorithms are fetched at first use; a key is decoded
 * once and keeps one EVP_PKEY_CTX per operation (signing, verifying, OAEP
 * both ways), initialised on first use and reused.  Digest, cipher and HMAC
 * contexts are per thread (a pthread key), so stateless calls allocate
 * nothing after the first.
 *
 * Errors: never OpenSSL's own strings (they can quote input); every failure
 * maps to one of our messages, the same kinds crypto_mbedtls.c gives, and
 * the OpenSSL error queue is cleared so one failure cannot reach the next.
 */
/* Declare no deprecated API (RSA_*, HMAC_CTX...): using one fails to build. */
#define OPENSSL_API_COMPAT 30000
#define OPENSSL_NO_DEPRECATED 1

#include "crypto.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/opensslv.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>   /* EVP_PKEY_CTX_set_rsa_* and the padding names only */
#include <openssl/x509.h>

#if OPENSSL_VERSION_MAJOR < 3
#error "crypto_openssl.c needs OpenSSL 3 (build with CRYPTO=mbedtls otherwise)"
#endif

struct wp_key {
  EVP_PKEY *pkey;
  int is_private;
  size_t bits, bytes;
  wp_cert_info cert;
  /* made on first use, then reused for every call with this key */
  EVP_PKEY_CTX *sign, *verify, *encrypt, *decrypt;
};

static void set_err(char *err, const char *what) {
  if (err) snprintf(err, WP_ERRLEN, "%s", what);
}

/* Every failure path ends here: our message, and an empty error queue. */
static int fail(char *err, const char *what) {
  set_err(err, what);
  ERR_clear_error();
  return -1;
}

void wp_wipe(void *p, size_t len) { OPENSSL_cleanse(p, len); }

/* ---- algorithms, fetched once ----------------------------------------- */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static EVP_MD *md_sha256, *md_sha1, *md_md5;
static EVP_CIPHER *gcm_ciphers[3], *ecb_ciphers[3];   /* AES-128, -192, -256 */
static EVP_MAC *mac_hmac;
static pthread_key_t scratch_key;
static int scratch_key_ok;
static char backend_name[64];

typedef struct {
  EVP_MD_CTX *md;
  EVP_MAC_CTX *hmac;                 /* digest set to SHA-256 once */
  EVP_CIPHER_CTX *gcm[3], *ecb[3];   /* bound to their cipher once */
} scratch;

static void scratch_free(void *p) {
  scratch *s = (scratch *)p;
  int i;
  if (!s) return;
  EVP_MD_CTX_free(s->md);
  EVP_MAC_CTX_free(s->hmac);
  for (i = 0; i < 3; i++) {
    EVP_CIPHER_CTX_free(s->gcm[i]);
    EVP_CIPHER_CTX_free(s->ecb[i]);
  }
  free(s);
}

static void init_algorithms(void) {
  static const char *const gcm[] = { "AES-128-GCM", "AES-192-GCM", "AES-256-GCM" };
  static const char *const ecb[] = { "AES-128-ECB", "AES-192-ECB", "AES-256-ECB" };
  int i;
  md_sha256 = EVP_MD_fetch(NULL, "SHA2-256", NULL);
  md_sha1 = EVP_MD_fetch(NULL, "SHA1", NULL);
  md_md5 = EVP_MD_fetch(NULL, "MD5", NULL);
  for (i = 0; i < 3; i++) {
    gcm_ciphers[i] = EVP_CIPHER_fetch(NULL, gcm[i], NULL);
    ecb_ciphers[i] = EVP_CIPHER_fetch(NULL, ecb[i], NULL);
  }
  mac_hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0;
  snprintf(backend_name, sizeof backend_name, "OpenSSL %s", OpenSSL_version(OPENSSL_VERSION_STRING));
  ERR_clear_error();
}

static void ensure_init(void) { pthread_once(&init_once, init_algorithms); }

/* Lua unloads the module (dlclose) when its state closes: give back what
 * init_algorithms fetched, and the thread key, whose destructor would
 * otherwise point into unmapped code when a thread exits later.  Other
 * threads' contexts, if any, are the only thing left behind. */
#if defined(__GNUC__)
__attribute__((destructor))
#endif
static void release_algorithms(void) {
  int i;
  if (scratch_key_ok) {
    scratch_free(pthread_getspecific(scratch_key));
    pthread_key_delete(scratch_key);
    scratch_key_ok = 0;
  }
  EVP_MD_free(md_sha256); EVP_MD_free(md_sha1); EVP_MD_free(md_md5);
  md_sha256 = md_sha1 = md_md5 = NULL;
  for (i = 0; i < 3; i++) {
    EVP_CIPHER_free(gcm_ciphers[i]); EVP_CIPHER_free(ecb_ciphers[i]);
    gcm_ciphers[i] = ecb_ciphers[i] = NULL;
  }
  EVP_MAC_free(mac_hmac);
  mac_hmac = NULL;
}

/* This thread's reusable contexts, or NULL when memory ran out. */
static scratch *get_scratch(void) {
  scratch *s;
  ensure_init();
  if (!scratch_key_ok) return NULL;
  s = (scratch *)pthread_getspecific(scratch_key);
  if (s) return s;
  s = (scratch *)calloc(1, sizeof *s);
  if (!s) return NULL;
  if (pthread_setspecific(scratch_key, s) != 0) { free(s); return NULL; }
  return s;
}

const char *wp_crypto_backend(void) {
  ensure_init();
  return backend_name;
}

/* ---- CSPRNG ------------------------------------------------------------- */

/* OpenSSL 3's DRBGs reseed in a forked child on their own; mixing the pid
 * and the time in when the pid changes makes sure of it, whatever the
 * build, so two nginx workers never draw the same nonces. */
static pthread_mutex_t rng_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t rng_pid = 0;

int wp_random(unsigned char *out, size_t len, char *err) {
  pid_t pid = getpid();
  ensure_init();
  pthread_mutex_lock(&rng_lock);
  if (rng_pid != pid) {
    struct { pid_t pid; struct timespec ts; } mix;
    memset(&mix, 0, sizeof mix);
    mix.pid = pid;
    clock_gettime(CLOCK_MONOTONIC, &mix.ts);
    if (rng_pid != 0) RAND_seed(&mix, (int)sizeof mix);
    rng_pid = pid;
  }
  pthread_mutex_unlock(&rng_lock);
  while (len > 0) {
    int n = len > (1 << 20) ? (1 << 20) : (int)len;
    if (RAND_bytes(out, n) != 1) return fail(err, "random generator failed");
    out += n;
    len -= (size_t)n;
  }
  return 0;
}

/* ---- keys --------------------------------------------------------------- */

/* Seconds since the epoch, by OpenSSL's own calendar arithmetic; 0 when
 * the time cannot be read. */
static int64_t asn1_time_to_unix(const ASN1_TIME *t) {
  int days = 0, seconds = 0;
  ASN1_TIME *epoch = t ? ASN1_TIME_set(NULL, 0) : NULL;
  int ok = epoch && ASN1_TIME_diff(&days, &seconds, epoch, t) == 1;
  ASN1_TIME_free(epoch);
  return ok ? (int64_t)days * 86400 + seconds : 0;
}

/* The serial's content octets as hex, as crypto_mbedtls.c and
 * `openssl x509 -serial` print them: upper case, leading zero bytes dropped. */
static void serial_to_hex(const ASN1_INTEGER *serial, char *out) {
  static const char digits[] = "0123456789ABCDEF";
  unsigned char *der = NULL, *p;
  int derlen = i2d_ASN1_INTEGER(serial, &der);
  size_t n, i, hdr;
  out[0] = '\0';
  if (derlen < 3) { OPENSSL_free(der); return; }
  /* tag, then a short or long form length */
  if (der[1] & 0x80) hdr = 2 + (size_t)(der[1] & 0x7f);
  else hdr = 2;
  if ((size_t)derlen <= hdr) { OPENSSL_free(der); return; }
  p = der + hdr;
  n = (size_t)derlen - hdr;
  while (n > 1 && *p == 0) { p++; n--; }
  if (n > (WP_SERIAL_HEX_MAX - 1) / 2) n = (WP_SERIAL_HEX_MAX - 1) / 2;
  for (i = 0; i < n; i++) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  out[2 * n] = '\0';
  OPENSSL_free(der);
}

void wp_key_free(wp_key *key) {
  if (!key) return;
  EVP_PKEY_CTX_free(key->sign);
  EVP_PKEY_CTX_free(key->verify);
  EVP_PKEY_CTX_free(key->encrypt);
  EVP_PKEY_CTX_free(key->decrypt);
  EVP_PKEY_free(key->pkey);   /* OpenSSL clears the private numbers it frees */
  OPENSSL_cleanse(key, sizeof *key);
  free(key);
}

/* The passphrase callback: records that a passphrase was asked for, so a
 * failure can say "needed" or "wrong" instead of "cannot parse". */
typedef struct {
  const char *pass;
  size_t passlen;
  int asked;
} pass_state;

static int pass_cb(char *buf, size_t size, size_t *len, const OSSL_PARAM params[], void *arg) {
  pass_state *st = (pass_state *)arg;
  (void)params;
  st->asked = 1;
  if (!st->pass || st->passlen == 0 || st->passlen > size) return 0;
  memcpy(buf, st->pass, st->passlen);
  *len = st->passlen;
  return 1;
}

/* Decodes one key from PEM or DER.  selection: EVP_PKEY_KEYPAIR or
 * EVP_PKEY_PUBLIC_KEY.  Returns NULL on failure (queue cleared by caller). */
static EVP_PKEY *decode_key(const unsigned char *data, size_t len, const char *input, int selection,
                            pass_state *st) {
  EVP_PKEY *pkey = NULL;
  OSSL_DECODER_CTX *dctx = OSSL_DECODER_CTX_new_for_pkey(&pkey, input, NULL, NULL, selection, NULL, NULL);
  if (!dctx) return NULL;
  if (st) OSSL_DECODER_CTX_set_passphrase_cb(dctx, pass_cb, st);
  /* the decoder stops at the structure's end: DER with bytes after it is
   * refused, as mbedTLS refuses it (PEM's text may go on after END) */
  if (OSSL_DECODER_from_data(dctx, &data, &len) != 1 || (strcmp(input, "DER") == 0 && len != 0)) {
    EVP_PKEY_free(pkey);
    pkey = NULL;
  }
  OSSL_DECODER_CTX_free(dctx);   /* clears the cached passphrase */
  return pkey;
}

/* What mbedTLS's rsa_check_pubkey asks, so a key one backend loads the
 * other loads too; and no more than crypto.h's buffers hold.  1 ok, 0 not,
 * -1 not RSA. */
static int rsa_numbers_ok(EVP_PKEY *pkey) {
  BIGNUM *n = NULL, *e = NULL;
  int ok;
  if (!EVP_PKEY_is_a(pkey, "RSA")) return -1;
  if (EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n) != 1 ||
      EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &e) != 1) {
    BN_free(n); BN_free(e);
    return 0;
  }
  ok = BN_num_bits(n) >= 128 && BN_num_bits(n) <= 8 * WP_RSA_MAX_BYTES && BN_is_odd(n) &&
       BN_is_odd(e) && BN_num_bits(e) >= 2 && BN_cmp(e, n) < 0;
  BN_free(n); BN_free(e);
  return ok;
}

/* OpenSSL refuses to compute with a public exponent over 64 bits when the
 * modulus is over 3072 bits (its DoS limit, RSA_R_BAD_E_VALUE): such a key
 * would load and then fail every operation.  Refused at load, on both
 * backends (crypto_mbedtls.c asks the same). */
#define WP_RSA_SMALL_MODULUS_BITS 3072
#define WP_RSA_MAX_PUBEXP_BITS 64
static int exponent_too_big(EVP_PKEY *pkey) {
  BIGNUM *n = NULL, *e = NULL;
  int big = EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n) == 1 &&
            EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &e) == 1 &&
            BN_num_bits(n) > WP_RSA_SMALL_MODULUS_BITS && BN_num_bits(e) > WP_RSA_MAX_PUBEXP_BITS;
  BN_free(n); BN_free(e);
  ERR_clear_error();
  return big;
}

static int sign_verify_selftest(wp_key *key);

/* The CRT numbers must match p, q and d.  OpenSSL checks each CRT result
 * and quietly recomputes a wrong one with d, so a damaged dp, dq or qinv
 * passes the signing self-test here, where mbedTLS cannot sign at all: both
 * refuse such a key at load.  A key without them (n, e, d) has none to check. */
static int crt_ok(EVP_PKEY *pkey) {
  BIGNUM *p = NULL, *q = NULL, *d = NULL, *dp = NULL, *dq = NULL, *qinv = NULL, *t = NULL, *m = NULL;
  BN_CTX *ctx = NULL;
  int ok = 0;
  if (EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_FACTOR1, &p) != 1 ||
      EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_FACTOR2, &q) != 1 ||
      EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_EXPONENT1, &dp) != 1 ||
      EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_EXPONENT2, &dq) != 1 ||
      EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_COEFFICIENT1, &qinv) != 1) {
    ok = 1;
    goto done;
  }
  ctx = BN_CTX_secure_new();
  t = BN_secure_new();
  m = BN_secure_new();
  if (!ctx || !t || !m || EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_D, &d) != 1) goto done;
  /* dp = d mod (p - 1), dq = d mod (q - 1), qinv * q = 1 mod p */
  if (!BN_sub(m, p, BN_value_one()) || !BN_mod(t, d, m, ctx) || BN_cmp(t, dp) != 0) goto done;
  if (!BN_sub(m, q, BN_value_one()) || !BN_mod(t, d, m, ctx) || BN_cmp(t, dq) != 0) goto done;
  if (!BN_mod_mul(t, qinv, q, p, ctx) || !BN_is_one(t)) goto done;
  ok = 1;
done:
  BN_clear_free(p); BN_clear_free(q); BN_clear_free(d); BN_clear_free(dp); BN_clear_free(dq);
  BN_clear_free(qinv); BN_clear_free(t); BN_clear_free(m);
  BN_CTX_free(ctx);
  ERR_clear_error();   /* a key without CRT numbers queued the misses */
  return ok;
}

/* A private key must sign a test message that its own public half verifies
 * (FIPS 140's pairwise test): OpenSSL falls back to plain d when its CRT
 * result is wrong, so with a d that does not match e it would hand out
 * signatures nobody can verify, where mbedTLS refuses.  One signature, about
 * 0.3 ms at 2048 bits; EVP_PKEY_pairwise_check's primality tests cost 30. */
static int pairwise_ok(wp_key *key) {
  return crt_ok(key->pkey) && sign_verify_selftest(key);
}

/* Whether the key has a third prime (openssl genpkey -pkeyopt
 * rsa_keygen_primes:3): mbedTLS cannot read such a key, so neither backend
 * takes it, and a key that works here works on the other build too. */
static int multi_prime(EVP_PKEY *pkey) {
  BIGNUM *r = NULL;
  int found = EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_FACTOR3, &r) == 1 && r != NULL;
  BN_clear_free(r);
  ERR_clear_error();
  return found;
}

/* Takes pkey into a new key; checks it is a usable RSA key. */
static int key_adopt(wp_key **out, EVP_PKEY *pkey, int is_private, const char *what, char *err) {
  wp_key *key;
  int rsa = rsa_numbers_ok(pkey);
  if (rsa < 0) {
    char msg[WP_ERRLEN];
    const char *name = EVP_PKEY_get0_type_name(pkey);
    snprintf(msg, sizeof msg, "not an RSA key (%s): WeChat Pay keys are RSA", name ? name : "unknown");
    EVP_PKEY_free(pkey);
    return fail(err, msg);
  }
  if (rsa == 0) {
    char msg[WP_ERRLEN];
    snprintf(msg, sizeof msg, "cannot parse the %s (not a usable RSA key: 128 to %d bits, odd modulus and exponent)",
             what, 8 * WP_RSA_MAX_BYTES);
    EVP_PKEY_free(pkey);
    return fail(err, msg);
  }
  if (exponent_too_big(pkey)) {
    EVP_PKEY_free(pkey);
    return fail(err, "unsupported RSA key: a public exponent over 64 bits with a modulus over 3072 bits");
  }
  if (is_private && multi_prime(pkey)) {
    EVP_PKEY_free(pkey);
    return fail(err, "unsupported private key: multi-prime RSA (more than two primes)");
  }
  key = (wp_key *)calloc(1, sizeof *key);
  if (!key) { EVP_PKEY_free(pkey); return fail(err, "out of memory"); }
  key->pkey = pkey;
  key->is_private = is_private;
  key->bits = (size_t)EVP_PKEY_get_bits(pkey);
  key->bytes = (size_t)EVP_PKEY_get_size(pkey);
  if (is_private && !pairwise_ok(key)) {
    wp_key_free(key);
    return fail(err, "the private key is damaged: its RSA numbers do not belong together");
  }
  /* the decoders queue errors for every structure they tried first; left
   * there, they would reach the next caller (libcurl's TLS reads this queue) */
  ERR_clear_error();
  *out = key;
  return 0;
}

/* The tag of the idx-th element (0 or 1) inside the outer SEQUENCE of DER,
 * or -1: enough to tell PKCS#8 from PKCS#1 and SPKI from "RSA PUBLIC KEY". */
static int der_inner_tag(const unsigned char *der, size_t len, int idx) {
  size_t pos = 0, n;
  int i;
  for (i = -1; i < idx; i++) {
    if (pos + 2 > len) return -1;
    if (i == -1 && der[0] != 0x30) return -1;
    n = der[pos + 1];
    pos += 2;
    if (n & 0x80) {
      size_t k = n & 0x7f, j;
      if (k == 0 || k > sizeof(size_t) || pos + k > len) return -1;
      for (n = 0, j = 0; j < k; j++) n = (n << 8) | der[pos + j];
      pos += k;
    }
    if (i >= 0) {   /* skip this element's content */
      if (n > len - pos) return -1;
      pos += n;
    }
  }
  return pos < len ? der[pos] : -1;
}

/* mbedTLS reads a PEM block as its label says; OpenSSL's decoders take any
 * key structure under any label.  0 when the DER does not fit the label. */
static int label_fits(const char *name, const unsigned char *der, size_t len) {
  if (strcmp(name, "PRIVATE KEY") == 0) return der_inner_tag(der, len, 1) == 0x30;
  if (strcmp(name, "RSA PRIVATE KEY") == 0) return der_inner_tag(der, len, 1) == 0x02;
  if (strcmp(name, "PUBLIC KEY") == 0) return der_inner_tag(der, len, 0) == 0x30;
  if (strcmp(name, "RSA PUBLIC KEY") == 0) return der_inner_tag(der, len, 0) == 0x02;
  return 1;   /* ENCRYPTED PRIVATE KEY, EC PRIVATE KEY...: the decoder decides */
}

/* Reads the first PEM block into DER (*der, to free with OPENSSL_clear_free)
 * and says whether it carries legacy "Proc-Type: 4,ENCRYPTED" headers.
 * 0 when it is no PEM or its DER does not fit its label. */
static int pem_block(const unsigned char *pem, size_t len, unsigned char **der, long *derlen, int *legacy) {
  BIO *bio = BIO_new_mem_buf(pem, len > 0x7fffffff ? 0x7fffffff : (int)len);
  char *name = NULL, *header = NULL;
  int ok;
  *der = NULL;
  *derlen = 0;
  ok = bio && PEM_read_bio(bio, &name, &header, der, derlen) == 1;
  BIO_free(bio);
  if (ok) {
    *legacy = header && header[0] != '\0';
    ok = *legacy || label_fits(name, *der, (size_t)*derlen);
  }
  OPENSSL_free(name);
  OPENSSL_free(header);
  if (!ok) {
    OPENSSL_clear_free(*der, (size_t)*derlen);
    *der = NULL;
  }
  return ok;
}

/* Decodes PEM through pem_block, or DER as it is. */
static EVP_PKEY *decode_any(const unsigned char *buf, size_t len, int pem, int selection, pass_state *st) {
  unsigned char *der;
  long derlen;
  int legacy = 0;
  EVP_PKEY *pkey;
  if (!pem) return decode_key(buf, len, "DER", selection, st);
  if (!pem_block(buf, len, &der, &derlen, &legacy)) return NULL;
  /* legacy encryption lives in the PEM headers: only the PEM decoder reads it */
  if (legacy) pkey = decode_key(buf, len, "PEM", selection, st);
  else pkey = decode_key(der, (size_t)derlen, "DER", selection, st);
  OPENSSL_clear_free(der, (size_t)derlen);
  return pkey;
}

static int parse_private(wp_key **out, const unsigned char *buf, size_t len, int pem,
                         const char *pass, size_t passlen, char *err) {
  pass_state st;
  EVP_PKEY *pkey;
  st.pass = pass; st.passlen = passlen; st.asked = 0;
  pkey = decode_any(buf, len, pem, EVP_PKEY_KEYPAIR, &st);
  if (!pkey) {
    if (st.asked && (!pass || passlen == 0))
      return fail(err, "the private key is encrypted: a passphrase is needed");
    if (st.asked)
      return fail(err, "wrong passphrase for the encrypted private key");
    return fail(err, "cannot parse the private key");
  }
  return key_adopt(out, pkey, 1, "private key", err);
}

static int parse_public(wp_key **out, const unsigned char *buf, size_t len, int pem, char *err) {
  EVP_PKEY *pkey = decode_any(buf, len, pem, EVP_PKEY_PUBLIC_KEY, NULL);
  if (!pkey) return fail(err, "cannot parse the public key");
  return key_adopt(out, pkey, 0, "public key", err);
}

/* Keep only what a client needs: the public key, serial and validity. */
static int parse_certificate(wp_key **out, const unsigned char *buf, size_t len, int pem, char *err) {
  X509 *crt = NULL;
  EVP_PKEY *pkey;
  wp_cert_info info;
  if (pem) {
    BIO *bio = BIO_new_mem_buf(buf, len > 0x7fffffff ? 0x7fffffff : (int)len);
    if (bio) crt = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    BIO_free(bio);
  } else if (len <= 0x7fffffff) {
    const unsigned char *p = buf;
    crt = d2i_X509(NULL, &p, (long)len);
    if (crt && p != buf + len) {   /* bytes after the certificate */
      X509_free(crt);
      crt = NULL;
    }
  }
  if (!crt) return fail(err, "cannot parse the certificate");
  pkey = X509_get_pubkey(crt);
  if (!pkey) {
    X509_free(crt);
    return fail(err, "cannot read the certificate's public key");
  }
  memset(&info, 0, sizeof info);
  info.is_cert = 1;
  serial_to_hex(X509_get0_serialNumber(crt), info.serial);
  info.not_before = asn1_time_to_unix(X509_get0_notBefore(crt));
  info.not_after = asn1_time_to_unix(X509_get0_notAfter(crt));
  X509_free(crt);
  if (key_adopt(out, pkey, 0, "certificate's public key", err) != 0) return -1;
  (*out)->cert = info;
  return 0;
}

static int contains(const char *hay, size_t len, const char *needle) {
  size_t n = strlen(needle), i;
  if (n > len) return 0;
  for (i = 0; i + n <= len; i++)
    if (hay[i] == needle[0] && memcmp(hay + i, needle, n) == 0) return 1;
  return 0;
}

int wp_key_from_pem(wp_key **out, const char *pem, size_t len,
                    const char *pass, size_t passlen, char *err) {
  const unsigned char *buf = (const unsigned char *)pem;
  *out = NULL;
  ensure_init();
  if (!contains(pem, len, "-----BEGIN ")) return fail(err, "not PEM: no -----BEGIN line");
  if (contains(pem, len, "-----BEGIN CERTIFICATE-----"))
    return parse_certificate(out, buf, len, 1, err);
  if (contains(pem, len, "PRIVATE KEY-----"))
    return parse_private(out, buf, len, 1, pass, passlen, err);
  if (contains(pem, len, "PUBLIC KEY-----"))
    return parse_public(out, buf, len, 1, err);
  return fail(err, "PEM holds no key or certificate (expected PRIVATE KEY, PUBLIC KEY or CERTIFICATE)");
}

int wp_key_from_der(wp_key **out, wp_der_form form,
                    const unsigned char *der, size_t len, char *err) {
  *out = NULL;
  ensure_init();
  switch (form) {
    case WP_DER_PRIVATE_PKCS8:
    case WP_DER_PRIVATE_PKCS1:
      return parse_private(out, der, len, 0, NULL, 0, err);
    case WP_DER_PUBLIC_PKCS1:
    case WP_DER_PUBLIC_SPKI:
      return parse_public(out, der, len, 0, err);
    case WP_DER_AUTO:
      break;
  }
  {
    /* as crypto_mbedtls.c: private, then public, then a certificate; a key
     * that parses but is not a usable RSA key says so */
    char first[WP_ERRLEN];
    if (parse_private(out, der, len, 0, NULL, 0, first) == 0) return 0;
    if (strncmp(first, "cannot parse the private key", 28) != 0) return fail(err, first);
    if (parse_public(out, der, len, 0, first) == 0) return 0;
    if (strncmp(first, "cannot parse the public key", 27) != 0) return fail(err, first);
    if (parse_certificate(out, der, len, 0, first) == 0) return 0;
    if (strncmp(first, "cannot parse the certificate", 28) != 0) return fail(err, first);
  }
  return fail(err, "DER holds no RSA key or certificate");
}

int wp_key_private_der(wp_key *key, unsigned char **der, size_t *len, char *err) {
  unsigned char *buf, *end;
  int n;
  *der = NULL;
  *len = 0;
  if (!key->is_private) return fail(err, "not a private key");
  n = i2d_PrivateKey(key->pkey, NULL);
  if (n <= 0) return fail(err, "cannot write the private key as DER");
  buf = (unsigned char *)malloc((size_t)n);   /* ours, not OpenSSL's: wiped by its owner */
  if (!buf) return fail(err, "out of memory");
  end = buf;
  if (i2d_PrivateKey(key->pkey, &end) != n) {
    OPENSSL_cleanse(buf, (size_t)n);
    free(buf);
    return fail(err, "cannot write the private key as DER");
  }
  *der = buf;
  *len = (size_t)n;
  return 0;
}

int wp_key_is_private(const wp_key *key) { return key->is_private; }
size_t wp_key_bits(const wp_key *key) { return key->bits; }
const wp_cert_info *wp_key_cert(const wp_key *key) {
  return key->cert.is_cert ? &key->cert : NULL;
}

/* ---- RSA ---------------------------------------------------------------- */

/* Each operation has its own context, set up on first use and reused: the
 * padding and digests are stated once, PKCS#1 v1.5 with SHA-256 for
 * signatures, OAEP with SHA-1 and MGF1-SHA-1 (WeChat Pay's choice) for
 * encryption. */
enum { OP_SIGN, OP_VERIFY, OP_ENCRYPT, OP_DECRYPT };

static EVP_PKEY_CTX *op_ctx(wp_key *key, int op) {
  EVP_PKEY_CTX **slot = op == OP_SIGN ? &key->sign : op == OP_VERIFY ? &key->verify
                      : op == OP_ENCRYPT ? &key->encrypt : &key->decrypt;
  EVP_PKEY_CTX *ctx;
  int ok;
  if (*slot) return *slot;
  ensure_init();
  ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key->pkey, NULL);
  if (!ctx) return NULL;
  switch (op) {
    case OP_SIGN:
    case OP_VERIFY:
      ok = (op == OP_SIGN ? EVP_PKEY_sign_init(ctx) : EVP_PKEY_verify_init(ctx)) == 1 &&
           EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1 &&
           EVP_PKEY_CTX_set_signature_md(ctx, md_sha256) == 1;
      break;
    default:
      ok = (op == OP_ENCRYPT ? EVP_PKEY_encrypt_init(ctx) : EVP_PKEY_decrypt_init(ctx)) == 1 &&
           EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) == 1 &&
           EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md_sha1) == 1 &&
           EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md_sha1) == 1;
      break;
  }
  if (!ok) { EVP_PKEY_CTX_free(ctx); return NULL; }
  *slot = ctx;
  return ctx;
}

static int sha256(const unsigned char *in, size_t len, unsigned char out[32]) {
  return wp_digest(WP_MD_SHA256, in, len, out);
}

int wp_rsa_sign_sha256(wp_key *key, const unsigned char *msg, size_t len,
                       unsigned char *sig, size_t *siglen, char *err) {
  unsigned char hash[32];
  size_t n = WP_RSA_MAX_BYTES;
  EVP_PKEY_CTX *ctx;
  if (!key->is_private) return fail(err, "signing needs a private key, not a public key or certificate");
  ctx = op_ctx(key, OP_SIGN);
  if (!ctx || sha256(msg, len, hash) != 0 || EVP_PKEY_sign(ctx, sig, &n, hash, sizeof hash) != 1)
    return fail(err, "RSA signing failed");
  *siglen = n;
  return 0;
}

int wp_rsa_verify_sha256(wp_key *key, const unsigned char *msg, size_t len,
                         const unsigned char *sig, size_t siglen) {
  unsigned char hash[32];
  EVP_PKEY_CTX *ctx;
  int ok;
  if (siglen != key->bytes) return 0;
  ctx = op_ctx(key, OP_VERIFY);
  ok = ctx && sha256(msg, len, hash) == 0 && EVP_PKEY_verify(ctx, sig, siglen, hash, sizeof hash) == 1;
  if (!ok) ERR_clear_error();
  return ok;
}

static int sign_verify_selftest(wp_key *key) {
  static const unsigned char msg[] = "wechatpay-lua pairwise test";
  unsigned char sig[WP_RSA_MAX_BYTES];
  size_t siglen = 0;
  char err[WP_ERRLEN];
  int ok = wp_rsa_sign_sha256(key, msg, sizeof msg - 1, sig, &siglen, err) == 0 &&
           wp_rsa_verify_sha256(key, msg, sizeof msg - 1, sig, siglen) == 1;
  ERR_clear_error();
  return ok;
}

size_t wp_rsa_oaep_max_plaintext(const wp_key *key) {
  size_t k = key->bytes;
  return k > 2 * 20 + 2 ? k - 2 * 20 - 2 : 0;   /* k - 2*hLen - 2, hLen = SHA-1's 20 */
}

int wp_rsa_oaep_encrypt(wp_key *key, const unsigned char *in, size_t inlen,
                        unsigned char *out, size_t *outlen, char *err) {
  size_t max = wp_rsa_oaep_max_plaintext(key), n = WP_RSA_MAX_BYTES;
  EVP_PKEY_CTX *ctx;
  if (inlen > max) {
    snprintf(err, WP_ERRLEN, "plaintext too long for RSA-OAEP: %zu bytes, at most %zu for a %zu-bit key",
             inlen, max, wp_key_bits(key));
    return -1;
  }
  ctx = op_ctx(key, OP_ENCRYPT);
  if (!ctx || EVP_PKEY_encrypt(ctx, out, &n, in, inlen) != 1)
    return fail(err, "RSA-OAEP encryption failed");
  *outlen = n;
  return 0;
}

int wp_rsa_oaep_decrypt(wp_key *key, const unsigned char *in, size_t inlen,
                        unsigned char *out, size_t *outlen, char *err) {
  size_t n = WP_RSA_MAX_BYTES;
  EVP_PKEY_CTX *ctx;
  if (!key->is_private)
    return fail(err, "decryption needs a private key, not a public key or certificate");
  if (inlen != key->bytes) {
    snprintf(err, WP_ERRLEN, "ciphertext is %zu bytes, a %zu-bit key needs %zu: made for another key?",
             inlen, key->bits, key->bytes);
    return -1;
  }
  ctx = op_ctx(key, OP_DECRYPT);
  if (!ctx || EVP_PKEY_decrypt(ctx, out, &n, in, inlen) != 1) {
    wp_wipe(out, WP_RSA_MAX_BYTES);
    return fail(err, "RSA-OAEP decryption failed: wrong key, corrupted data or not OAEP-SHA1");
  }
  *outlen = n;
  return 0;
}

/* ---- AES ---------------------------------------------------------------- */

static int aes_index(size_t keylen, char *err) {
  if (keylen == 16 || keylen == 24 || keylen == 32) return (int)(keylen / 8 - 2);
  snprintf(err, WP_ERRLEN, "AES key must be 16, 24 or 32 bytes, got %zu", keylen);
  return -1;
}

/* This thread's context for one cipher, bound to it once; later calls only
 * give the key and IV, which keeps the provider's context. */
static EVP_CIPHER_CTX *cipher_ctx(int gcm, int idx) {
  scratch *s = get_scratch();
  EVP_CIPHER_CTX **slot;
  EVP_CIPHER *cipher;
  if (!s) return NULL;
  slot = gcm ? &s->gcm[idx] : &s->ecb[idx];
  cipher = gcm ? gcm_ciphers[idx] : ecb_ciphers[idx];
  if (*slot) return *slot;
  if (!cipher || !(*slot = EVP_CIPHER_CTX_new())) return NULL;
  if (EVP_CipherInit_ex2(*slot, cipher, NULL, NULL, 1, NULL) != 1) {
    EVP_CIPHER_CTX_free(*slot);
    *slot = NULL;
  }
  return *slot;
}

/* GCM's IV length is at most 128 bytes in OpenSSL 3.0; WeChat Pay's is 12. */

static EVP_CIPHER_CTX *gcm_begin(size_t keylen, const unsigned char *key, const unsigned char *iv,
                                 size_t ivlen, int enc, char *err) {
  int idx = aes_index(keylen, err);
  EVP_CIPHER_CTX *ctx;
  if (idx < 0) return NULL;
  if (ivlen == 0) { fail(err, "AES-GCM needs a non-empty nonce"); return NULL; }
  if (ivlen > WP_GCM_IV_MAX) { fail(err, "AES-GCM nonce is longer than 128 bytes"); return NULL; }
  ctx = cipher_ctx(1, idx);
  if (!ctx ||
      EVP_CipherInit_ex2(ctx, NULL, NULL, NULL, enc, NULL) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, (int)ivlen, NULL) != 1 ||
      EVP_CipherInit_ex2(ctx, NULL, key, iv, enc, NULL) != 1) {
    fail(err, enc ? "AES-GCM encryption failed" : "AES-GCM decryption failed");
    return NULL;
  }
  return ctx;
}

/* EVP takes int lengths: feed long inputs in pieces. */
static int cipher_update(EVP_CIPHER_CTX *ctx, unsigned char *out, size_t *outlen,
                         const unsigned char *in, size_t inlen) {
  size_t done = 0;
  *outlen = 0;
  while (done < inlen) {
    int chunk = inlen - done > (1u << 30) ? (1 << 30) : (int)(inlen - done), n = 0;
    if (EVP_CipherUpdate(ctx, out ? out + *outlen : NULL, &n, in + done, chunk) != 1) return 0;
    *outlen += (size_t)n;
    done += (size_t)chunk;
  }
  return 1;
}

/* The context outlives the call: key it with zeros so the caller's key
 * schedule (and GCM's hash key) does not stay in memory, as mbedTLS's
 * *_free wipes them; cheaper than freeing and allocating a context. */
static int scrub(EVP_CIPHER_CTX *ctx, int rc) {
  static const unsigned char zeros[32] = { 0 };
  if (EVP_CipherInit_ex2(ctx, NULL, zeros, NULL, -1, NULL) != 1) ERR_clear_error();
  return rc;
}

int wp_aes_gcm_encrypt(const unsigned char *key, size_t keylen,
                       const unsigned char *iv, size_t ivlen,
                       const unsigned char *aad, size_t aadlen,
                       const unsigned char *in, size_t inlen,
                       unsigned char *out, unsigned char tag[16], char *err) {
  EVP_CIPHER_CTX *ctx = gcm_begin(keylen, key, iv, ivlen, 1, err);
  size_t n = 0, m = 0;
  int fin = 0;
  if (!ctx) return -1;
  if ((aadlen > 0 && !cipher_update(ctx, NULL, &m, aad, aadlen)) ||
      (inlen > 0 && !cipher_update(ctx, out, &n, in, inlen)) ||
      EVP_CipherFinal_ex(ctx, out + n, &fin) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, tag) != 1)
    return scrub(ctx, fail(err, "AES-GCM encryption failed"));
  return scrub(ctx, 0);
}

int wp_aes_gcm_decrypt(const unsigned char *key, size_t keylen,
                       const unsigned char *iv, size_t ivlen,
                       const unsigned char *aad, size_t aadlen,
                       const unsigned char *in, size_t inlen,
                       const unsigned char tag[16],
                       unsigned char *out, char *err) {
  EVP_CIPHER_CTX *ctx = gcm_begin(keylen, key, iv, ivlen, 0, err);
  unsigned char tagcopy[16];
  size_t n = 0, m = 0;
  int fin = 0;
  if (!ctx) return -1;
  memcpy(tagcopy, tag, 16);
  if ((aadlen > 0 && !cipher_update(ctx, NULL, &m, aad, aadlen)) ||
      (inlen > 0 && !cipher_update(ctx, out, &n, in, inlen)) ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, tagcopy) != 1)
    return scrub(ctx, fail(err, "AES-GCM decryption failed"));
  if (EVP_CipherFinal_ex(ctx, out + n, &fin) != 1) {
    wp_wipe(out, inlen);   /* unauthenticated plaintext must not be used */
    return scrub(ctx, fail(err, "AES-GCM authentication failed: wrong key, nonce or associated data, or tampered ciphertext"));
  }
  return scrub(ctx, 0);
}

/* ECB with our own PKCS#7 padding (EVP's is turned off): the same checks,
 * and the same messages, as crypto_mbedtls.c. */
static EVP_CIPHER_CTX *ecb_begin(const unsigned char *key, size_t keylen, int enc, char *err) {
  int idx = aes_index(keylen, err);
  EVP_CIPHER_CTX *ctx;
  if (idx < 0) return NULL;
  ctx = cipher_ctx(0, idx);
  if (!ctx || EVP_CipherInit_ex2(ctx, NULL, key, NULL, enc, NULL) != 1 ||
      EVP_CIPHER_CTX_set_padding(ctx, 0) != 1) {
    fail(err, enc ? "AES-ECB encryption failed" : "AES-ECB decryption failed");
    return NULL;
  }
  return ctx;
}

int wp_aes_ecb_encrypt(const unsigned char *key, size_t keylen,
                       const unsigned char *in, size_t inlen,
                       unsigned char *out, size_t *outlen, char *err) {
  unsigned char block[16];
  size_t pad = 16 - inlen % 16, off = inlen - inlen % 16, n = 0, m = 0;
  EVP_CIPHER_CTX *ctx = ecb_begin(key, keylen, 1, err);
  if (!ctx) return -1;
  memcpy(block, in + off, inlen - off);
  memset(block + (inlen - off), (int)pad, pad);   /* always one more block when aligned */
  if ((off > 0 && !cipher_update(ctx, out, &n, in, off)) ||
      !cipher_update(ctx, out + n, &m, block, 16)) {
    wp_wipe(block, sizeof block);
    return scrub(ctx, fail(err, "AES-ECB encryption failed"));
  }
  wp_wipe(block, sizeof block);
  *outlen = n + m;
  return scrub(ctx, 0);
}

int wp_aes_ecb_decrypt(const unsigned char *key, size_t keylen,
                       const unsigned char *in, size_t inlen,
                       unsigned char *out, size_t *outlen, char *err) {
  EVP_CIPHER_CTX *ctx;
  size_t pad, i, n = 0;
  int bad = 0;
  if (aes_index(keylen, err) < 0) return -1;
  if (inlen == 0 || inlen % 16 != 0) {
    snprintf(err, WP_ERRLEN, "AES-ECB ciphertext must be a non-empty multiple of 16 bytes, got %zu", inlen);
    return -1;
  }
  ctx = ecb_begin(key, keylen, 0, err);
  if (!ctx) return -1;
  if (!cipher_update(ctx, out, &n, in, inlen) || n != inlen)
    return scrub(ctx, fail(err, "AES-ECB decryption failed"));
  scrub(ctx, 0);
  pad = out[inlen - 1];
  if (pad == 0 || pad > 16) bad = 1;
  for (i = 0; !bad && i < pad; i++) bad |= out[inlen - 1 - i] != pad;
  if (bad) return fail(err, "AES-ECB padding is invalid: wrong key or corrupted data");
  *outlen = inlen - pad;
  return 0;
}

/* ---- digests ------------------------------------------------------------ */

static const EVP_MD *md_of(wp_md md) {
  ensure_init();
  switch (md) {
    case WP_MD_SHA256: return md_sha256;
    case WP_MD_SHA1: return md_sha1;
    case WP_MD_MD5: return md_md5;
  }
  return NULL;
}

size_t wp_md_size(wp_md md) {
  switch (md) {
    case WP_MD_SHA256: return 32;
    case WP_MD_SHA1: return 20;
    case WP_MD_MD5: return 16;
  }
  return 0;
}

int wp_digest(wp_md md, const unsigned char *in, size_t len, unsigned char *out) {
  const EVP_MD *type = md_of(md);
  scratch *s = get_scratch();
  unsigned int n = 0;
  if (!type || !s) { ERR_clear_error(); return -1; }
  if (!s->md && !(s->md = EVP_MD_CTX_new())) return -1;
  if (EVP_DigestInit_ex2(s->md, type, NULL) != 1 || EVP_DigestUpdate(s->md, in, len) != 1 ||
      EVP_DigestFinal_ex(s->md, out, &n) != 1) {
    ERR_clear_error();
    return -1;
  }
  return 0;
}

struct wp_md_ctx {
  EVP_MD_CTX *evp;
};

wp_md_ctx *wp_md_new(wp_md md) {
  const EVP_MD *type = md_of(md);
  wp_md_ctx *ctx;
  if (!type) return NULL;
  ctx = (wp_md_ctx *)calloc(1, sizeof *ctx);
  if (!ctx) return NULL;
  ctx->evp = EVP_MD_CTX_new();
  if (!ctx->evp || EVP_DigestInit_ex2(ctx->evp, type, NULL) != 1) {
    ERR_clear_error();
    wp_md_free(ctx);
    return NULL;
  }
  return ctx;
}

int wp_md_update(wp_md_ctx *ctx, const unsigned char *in, size_t len) {
  if (EVP_DigestUpdate(ctx->evp, in, len) != 1) { ERR_clear_error(); return -1; }
  return 0;
}

int wp_md_final(wp_md_ctx *ctx, unsigned char *out) {
  unsigned int n = 0;
  if (EVP_DigestFinal_ex(ctx->evp, out, &n) != 1) { ERR_clear_error(); return -1; }
  return 0;
}

void wp_md_free(wp_md_ctx *ctx) {
  if (!ctx) return;
  EVP_MD_CTX_free(ctx->evp);
  free(ctx);
}

int wp_hmac_sha256(const unsigned char *key, size_t keylen,
                   const unsigned char *in, size_t len, unsigned char out[32]) {
  static const unsigned char empty[1] = { 0 };
  scratch *s = get_scratch();
  size_t n = 0;
  int rc = 0;
  if (!s || !mac_hmac) { ERR_clear_error(); return -1; }
  if (!s->hmac) {
    OSSL_PARAM params[2];
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA2-256", 0);
    params[1] = OSSL_PARAM_construct_end();
    s->hmac = EVP_MAC_CTX_new(mac_hmac);
    if (!s->hmac || EVP_MAC_CTX_set_params(s->hmac, params) != 1) {
      EVP_MAC_CTX_free(s->hmac);
      s->hmac = NULL;
      ERR_clear_error();
      return -1;
    }
  }
  /* an empty HMAC key is valid; OpenSSL wants a non-NULL pointer for it */
  if (EVP_MAC_init(s->hmac, keylen ? key : empty, keylen, NULL) != 1 ||
      EVP_MAC_update(s->hmac, in, len) != 1 || EVP_MAC_final(s->hmac, out, &n, 32) != 1 || n != 32) {
    rc = -1;
  }
  /* the context keeps the key's pads: overwrite them with an empty key's */
  if (EVP_MAC_init(s->hmac, empty, 0, NULL) != 1) rc = -1;
  ERR_clear_error();
  return rc;
}
