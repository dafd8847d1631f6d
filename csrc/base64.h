/* Standard base64 (RFC 4648, with padding), independent of Lua and crypto. */
#ifndef WECHATPAY_BASE64_H
#define WECHATPAY_BASE64_H
#include <stddef.h>

#define WP_BASE64_ENCODED_LEN(n) ((((n) + 2) / 3) * 4)
#define WP_BASE64_DECODED_MAX(n) (((n) / 4) * 3)

/* Writes WP_BASE64_ENCODED_LEN(len) bytes (no NUL). */
void wp_base64_encode(const unsigned char *in, size_t len, char *out);
/* Strict: length a multiple of 4, padding only at the end, no whitespace.
 * Returns the decoded length, or -1 if `in` is not valid base64. */
long wp_base64_decode(const char *in, size_t len, unsigned char *out);

#endif
