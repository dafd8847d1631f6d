/*
 * libFuzzer harness: key parsing (wp_key_from_pem, wp_key_from_der) and the
 * RSA operations on whatever parses.  Built and run by scripts/fuzz.sh.
 *
 * Input: one selector byte, then the payload.
 *   bits 0-1  passphrase: 0 none (NULL), 1 "s3cret", 2 "" (non-NULL, empty),
 *             3 taken from the input (next byte = length % 33, then the bytes)
 *   bits 2-4  0 or 7: the payload is PEM text as it is;
 *             1-6: the payload is DER, wrapped here into PEM under one of
 *             the labels below, so the fuzzer mutates ASN.1 and not base64
 * The payload is also fed, unwrapped, to wp_key_from_der in every form.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "crypto.h"

static const char *const labels[] = {
  NULL, "PRIVATE KEY", "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY",
  "PUBLIC KEY", "RSA PUBLIC KEY", "CERTIFICATE", NULL
};

static const wp_der_form forms[] = {
  WP_DER_AUTO, WP_DER_PRIVATE_PKCS8, WP_DER_PRIVATE_PKCS1,
  WP_DER_PUBLIC_PKCS1, WP_DER_PUBLIC_SPKI
};

static void check_err(const char *err) {
  /* every failure must leave a terminated, non-empty reason */
  if (memchr(err, '\0', WP_ERRLEN) == NULL || err[0] == '\0') abort();
}

/* PEM as openssl writes it: 64 columns, one trailing newline. */
static char *wrap_pem(const char *label, const uint8_t *der, size_t len, size_t *outlen) {
  size_t b64len = WP_BASE64_ENCODED_LEN(len), cap = b64len + b64len / 64 + 2 * strlen(label) + 64;
  char *b64 = malloc(b64len + 1), *pem = malloc(cap), *p = pem;
  size_t i;
  if (!b64 || !pem) abort();
  wp_base64_encode(der, len, b64);
  p += strlen(strcpy(p, "-----BEGIN "));
  p += strlen(strcpy(p, label));
  p += strlen(strcpy(p, "-----\n"));
  for (i = 0; i < b64len; i += 64) {
    size_t n = b64len - i < 64 ? b64len - i : 64;
    memcpy(p, b64 + i, n);
    p += n;
    *p++ = '\n';
  }
  p += strlen(strcpy(p, "-----END "));
  p += strlen(strcpy(p, label));
  p += strlen(strcpy(p, "-----\n"));
  free(b64);
  *outlen = (size_t)(p - pem);
  return pem;
}

/* What a client does with a key, with exactly sized heap buffers so ASan
 * sees any write past what crypto.h promises (WP_RSA_MAX_BYTES). */
static void exercise(wp_key *key) {
  static const unsigned char msg[] = "GET\n/v3/certificates\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n";
  char err[WP_ERRLEN];
  unsigned char *sig = malloc(WP_RSA_MAX_BYTES), *ct = malloc(WP_RSA_MAX_BYTES);
  unsigned char *pt = malloc(WP_RSA_MAX_BYTES);
  size_t bits = wp_key_bits(key), siglen = 0, ctlen = 0, ptlen = 0, max;
  const wp_cert_info *cert = wp_key_cert(key);
  int can_encrypt;
  if (!sig || !ct || !pt) abort();
  if (bits == 0 || bits > 8 * WP_RSA_MAX_BYTES) abort();   /* the buffers would not hold it */
  if (cert && memchr(cert->serial, '\0', sizeof cert->serial) == NULL) abort();

  /* A signature of the right length that is almost surely wrong. */
  memset(sig, 0x5a, WP_RSA_MAX_BYTES);
  (void)wp_rsa_verify_sha256(key, msg, sizeof msg - 1, sig, (bits + 7) / 8);
  (void)wp_rsa_verify_sha256(key, msg, sizeof msg - 1, sig, 1);

  max = wp_rsa_oaep_max_plaintext(key);
  can_encrypt = wp_rsa_oaep_encrypt(key, msg, max < 20 ? max : 20, ct, &ctlen, err) == 0;
  if (!can_encrypt) check_err(err);
  else if (ctlen > WP_RSA_MAX_BYTES) abort();
  memset(pt, 0, WP_RSA_MAX_BYTES);
  if (max < WP_RSA_MAX_BYTES && wp_rsa_oaep_encrypt(key, pt, max + 1, pt, &ptlen, err) == 0)
    abort();   /* one byte too long must be refused */

  /* Private operations cost a few ms at 2048 bits under ASan: small keys only. */
  if (wp_key_is_private(key) && bits <= 1024) {
    if (wp_rsa_sign_sha256(key, msg, sizeof msg - 1, sig, &siglen, err) == 0) {
      if (siglen > WP_RSA_MAX_BYTES) abort();
      /* both backends check a private key (mbedTLS its CRT result, OpenSSL the
       * key pair when it is loaded), so a signature they return must verify */
      if (wp_rsa_verify_sha256(key, msg, sizeof msg - 1, sig, siglen) != 1) abort();
    } else {
      check_err(err);
    }
    if (can_encrypt) {
      if (wp_rsa_oaep_decrypt(key, ct, ctlen, pt, &ptlen, err) == 0) {
        if (ptlen != (max < 20 ? max : 20) || memcmp(pt, msg, ptlen) != 0) abort();
      } else {
        check_err(err);
      }
    }
  }
  free(sig); free(ct); free(pt);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[WP_ERRLEN], passbuf[33];
  const char *pass = NULL;
  size_t passlen = 0, i, pemlen;
  const char *label;
  char *pem;
  wp_key *key;
  uint8_t sel;
  int exercised;

  if (size < 1) return 0;
  sel = data[0];
  data++; size--;
  switch (sel & 3) {
    case 1: pass = "s3cret"; passlen = 6; break;
    case 2: pass = ""; passlen = 0; break;
    case 3:
      if (size < 1) return 0;
      passlen = data[0] % 33u;
      data++; size--;
      if (passlen > size) passlen = size;
      memcpy(passbuf, data, passlen);
      pass = passbuf;
      data += passlen; size -= passlen;
      break;
    default: break;
  }

  /* Exactly sized copies: a read past the input is then an ASan report. */
  label = labels[(sel >> 2) & 7];
  if (label) {
    pem = wrap_pem(label, data, size, &pemlen);
  } else {
    pem = malloc(size ? size : 1);
    if (!pem) abort();
    memcpy(pem, data, size);
    pemlen = size;
  }
  memset(err, 0, sizeof err);
  if (wp_key_from_pem(&key, pem, pemlen, pass, passlen, err) == 0) {
    if (!key) abort();
    exercise(key);
    wp_key_free(key);
  } else {
    if (key) abort();
    check_err(err);
  }
  free(pem);

  for (i = 0, exercised = 0; i < sizeof forms / sizeof forms[0]; i++) {
    unsigned char *der = malloc(size ? size : 1);
    if (!der) abort();
    memcpy(der, data, size);
    memset(err, 0, sizeof err);
    if (wp_key_from_der(&key, forms[i], der, size, err) == 0) {
      if (!key) abort();
      /* once is enough: the forms that parse give the same key */
      if (!exercised++) exercise(key);
      wp_key_free(key);
    } else {
      if (key) abort();
      check_err(err);
    }
    free(der);
  }
  return 0;
}
