/*
 * The mbedTLS backend of crypto.h (mbedTLS 2.28 on Debian 12; 3.x gated).
 */
#include "crypto.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mbedtls/version.h>
#include <mbedtls/aes.h>
#include <mbedtls/asn1.h>
#include <mbedtls/oid.h>
#include <mbedtls/pem.h>
#include <mbedtls/pkcs5.h>
#include <mbedtls/pkcs12.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/gcm.h>
#include <mbedtls/md.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/rsa.h>
#include <mbedtls/x509_crt.h>

#if MBEDTLS_VERSION_NUMBER >= 0x03000000
#define WP_MBEDTLS3 1
#endif

struct wp_key {
  mbedtls_pk_context pk;
  int is_private;
  wp_cert_info cert;
};

static void set_err(char *err, const char *what, int code) {
  if (!err) return;
  if (code) {
    char reason[128];
    mbedtls_strerror(code, reason, sizeof reason);
    snprintf(err, WP_ERRLEN, "%s (%s)", what, reason);
  } else {
    snprintf(err, WP_ERRLEN, "%s", what);
  }
}

void wp_wipe(void *p, size_t len) { mbedtls_platform_zeroize(p, len); }

const char *wp_crypto_backend(void) { return "mbedTLS " MBEDTLS_VERSION_STRING; }

/* ---- CSPRNG ------------------------------------------------------------- */

/* One DRBG per process.  nginx forks its workers after the module is loaded,
 * so a child that inherited a seeded state must reseed before its first use,
 * or two workers would produce the same nonces. */
static pthread_mutex_t rng_lock = PTHREAD_MUTEX_INITIALIZER;
static mbedtls_entropy_context rng_entropy;
static mbedtls_ctr_drbg_context rng_drbg;
static pid_t rng_pid = 0;   /* 0: never seeded */

static int rng_ready_locked(char *err) {
  pid_t pid = getpid();
  int rc;
  if (rng_pid == pid) return 0;
  if (rng_pid == 0) {
    static const char personal[] = "wechatpay-lua";
    mbedtls_entropy_init(&rng_entropy);
    mbedtls_ctr_drbg_init(&rng_drbg);
    rc = mbedtls_ctr_drbg_seed(&rng_drbg, mbedtls_entropy_func, &rng_entropy,
                               (const unsigned char *)personal, sizeof personal - 1);
  } else {
    rc = mbedtls_ctr_drbg_reseed(&rng_drbg, (const unsigned char *)&pid, sizeof pid);
  }
  if (rc != 0) {
    set_err(err, "cannot seed the random generator", rc);
    return -1;
  }
  rng_pid = pid;
  return 0;
}

int wp_random(unsigned char *out, size_t len, char *err) {
  int rc = 0;
  pthread_mutex_lock(&rng_lock);
  if (rng_ready_locked(err) != 0) {
    rc = -1;
  } else {
    while (len > 0 && rc == 0) {
      size_t n = len > MBEDTLS_CTR_DRBG_MAX_REQUEST ? MBEDTLS_CTR_DRBG_MAX_REQUEST : len;
      int r = mbedtls_ctr_drbg_random(&rng_drbg, out, n);
      if (r != 0) { set_err(err, "random generator failed", r); rc = -1; }
      out += n; len -= n;
    }
  }
  pthread_mutex_unlock(&rng_lock);
  return rc;
}

/* The f_rng mbedTLS wants for blinding and padding. */
static int rng_callback(void *unused, unsigned char *out, size_t len) {
  (void)unused;
  return wp_random(out, len, NULL) == 0 ? 0 : MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED;
}

/* ---- keys --------------------------------------------------------------- */

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = (unsigned)(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (int64_t)doe - 719468;
}

static int64_t x509_time_to_unix(const mbedtls_x509_time *t) {
  return days_from_civil(t->year, (unsigned)t->mon, (unsigned)t->day) * 86400 +
         t->hour * 3600 + t->min * 60 + t->sec;
}

static void serial_to_hex(const mbedtls_x509_buf *serial, char *out) {
  static const char digits[] = "0123456789ABCDEF";
  const unsigned char *p = serial->p;
  size_t n = serial->len, i;
  while (n > 1 && *p == 0) { p++; n--; }   /* as `openssl x509 -serial` prints it */
  if (n > (WP_SERIAL_HEX_MAX - 1) / 2) n = (WP_SERIAL_HEX_MAX - 1) / 2;
  for (i = 0; i < n; i++) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  out[2 * n] = '\0';
}

static wp_key *key_new(void) {
  wp_key *key = calloc(1, sizeof *key);
  if (key) mbedtls_pk_init(&key->pk);
  return key;
}

void wp_key_free(wp_key *key) {
  if (!key) return;
  mbedtls_pk_free(&key->pk);   /* zeroizes the RSA context */
  free(key);
}

/* Only RSA keys are WeChat Pay keys; say what was given instead. */
static int key_require_rsa(wp_key *key, char *err) {
  if (mbedtls_pk_get_type(&key->pk) == MBEDTLS_PK_RSA) {
    /* OpenSSL cannot compute with e over 64 bits and n over 3072: a key
     * that would work here only is refused on both (crypto_openssl.c) */
    mbedtls_mpi n, e;
    int big;
    mbedtls_mpi_init(&n);
    mbedtls_mpi_init(&e);
    big = mbedtls_rsa_export(mbedtls_pk_rsa(key->pk), &n, NULL, NULL, NULL, &e) == 0 &&
          mbedtls_mpi_bitlen(&n) > 3072 && mbedtls_mpi_bitlen(&e) > 64;
    mbedtls_mpi_free(&n);
    mbedtls_mpi_free(&e);
    if (big) {
      if (err) snprintf(err, WP_ERRLEN, "unsupported RSA key: a public exponent over 64 bits with a modulus over 3072 bits");
      return -1;
    }
    /* n = pq, d matching e, and the CRT numbers matching p, q and d, as
     * the OpenSSL backend checks them: a damaged key is refused at load,
     * not at its first signature */
    if (key->is_private && mbedtls_rsa_check_privkey(mbedtls_pk_rsa(key->pk)) != 0) {
      if (err) snprintf(err, WP_ERRLEN, "the private key is damaged: its RSA numbers do not belong together");
      return -1;
    }
    return 0;
  }
  if (err) snprintf(err, WP_ERRLEN, "not an RSA key (%s): WeChat Pay keys are RSA",
                    mbedtls_pk_get_name(&key->pk));
  return -1;
}


/* ---- PBES2 with AES-CBC --------------------------------------------------
 * OpenSSL encrypts PKCS#8 keys with PBES2 + AES-256-CBC by default, which
 * mbedTLS 2.28 does not decrypt (it knows only DES schemes there).  This
 * decrypts such a key into plain PKCS#8 DER and hands it back to mbedTLS. */

#define OID_PBES2   "\x2a\x86\x48\x86\xf7\x0d\x01\x05\x0d"
#define OID_PBKDF2  "\x2a\x86\x48\x86\xf7\x0d\x01\x05\x0c"
#define OID_AES_CBC "\x60\x86\x48\x01\x65\x03\x04\x01"   /* + .2 / .22 / .42 */

static int oid_is(const mbedtls_asn1_buf *oid, const char *der, size_t len) {
  return oid->len == len && memcmp(oid->p, der, len) == 0;
}

static int pbes2_aes_decrypt(const unsigned char *der, size_t len, const char *pass, size_t passlen,
                             unsigned char *out, size_t *outlen) {
  unsigned char *p = (unsigned char *)der, *end = p + len, *q, *qend, *r, *rend;
  mbedtls_asn1_buf alg, params, kdf, kdf_params, enc, enc_params, salt, prf, prf_params;
  mbedtls_md_type_t md = MBEDTLS_MD_SHA1;
  mbedtls_md_context_t hmac;
  mbedtls_aes_context aes;
  unsigned char key[32], iv[16];
  size_t n, keylen, pad, i;
  int iterations, rc;

  if (mbedtls_asn1_get_tag(&p, end, &n, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0) return -1;
  if (mbedtls_asn1_get_alg(&p, end, &alg, &params) != 0 || !oid_is(&alg, OID_PBES2, 9)) return -1;
  q = params.p; qend = q + params.len;
  if (mbedtls_asn1_get_alg(&q, qend, &kdf, &kdf_params) != 0 || !oid_is(&kdf, OID_PBKDF2, 9)) return -1;
  r = kdf_params.p; rend = r + kdf_params.len;
  if (mbedtls_asn1_get_tag(&r, rend, &salt.len, MBEDTLS_ASN1_OCTET_STRING) != 0) return -1;
  salt.p = r; r += salt.len;
  if (mbedtls_asn1_get_int(&r, rend, &iterations) != 0 || iterations < 1) return -1;
  if (r < rend && *r == MBEDTLS_ASN1_INTEGER) {   /* optional keyLength */
    int ignored;
    if (mbedtls_asn1_get_int(&r, rend, &ignored) != 0) return -1;
  }
  if (r < rend) {
    if (mbedtls_asn1_get_alg(&r, rend, &prf, &prf_params) != 0) return -1;
    if (mbedtls_oid_get_md_hmac(&prf, &md) != 0) return -1;
  }
  if (mbedtls_asn1_get_alg(&q, qend, &enc, &enc_params) != 0) return -1;
  if (enc.len != 9 || memcmp(enc.p, OID_AES_CBC, 8) != 0) return -1;
  switch (enc.p[8]) {
    case 2: keylen = 16; break;
    case 22: keylen = 24; break;
    case 42: keylen = 32; break;
    default: return -1;
  }
  if (enc_params.tag != MBEDTLS_ASN1_OCTET_STRING || enc_params.len != 16) return -1;
  memcpy(iv, enc_params.p, 16);
  if (mbedtls_asn1_get_tag(&p, end, &n, MBEDTLS_ASN1_OCTET_STRING) != 0) return -1;
  if (n == 0 || n % 16 != 0) return -1;

  mbedtls_md_init(&hmac);
  rc = mbedtls_md_setup(&hmac, mbedtls_md_info_from_type(md), 1);
  if (rc == 0)
    rc = mbedtls_pkcs5_pbkdf2_hmac(&hmac, (const unsigned char *)pass, passlen, salt.p, salt.len,
                                   (unsigned)iterations, (uint32_t)keylen, key);
  mbedtls_md_free(&hmac);
  mbedtls_aes_init(&aes);
  if (rc == 0) rc = mbedtls_aes_setkey_dec(&aes, key, (unsigned)keylen * 8);
  if (rc == 0) rc = mbedtls_aes_crypt_cbc(&aes, MBEDTLS_AES_DECRYPT, n, iv, p, out);
  mbedtls_aes_free(&aes);
  wp_wipe(key, sizeof key);
  if (rc != 0) return -2;
  pad = out[n - 1];
  if (pad == 0 || pad > 16) return -2;
  for (i = 0; i < pad; i++)
    if (out[n - 1 - i] != pad) return -2;
  *outlen = n - pad;
  return 0;
}

/* -1: not a PBES2/AES key (let mbedTLS's error stand); -2: wrong passphrase. */
static int parse_pbes2_aes(wp_key *key, const char *pem, const char *pass, size_t passlen) {
  mbedtls_pem_context ctx;
  unsigned char *plain = NULL;
  size_t used, plainlen = 0;
  int rc = -1;
  mbedtls_pem_init(&ctx);
  if (mbedtls_pem_read_buffer(&ctx, "-----BEGIN ENCRYPTED PRIVATE KEY-----",
                              "-----END ENCRYPTED PRIVATE KEY-----",
                              (const unsigned char *)pem, NULL, 0, &used) == 0 &&
      (plain = malloc(ctx.buflen)) != NULL) {
    rc = pbes2_aes_decrypt(ctx.buf, ctx.buflen, pass, passlen, plain, &plainlen);
    if (rc == 0) {
      mbedtls_pk_free(&key->pk);
      mbedtls_pk_init(&key->pk);
#ifdef WP_MBEDTLS3
      rc = mbedtls_pk_parse_key(&key->pk, plain, plainlen, NULL, 0, rng_callback, NULL);
#else
      rc = mbedtls_pk_parse_key(&key->pk, plain, plainlen, NULL, 0);
#endif
      rc = rc == 0 ? 0 : -2;   /* a lucky padding byte with the wrong passphrase */
    }
    wp_wipe(plain, ctx.buflen);
  }
  free(plain);
  mbedtls_pem_free(&ctx);
  return rc;
}

/* Whether buf holds an encrypted PEM key (PKCS#8 or the legacy Proc-Type header). */
static int holds_text(const unsigned char *buf, size_t len, const char *text) {
  size_t n = strlen(text), i;
  for (i = 0; n <= len && i <= len - n; i++)
    if (memcmp(buf + i, text, n) == 0) return 1;
  return 0;
}

static int is_encrypted_pem(const unsigned char *buf, size_t len) {
  return holds_text(buf, len, "-----BEGIN ENCRYPTED PRIVATE KEY-----") ||
         holds_text(buf, len, "Proc-Type: 4,ENCRYPTED");
}

/* Whether rc says the key's encryption scheme is one mbedTLS cannot run
 * (scrypt, ARIA, Camellia...): then no passphrase was ever tried, and
 * "wrong passphrase" would send the user after the wrong fault.  Error
 * codes add a high-level and a low-level part: either may carry it. */
static int unsupported_encryption(int rc) {
  static const int codes[] = {
    MBEDTLS_ERR_PKCS5_FEATURE_UNAVAILABLE, MBEDTLS_ERR_PKCS12_FEATURE_UNAVAILABLE,
    MBEDTLS_ERR_PEM_UNKNOWN_ENC_ALG, MBEDTLS_ERR_PEM_FEATURE_UNAVAILABLE,
    MBEDTLS_ERR_CIPHER_FEATURE_UNAVAILABLE, MBEDTLS_ERR_PK_FEATURE_UNAVAILABLE,
  };
  int high = -((-rc) & 0xFF80), low = -((-rc) & 0x007F);
  size_t i;
  if (rc >= 0) return 0;
  for (i = 0; i < sizeof codes / sizeof codes[0]; i++)
    if (rc == codes[i] || high == codes[i] || low == codes[i]) return 1;
  return 0;
}

/* Whether DER is a multi-prime RSA private key: RSAPrivateKey version 1,
 * bare (PKCS#1) or inside PKCS#8.  mbedTLS reads only version 0 and, for
 * DER, answers "invalid format" after trying every other structure. */
static int multi_prime_der(const unsigned char *der, size_t len) {
  unsigned char *p = (unsigned char *)der, *end = p + len;
  mbedtls_asn1_buf alg, params;
  size_t n;
  int version;
  if (mbedtls_asn1_get_tag(&p, end, &n, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0) return 0;
  end = p + n;
  if (mbedtls_asn1_get_int(&p, end, &version) != 0) return 0;
  if (version != 0) return version == 1;
  if (mbedtls_asn1_get_alg(&p, end, &alg, &params) != 0 ||
      mbedtls_asn1_get_tag(&p, end, &n, MBEDTLS_ASN1_OCTET_STRING) != 0) return 0;
  end = p + n;
  if (mbedtls_asn1_get_tag(&p, end, &n, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0) return 0;
  return mbedtls_asn1_get_int(&p, p + n, &version) == 0 && version == 1;
}

static int parse_private(wp_key *key, const unsigned char *buf, size_t len,
                         const char *pass, size_t passlen, char *err) {
  /* an empty passphrase is none, as OpenSSL's backend reads it: "needed",
   * not "wrong" */
  if (passlen == 0) pass = NULL;
#ifdef WP_MBEDTLS3
  int rc = mbedtls_pk_parse_key(&key->pk, buf, len, (const unsigned char *)pass, passlen,
                                rng_callback, NULL);
#else
  int rc = mbedtls_pk_parse_key(&key->pk, buf, len, (const unsigned char *)pass, passlen);
#endif
  if (rc == 0) { key->is_private = 1; return 0; }
  if (pass && passlen > 0 && rc != MBEDTLS_ERR_PK_PASSWORD_MISMATCH) {
    int fallback = parse_pbes2_aes(key, (const char *)buf, pass, passlen);
    if (fallback == 0) { key->is_private = 1; return 0; }
    if (fallback == -2) rc = MBEDTLS_ERR_PK_PASSWORD_MISMATCH;
  }
  /* A wrong passphrase usually fails the padding check (PASSWORD_MISMATCH), but
   * about 1 time in 256 the last byte decrypts to valid padding and the garbage
   * fails to parse instead: for an encrypted key given a passphrase that is a
   * wrong passphrase all the same, as the OpenSSL backend reports it. */
  if (pass && passlen > 0 && rc != MBEDTLS_ERR_PK_PASSWORD_MISMATCH && !unsupported_encryption(rc) &&
      rc != MBEDTLS_ERR_PK_UNKNOWN_PK_ALG && is_encrypted_pem(buf, len))
    rc = MBEDTLS_ERR_PK_PASSWORD_MISMATCH;
  if (rc == MBEDTLS_ERR_PK_PASSWORD_REQUIRED)
    set_err(err, "the private key is encrypted: a passphrase is needed", 0);
  else if (rc == MBEDTLS_ERR_PK_PASSWORD_MISMATCH)
    set_err(err, "wrong passphrase for the encrypted private key", 0);
  else if (unsupported_encryption(rc) && is_encrypted_pem(buf, len))
    set_err(err, "unsupported private key encryption: mbedTLS cannot decrypt this scheme "
                 "(re-encrypt it with openssl pkcs8 -topk8 -v2 aes-256-cbc)", rc);
  else if (rc == MBEDTLS_ERR_PK_FEATURE_UNAVAILABLE)
    set_err(err, "unsupported private key encryption or format", rc);
  else if (rc == MBEDTLS_ERR_PK_UNKNOWN_PK_ALG)
    set_err(err, "not an RSA key: unknown key algorithm", 0);
  else if (len > 0 && buf[0] == 0x30 && multi_prime_der(buf, len))
    set_err(err, "unsupported private key: multi-prime RSA (more than two primes)", 0);
  else if (-((-rc) & 0xFF80) == MBEDTLS_ERR_PK_KEY_INVALID_VERSION)
    /* version 1 of RSAPrivateKey is multi-prime, all openssl writes */
    set_err(err, "unsupported private key: multi-prime RSA (more than two primes) or an unknown version", 0);
  else
    set_err(err, "cannot parse the private key", rc);
  return -1;
}

static int parse_public(wp_key *key, const unsigned char *buf, size_t len, char *err) {
  int rc = mbedtls_pk_parse_public_key(&key->pk, buf, len);
  if (rc == 0) return 0;
  if (rc == MBEDTLS_ERR_PK_UNKNOWN_PK_ALG)
    set_err(err, "not an RSA key: unknown key algorithm", 0);
  else
    set_err(err, "cannot parse the public key", rc);
  return -1;
}

static int parse_certificate(wp_key *key, const unsigned char *buf, size_t len, char *err) {
  mbedtls_x509_crt crt;
  int rc;
  mbedtls_x509_crt_init(&crt);
  rc = mbedtls_x509_crt_parse(&crt, buf, len);
  if (rc != 0) {
    set_err(err, "cannot parse the certificate", rc);
    mbedtls_x509_crt_free(&crt);
    return -1;
  }
  /* Keep only what a client needs: the public key, serial and validity. */
  rc = mbedtls_pk_parse_public_key(&key->pk, crt.pk_raw.p, crt.pk_raw.len);
  if (rc != 0) {
    set_err(err, "cannot read the certificate's public key", rc);
  } else {
    key->cert.is_cert = 1;
    serial_to_hex(&crt.serial, key->cert.serial);
    key->cert.not_before = x509_time_to_unix(&crt.valid_from);
    key->cert.not_after = x509_time_to_unix(&crt.valid_to);
  }
  mbedtls_x509_crt_free(&crt);
  return rc == 0 ? 0 : -1;
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
  wp_key *key;
  char *buf;
  int rc;
  *out = NULL;
  if (!contains(pem, len, "-----BEGIN ")) {
    set_err(err, "not PEM: no -----BEGIN line", 0);
    return -1;
  }
  /* mbedTLS wants PEM NUL-terminated, with the NUL counted in its length. */
  buf = malloc(len + 1);
  key = key_new();
  if (!buf || !key) {
    free(buf); wp_key_free(key);
    set_err(err, "out of memory", 0);
    return -1;
  }
  memcpy(buf, pem, len);
  buf[len] = '\0';
  if (contains(pem, len, "-----BEGIN CERTIFICATE-----"))
    rc = parse_certificate(key, (unsigned char *)buf, len + 1, err);
  else if (contains(pem, len, "PRIVATE KEY-----"))
    rc = parse_private(key, (unsigned char *)buf, len + 1, pass, passlen, err);
  else if (contains(pem, len, "PUBLIC KEY-----"))
    rc = parse_public(key, (unsigned char *)buf, len + 1, err);
  else {
    set_err(err, "PEM holds no key or certificate (expected PRIVATE KEY, PUBLIC KEY or CERTIFICATE)", 0);
    rc = -1;
  }
  wp_wipe(buf, len);
  free(buf);
  if (rc == 0) rc = key_require_rsa(key, err);
  if (rc != 0) { wp_key_free(key); return -1; }
  *out = key;
  return 0;
}

/* RSA-8192 in PKCS#1 is under 5 KB */
#define WP_PRIVATE_DER_MAX 8192

int wp_key_private_der(wp_key *key, unsigned char **der, size_t *len, char *err) {
  unsigned char *buf, *out;
  int n;
  *der = NULL;
  *len = 0;
  if (!key->is_private) { set_err(err, "not a private key", 0); return -1; }
  buf = (unsigned char *)malloc(WP_PRIVATE_DER_MAX);
  if (!buf) { set_err(err, "out of memory", 0); return -1; }
  n = mbedtls_pk_write_key_der(&key->pk, buf, WP_PRIVATE_DER_MAX);   /* at the end of buf */
  if (n <= 0) {
    mbedtls_platform_zeroize(buf, WP_PRIVATE_DER_MAX);
    free(buf);
    set_err(err, "cannot write the private key as DER", n);
    return -1;
  }
  out = (unsigned char *)malloc((size_t)n);
  if (out) memcpy(out, buf + WP_PRIVATE_DER_MAX - n, (size_t)n);
  mbedtls_platform_zeroize(buf, WP_PRIVATE_DER_MAX);
  free(buf);
  if (!out) { set_err(err, "out of memory", 0); return -1; }
  *der = out;
  *len = (size_t)n;
  return 0;
}

int wp_key_from_der(wp_key **out, wp_der_form form,
                    const unsigned char *der, size_t len, char *err) {
  wp_key *key = key_new();
  int rc = -1;
  *out = NULL;
  if (!key) { set_err(err, "out of memory", 0); return -1; }
  switch (form) {
    case WP_DER_PRIVATE_PKCS8:
    case WP_DER_PRIVATE_PKCS1:
      rc = parse_private(key, der, len, NULL, 0, err);
      break;
    case WP_DER_PUBLIC_PKCS1:
    case WP_DER_PUBLIC_SPKI:
      rc = parse_public(key, der, len, err);
      break;
    case WP_DER_AUTO:
      rc = parse_private(key, der, len, NULL, 0, err);
      /* a private key this build cannot take says so, as OpenSSL's does */
      if (rc != 0 && strncmp(err, "unsupported private key:", 24) == 0) break;
      if (rc != 0) {
        mbedtls_pk_free(&key->pk);
        mbedtls_pk_init(&key->pk);
        rc = parse_public(key, der, len, err);
      }
      if (rc != 0) {
        mbedtls_pk_free(&key->pk);
        mbedtls_pk_init(&key->pk);
        rc = parse_certificate(key, der, len, err);
      }
      if (rc != 0) set_err(err, "DER holds no RSA key or certificate", 0);
      break;
  }
  if (rc == 0) rc = key_require_rsa(key, err);
  if (rc != 0) { wp_key_free(key); return -1; }
  *out = key;
  return 0;
}

int wp_key_is_private(const wp_key *key) { return key->is_private; }
/* The modulus's own bit length: mbedtls_pk_get_bitlen counts whole bytes
 * for RSA (a 2047-bit key would be 2048), which OpenSSL's backend does not. */
size_t wp_key_bits(const wp_key *key) {
  mbedtls_mpi n;
  size_t bits;
  if (mbedtls_pk_get_type(&key->pk) != MBEDTLS_PK_RSA) return mbedtls_pk_get_bitlen(&key->pk);
  mbedtls_mpi_init(&n);
  bits = mbedtls_rsa_export(mbedtls_pk_rsa(key->pk), &n, NULL, NULL, NULL, NULL) == 0
           ? mbedtls_mpi_bitlen(&n) : mbedtls_pk_get_bitlen(&key->pk);
  mbedtls_mpi_free(&n);
  return bits;
}
const wp_cert_info *wp_key_cert(const wp_key *key) {
  return key->cert.is_cert ? &key->cert : NULL;
}

/* ---- RSA ---------------------------------------------------------------- */

/* mbedTLS refuses an operation whose scheme differs from the context's
 * padding, so each operation states its own: PKCS#1 v1.5 for signatures,
 * OAEP with SHA-1 (WeChat Pay's choice) for encryption. */
static mbedtls_rsa_context *rsa_for_pkcs1v15(wp_key *key) {
  mbedtls_rsa_context *rsa = mbedtls_pk_rsa(key->pk);
  mbedtls_rsa_set_padding(rsa, MBEDTLS_RSA_PKCS_V15, MBEDTLS_MD_SHA256);
  return rsa;
}

static mbedtls_rsa_context *rsa_for_oaep(wp_key *key) {
  mbedtls_rsa_context *rsa = mbedtls_pk_rsa(key->pk);
  mbedtls_rsa_set_padding(rsa, MBEDTLS_RSA_PKCS_V21, MBEDTLS_MD_SHA1);
  return rsa;
}

int wp_rsa_sign_sha256(wp_key *key, const unsigned char *msg, size_t len,
                       unsigned char *sig, size_t *siglen, char *err) {
  unsigned char hash[32];
  mbedtls_rsa_context *rsa = rsa_for_pkcs1v15(key);
  int rc;
  if (!key->is_private) {
    set_err(err, "signing needs a private key, not a public key or certificate", 0);
    return -1;
  }
  rc = mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), msg, len, hash);
#ifdef WP_MBEDTLS3
  if (rc == 0) rc = mbedtls_rsa_rsassa_pkcs1_v15_sign(rsa, rng_callback, NULL,
                                                      MBEDTLS_MD_SHA256, 32, hash, sig);
#else
  if (rc == 0) rc = mbedtls_rsa_rsassa_pkcs1_v15_sign(rsa, rng_callback, NULL, MBEDTLS_RSA_PRIVATE,
                                                      MBEDTLS_MD_SHA256, 32, hash, sig);
#endif
  if (rc != 0) { set_err(err, "RSA signing failed", rc); return -1; }
  *siglen = mbedtls_rsa_get_len(rsa);
  return 0;
}

int wp_rsa_verify_sha256(wp_key *key, const unsigned char *msg, size_t len,
                         const unsigned char *sig, size_t siglen) {
  unsigned char hash[32];
  mbedtls_rsa_context *rsa = rsa_for_pkcs1v15(key);
  if (siglen != mbedtls_rsa_get_len(rsa)) return 0;
  if (mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), msg, len, hash) != 0) return 0;
#ifdef WP_MBEDTLS3
  return mbedtls_rsa_rsassa_pkcs1_v15_verify(rsa, MBEDTLS_MD_SHA256, 32, hash, sig) == 0;
#else
  return mbedtls_rsa_rsassa_pkcs1_v15_verify(rsa, NULL, NULL, MBEDTLS_RSA_PUBLIC,
                                             MBEDTLS_MD_SHA256, 32, hash, sig) == 0;
#endif
}

size_t wp_rsa_oaep_max_plaintext(const wp_key *key) {
  size_t k = mbedtls_rsa_get_len(mbedtls_pk_rsa(key->pk));
  return k > 2 * 20 + 2 ? k - 2 * 20 - 2 : 0;   /* k - 2*hLen - 2, hLen = SHA-1's 20 */
}

int wp_rsa_oaep_encrypt(wp_key *key, const unsigned char *in, size_t inlen,
                        unsigned char *out, size_t *outlen, char *err) {
  mbedtls_rsa_context *rsa = rsa_for_oaep(key);
  size_t max = wp_rsa_oaep_max_plaintext(key);
  int rc;
  if (inlen > max) {
    snprintf(err, WP_ERRLEN, "plaintext too long for RSA-OAEP: %zu bytes, at most %zu for a %zu-bit key",
             inlen, max, wp_key_bits(key));
    return -1;
  }
#ifdef WP_MBEDTLS3
  rc = mbedtls_rsa_rsaes_oaep_encrypt(rsa, rng_callback, NULL, NULL, 0, inlen, in, out);
#else
  rc = mbedtls_rsa_rsaes_oaep_encrypt(rsa, rng_callback, NULL, MBEDTLS_RSA_PUBLIC, NULL, 0,
                                      inlen, in, out);
#endif
  if (rc != 0) { set_err(err, "RSA-OAEP encryption failed", rc); return -1; }
  *outlen = mbedtls_rsa_get_len(rsa);
  return 0;
}

int wp_rsa_oaep_decrypt(wp_key *key, const unsigned char *in, size_t inlen,
                        unsigned char *out, size_t *outlen, char *err) {
  mbedtls_rsa_context *rsa = rsa_for_oaep(key);
  int rc;
  if (!key->is_private) {
    set_err(err, "decryption needs a private key, not a public key or certificate", 0);
    return -1;
  }
  if (inlen != mbedtls_rsa_get_len(rsa)) {
    snprintf(err, WP_ERRLEN, "ciphertext is %zu bytes, a %zu-bit key needs %zu: made for another key?",
             inlen, wp_key_bits(key), (size_t)mbedtls_rsa_get_len(rsa));
    return -1;
  }
#ifdef WP_MBEDTLS3
  rc = mbedtls_rsa_rsaes_oaep_decrypt(rsa, rng_callback, NULL, NULL, 0, outlen, in, out,
                                      WP_RSA_MAX_BYTES);
#else
  rc = mbedtls_rsa_rsaes_oaep_decrypt(rsa, rng_callback, NULL, MBEDTLS_RSA_PRIVATE, NULL, 0,
                                      outlen, in, out, WP_RSA_MAX_BYTES);
#endif
  if (rc != 0) {
    set_err(err, "RSA-OAEP decryption failed: wrong key, corrupted data or not OAEP-SHA1", 0);
    return -1;
  }
  return 0;
}

/* ---- AES ---------------------------------------------------------------- */

static int aes_key_ok(size_t keylen, char *err) {
  if (keylen == 16 || keylen == 24 || keylen == 32) return 1;
  snprintf(err, WP_ERRLEN, "AES key must be 16, 24 or 32 bytes, got %zu", keylen);
  return 0;
}

int wp_aes_gcm_encrypt(const unsigned char *key, size_t keylen,
                       const unsigned char *iv, size_t ivlen,
                       const unsigned char *aad, size_t aadlen,
                       const unsigned char *in, size_t inlen,
                       unsigned char *out, unsigned char tag[16], char *err) {
  mbedtls_gcm_context gcm;
  int rc;
  if (!aes_key_ok(keylen, err)) return -1;
  if (ivlen == 0) { set_err(err, "AES-GCM needs a non-empty nonce", 0); return -1; }
  if (ivlen > WP_GCM_IV_MAX) { set_err(err, "AES-GCM nonce is longer than 128 bytes", 0); return -1; }
  mbedtls_gcm_init(&gcm);
  rc = mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, key, (unsigned)keylen * 8);
  if (rc == 0)
    rc = mbedtls_gcm_crypt_and_tag(&gcm, MBEDTLS_GCM_ENCRYPT, inlen, iv, ivlen, aad, aadlen,
                                   in, out, 16, tag);
  mbedtls_gcm_free(&gcm);
  if (rc != 0) { set_err(err, "AES-GCM encryption failed", rc); return -1; }
  return 0;
}

int wp_aes_gcm_decrypt(const unsigned char *key, size_t keylen,
                       const unsigned char *iv, size_t ivlen,
                       const unsigned char *aad, size_t aadlen,
                       const unsigned char *in, size_t inlen,
                       const unsigned char tag[16],
                       unsigned char *out, char *err) {
  mbedtls_gcm_context gcm;
  int rc;
  if (!aes_key_ok(keylen, err)) return -1;
  if (ivlen == 0) { set_err(err, "AES-GCM needs a non-empty nonce", 0); return -1; }
  if (ivlen > WP_GCM_IV_MAX) { set_err(err, "AES-GCM nonce is longer than 128 bytes", 0); return -1; }
  mbedtls_gcm_init(&gcm);
  rc = mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, key, (unsigned)keylen * 8);
  if (rc == 0)
    rc = mbedtls_gcm_auth_decrypt(&gcm, inlen, iv, ivlen, aad, aadlen, tag, 16, in, out);
  mbedtls_gcm_free(&gcm);
  if (rc == MBEDTLS_ERR_GCM_AUTH_FAILED) {
    set_err(err, "AES-GCM authentication failed: wrong key, nonce or associated data, or tampered ciphertext", 0);
    return -1;
  }
  if (rc != 0) { set_err(err, "AES-GCM decryption failed", rc); return -1; }
  return 0;
}

int wp_aes_ecb_encrypt(const unsigned char *key, size_t keylen,
                       const unsigned char *in, size_t inlen,
                       unsigned char *out, size_t *outlen, char *err) {
  mbedtls_aes_context aes;
  unsigned char block[16];
  size_t pad = 16 - inlen % 16, off;
  int rc = 0;
  if (!aes_key_ok(keylen, err)) return -1;
  mbedtls_aes_init(&aes);
  rc = mbedtls_aes_setkey_enc(&aes, key, (unsigned)keylen * 8);
  for (off = 0; rc == 0 && off + 16 <= inlen; off += 16)
    rc = mbedtls_aes_crypt_ecb(&aes, MBEDTLS_AES_ENCRYPT, in + off, out + off);
  if (rc == 0) {   /* PKCS#7: always one more block when the input is aligned */
    memcpy(block, in + off, inlen - off);
    memset(block + (inlen - off), (int)pad, pad);
    rc = mbedtls_aes_crypt_ecb(&aes, MBEDTLS_AES_ENCRYPT, block, out + off);
  }
  wp_wipe(block, sizeof block);   /* the plaintext's last bytes, as OpenSSL's backend wipes them */
  mbedtls_aes_free(&aes);
  if (rc != 0) { set_err(err, "AES-ECB encryption failed", rc); return -1; }
  *outlen = off + 16;
  return 0;
}

int wp_aes_ecb_decrypt(const unsigned char *key, size_t keylen,
                       const unsigned char *in, size_t inlen,
                       unsigned char *out, size_t *outlen, char *err) {
  mbedtls_aes_context aes;
  size_t off, pad, i;
  int rc = 0, bad = 0;
  if (!aes_key_ok(keylen, err)) return -1;
  if (inlen == 0 || inlen % 16 != 0) {
    snprintf(err, WP_ERRLEN, "AES-ECB ciphertext must be a non-empty multiple of 16 bytes, got %zu", inlen);
    return -1;
  }
  mbedtls_aes_init(&aes);
  rc = mbedtls_aes_setkey_dec(&aes, key, (unsigned)keylen * 8);
  for (off = 0; rc == 0 && off < inlen; off += 16)
    rc = mbedtls_aes_crypt_ecb(&aes, MBEDTLS_AES_DECRYPT, in + off, out + off);
  mbedtls_aes_free(&aes);
  if (rc != 0) { set_err(err, "AES-ECB decryption failed", rc); return -1; }
  pad = out[inlen - 1];
  if (pad == 0 || pad > 16) bad = 1;
  for (i = 0; !bad && i < pad; i++) bad |= out[inlen - 1 - i] != pad;
  if (bad) { set_err(err, "AES-ECB padding is invalid: wrong key or corrupted data", 0); return -1; }
  *outlen = inlen - pad;
  return 0;
}

/* ---- digests ------------------------------------------------------------ */

static const mbedtls_md_info_t *md_info(wp_md md) {
  switch (md) {
    case WP_MD_SHA256: return mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    case WP_MD_SHA1: return mbedtls_md_info_from_type(MBEDTLS_MD_SHA1);
    case WP_MD_MD5: return mbedtls_md_info_from_type(MBEDTLS_MD_MD5);
  }
  return NULL;
}

size_t wp_md_size(wp_md md) { return mbedtls_md_get_size(md_info(md)); }

int wp_digest(wp_md md, const unsigned char *in, size_t len, unsigned char *out) {
  return mbedtls_md(md_info(md), in, len, out) == 0 ? 0 : -1;
}

struct wp_md_ctx {
  mbedtls_md_context_t md;
};

wp_md_ctx *wp_md_new(wp_md md) {
  const mbedtls_md_info_t *info = md_info(md);
  wp_md_ctx *ctx;
  if (!info) return NULL;
  ctx = (wp_md_ctx *)calloc(1, sizeof *ctx);
  if (!ctx) return NULL;
  mbedtls_md_init(&ctx->md);
  if (mbedtls_md_setup(&ctx->md, info, 0) != 0 || mbedtls_md_starts(&ctx->md) != 0) {
    wp_md_free(ctx);
    return NULL;
  }
  return ctx;
}

int wp_md_update(wp_md_ctx *ctx, const unsigned char *in, size_t len) {
  return mbedtls_md_update(&ctx->md, in, len) == 0 ? 0 : -1;
}

int wp_md_final(wp_md_ctx *ctx, unsigned char *out) {
  return mbedtls_md_finish(&ctx->md, out) == 0 ? 0 : -1;
}

void wp_md_free(wp_md_ctx *ctx) {
  if (!ctx) return;
  mbedtls_md_free(&ctx->md);
  free(ctx);
}

int wp_hmac_sha256(const unsigned char *key, size_t keylen,
                   const unsigned char *in, size_t len, unsigned char out[32]) {
  return mbedtls_md_hmac(md_info(WP_MD_SHA256), key, keylen, in, len, out) == 0 ? 0 : -1;
}
