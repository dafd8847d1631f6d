#include "base64.h"

static const char alphabet[] =
  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void wp_base64_encode(const unsigned char *in, size_t len, char *out) {
  size_t i = 0;
  for (; i + 3 <= len; i += 3) {
    unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
    *out++ = alphabet[v >> 18];
    *out++ = alphabet[(v >> 12) & 63];
    *out++ = alphabet[(v >> 6) & 63];
    *out++ = alphabet[v & 63];
  }
  if (len - i == 1) {
    unsigned v = (unsigned)in[i] << 16;
    *out++ = alphabet[v >> 18];
    *out++ = alphabet[(v >> 12) & 63];
    *out++ = '=';
    *out++ = '=';
  } else if (len - i == 2) {
    unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
    *out++ = alphabet[v >> 18];
    *out++ = alphabet[(v >> 12) & 63];
    *out++ = alphabet[(v >> 6) & 63];
    *out++ = '=';
  }
}

/* The value of each base64 character, 64 for any other byte: one load per
 * character, and one test per four (callback ciphertexts run to kilobytes). */
static const unsigned char sextets[256] = {
  64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
  64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
  64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 62, 64, 64, 64, 63,
  52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 64, 64, 64, 64, 64, 64,
  64,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
  15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 64, 64, 64, 64, 64,
  64, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
  41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 64, 64, 64, 64, 64,
  64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
  64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
  64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
  64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
  64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
  64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
  64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
  64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
};

long wp_base64_decode(const char *in, size_t len, unsigned char *out) {
  const unsigned char *s = (const unsigned char *)in;
  size_t i, pad = 0;
  long n = 0;
  unsigned a, b, c, d;
  if (len % 4 != 0) return -1;
  if (len == 0) return 0;
  if (s[len - 1] == '=') pad++;
  if (s[len - 2] == '=') pad++;
  for (i = 0; i + 4 < len; i += 4) {   /* every quad but the last: no padding */
    a = sextets[s[i]]; b = sextets[s[i + 1]]; c = sextets[s[i + 2]]; d = sextets[s[i + 3]];
    if ((a | b | c | d) & 64) return -1;
    out[n++] = (unsigned char)(a << 2 | b >> 4);
    out[n++] = (unsigned char)((b & 15) << 4 | c >> 2);
    out[n++] = (unsigned char)((c & 3) << 6 | d);
  }
  a = sextets[s[i]]; b = sextets[s[i + 1]];
  c = pad == 2 ? 0 : sextets[s[i + 2]];
  d = pad >= 1 ? 0 : sextets[s[i + 3]];
  if ((a | b | c | d) & 64) return -1;
  /* the bits the padding drops must be zero: one encoding per byte string */
  if (pad == 2 && (b & 15) != 0) return -1;
  if (pad == 1 && (c & 3) != 0) return -1;
  out[n++] = (unsigned char)(a << 2 | b >> 4);
  if (pad < 2) out[n++] = (unsigned char)((b & 15) << 4 | c >> 2);
  if (pad < 1) out[n++] = (unsigned char)((c & 3) << 6 | d);
  return n;
}
