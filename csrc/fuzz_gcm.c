/*
 * libFuzzer harness: AES-GCM and AES-ECB (wp_aes_*).  Built and run by
 * scripts/fuzz.sh.
 *
 * Input: [key selector][iv length][aad length] key iv aad data
 *   key selector % 4: 16, 24 or 32 bytes; 3: (selector >> 2) % 40 bytes,
 *   which is mostly an invalid length.  iv length % 64 (0 is invalid),
 *   aad length as it is.  Missing bytes are zero.
 * Decrypting arbitrary data must fail cleanly or succeed; encrypting and
 * decrypting must round-trip; a flipped tag bit must be refused.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_err(const char *err) {
  if (memchr(err, '\0', WP_ERRLEN) == NULL || err[0] == '\0') abort();
}

/* An exactly sized heap copy of the next n input bytes (zero when short). */
static unsigned char *take(const uint8_t **data, size_t *size, size_t n) {
  unsigned char *p = calloc(n ? n : 1, 1);
  size_t have = n < *size ? n : *size;
  if (!p) abort();
  memcpy(p, *data, have);
  *data += have; *size -= have;
  return p;
}

static int key_ok(size_t keylen) { return keylen == 16 || keylen == 24 || keylen == 32; }

static void gcm(const unsigned char *key, size_t keylen, const unsigned char *iv, size_t ivlen,
                const unsigned char *aad, size_t aadlen, const unsigned char *in, size_t inlen) {
  char err[WP_ERRLEN];
  int valid = key_ok(keylen) && ivlen > 0;
  unsigned char tag[16], *out = malloc(inlen ? inlen : 1), *back = malloc(inlen ? inlen : 1);
  size_t ctlen = inlen >= 16 ? inlen - 16 : 0;
  int rc;
  if (!out || !back) abort();

  /* Arbitrary ciphertext: the last 16 bytes (zero-padded) are the tag. */
  memset(tag, 0, sizeof tag);
  memcpy(tag, in + ctlen, inlen - ctlen);
  memset(err, 0, sizeof err);
  rc = wp_aes_gcm_decrypt(key, keylen, iv, ivlen, aad, aadlen, in, ctlen, tag, out, err);
  if (rc != 0) check_err(err);
  if (rc == 0 && !valid) abort();

  /* Round trip over the whole input. */
  memset(err, 0, sizeof err);
  rc = wp_aes_gcm_encrypt(key, keylen, iv, ivlen, aad, aadlen, in, inlen, out, tag, err);
  if (rc != 0) {
    check_err(err);
    if (valid) abort();
  } else {
    if (!valid) abort();
    if (wp_aes_gcm_decrypt(key, keylen, iv, ivlen, aad, aadlen, out, inlen, tag, back, err) != 0)
      abort();
    if (inlen > 0 && memcmp(back, in, inlen) != 0) abort();
    tag[inlen % 16] ^= (unsigned char)(1u << (inlen % 8));
    memset(err, 0, sizeof err);
    if (wp_aes_gcm_decrypt(key, keylen, iv, ivlen, aad, aadlen, out, inlen, tag, back, err) == 0)
      abort();
    check_err(err);
  }
  free(out);
  free(back);
}

static void ecb(const unsigned char *key, size_t keylen, const unsigned char *in, size_t inlen) {
  char err[WP_ERRLEN];
  unsigned char *out = malloc(inlen ? inlen : 1), *enc = malloc(inlen + 16), *back = malloc(inlen + 16);
  size_t outlen = 0, enclen = 0, backlen = 0;
  int rc;
  if (!out || !enc || !back) abort();

  memset(err, 0, sizeof err);
  rc = wp_aes_ecb_decrypt(key, keylen, in, inlen, out, &outlen, err);
  if (rc != 0) check_err(err);
  else if (!key_ok(keylen) || inlen == 0 || inlen % 16 != 0 || outlen > inlen - 1) abort();

  memset(err, 0, sizeof err);
  rc = wp_aes_ecb_encrypt(key, keylen, in, inlen, enc, &enclen, err);
  if (rc != 0) {
    check_err(err);
    if (key_ok(keylen)) abort();
  } else {
    if (!key_ok(keylen) || enclen != (inlen / 16 + 1) * 16) abort();
    if (wp_aes_ecb_decrypt(key, keylen, enc, enclen, back, &backlen, err) != 0) abort();
    if (backlen != inlen || (inlen > 0 && memcmp(back, in, inlen) != 0)) abort();
  }
  free(out);
  free(enc);
  free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const size_t keylens[] = { 16, 24, 32 };
  size_t keylen, ivlen, aadlen;
  unsigned char *key, *iv, *aad, *in;
  size_t inlen;
  if (size < 3) return 0;
  keylen = data[0] % 4 < 3 ? keylens[data[0] % 4] : (size_t)(data[0] >> 2) % 40;
  ivlen = data[1] % 64;
  aadlen = data[2];
  data += 3; size -= 3;
  key = take(&data, &size, keylen);
  iv = take(&data, &size, ivlen);
  aad = take(&data, &size, aadlen);
  inlen = size;
  in = take(&data, &size, inlen);

  gcm(key, keylen, iv, ivlen, aad, aadlen, in, inlen);
  ecb(key, keylen, in, inlen);

  free(key); free(iv); free(aad); free(in);
  return 0;
}
