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

static int sextet(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

long wp_base64_decode(const char *in, size_t len, unsigned char *out) {
  const unsigned char *s = (const unsigned char *)in;
  size_t i, pad = 0;
  long n = 0;
  if (len % 4 != 0) return -1;
  if (len >= 1 && s[len - 1] == '=') pad++;
  if (len >= 2 && s[len - 2] == '=') pad++;
  for (i = 0; i < len; i += 4) {
    int a = sextet(s[i]), b = sextet(s[i + 1]), c, d;
    int last = i + 4 == len;
    if (a < 0 || b < 0) return -1;
    c = (last && pad == 2) ? 0 : sextet(s[i + 2]);
    d = (last && pad >= 1) ? 0 : sextet(s[i + 3]);
    if (c < 0 || d < 0) return -1;
    /* the bits the padding drops must be zero: one encoding per byte string */
    if (last && pad == 2 && (b & 15) != 0) return -1;
    if (last && pad == 1 && (c & 3) != 0) return -1;
    out[n++] = (unsigned char)(a << 2 | b >> 4);
    if (!(last && pad == 2)) out[n++] = (unsigned char)((b & 15) << 4 | c >> 2);
    if (!(last && pad >= 1)) out[n++] = (unsigned char)((c & 3) << 6 | d);
  }
  return n;
}
