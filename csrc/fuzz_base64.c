/*
 * libFuzzer harness: wp_base64_decode / wp_base64_encode.  Built and run by
 * scripts/fuzz.sh.  Aborts when
 *   - decode writes past WP_BASE64_DECODED_MAX (ASan: exactly sized buffers),
 *   - decode accepts x but encode(decode(x)) != x (a non-canonical string,
 *     e.g. "gZ==": two inputs for one byte string),
 *   - decode(encode(x)) != x,
 *   - decode disagrees with the plain reference decoder below on what is
 *     valid or on the bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* RFC 4648 section 4, written as differently from base64.c as is sensible:
 * a lookup table, padding counted first, then a bit accumulator.  Strict as
 * section 3.5 allows: the bits the padding drops must be zero. */
static long reference_decode(const uint8_t *in, size_t len, uint8_t *out) {
  static signed char value[256];
  static int ready;
  const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t pad = 0, i, body;
  unsigned acc = 0;
  int bits = 0;
  long n = 0;
  if (!ready) {
    memset(value, -1, sizeof value);
    for (i = 0; i < 64; i++) value[(unsigned char)alphabet[i]] = (signed char)i;
    ready = 1;
  }
  if (len % 4 != 0) return -1;
  while (pad < 2 && pad < len && in[len - 1 - pad] == '=') pad++;
  body = len - pad;   /* a third '=' stays in the body and is refused there */
  for (i = 0; i < body; i++) {
    if (value[in[i]] < 0) return -1;
    acc = (acc << 6 | (unsigned)value[in[i]]) & 0xffffu;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = (uint8_t)(acc >> bits);
    }
  }
  if ((acc & ((1u << bits) - 1)) != 0) return -1;
  return n;
}

static void decode_checks(const uint8_t *data, size_t size) {
  size_t max = WP_BASE64_DECODED_MAX(size);
  unsigned char *out = malloc(max ? max : 1), *ref = malloc(max ? max : 1);
  char *again;
  long n, r;
  if (!out || !ref) abort();
  n = wp_base64_decode((const char *)data, size, out);
  r = reference_decode(data, size, ref);
  if (n < -1 || n > (long)max) abort();
  if (n != r) abort();                                    /* valid for one, not the other */
  if (n > 0 && memcmp(out, ref, (size_t)n) != 0) abort();
  if (n >= 0) {
    again = malloc(WP_BASE64_ENCODED_LEN((size_t)n) + 1);
    if (!again) abort();
    wp_base64_encode(out, (size_t)n, again);
    if (WP_BASE64_ENCODED_LEN((size_t)n) != size || memcmp(again, data, size) != 0) abort();
    free(again);
  }
  free(out);
  free(ref);
}

static void encode_checks(const uint8_t *data, size_t size) {
  size_t elen = WP_BASE64_ENCODED_LEN(size);
  char *enc = malloc(elen ? elen : 1);
  unsigned char *dec = malloc(WP_BASE64_DECODED_MAX(elen) + 1);
  long n;
  size_t i;
  if (!enc || !dec) abort();
  wp_base64_encode(data, size, enc);
  for (i = 0; i < elen; i++)
    if (enc[i] == '\0') abort();
  n = wp_base64_decode(enc, elen, dec);
  if (n != (long)size || (size > 0 && memcmp(dec, data, size) != 0)) abort();
  free(enc);
  free(dec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  decode_checks(data, size);
  encode_checks(data, size);
  return 0;
}
