/*
 * A strict JSON (RFC 8259) reader, independent of Lua: a pull parser that
 * hands out one token at a time, validating the grammar as it goes.  It
 * allocates nothing; strings without escapes point into the text, escaped
 * ones are unescaped one after another into a buffer the caller gives (all
 * of them together are never longer than the text), so every token's
 * string stays valid while the text and the buffer do.  ljson.c builds Lua values from the tokens; fuzz_json.c drives it
 * without Lua.
 *
 * Strict: one value, surrounded only by JSON whitespace; no comments, no
 * trailing commas, no NaN/Infinity/hex, no leading zeros, no control
 * characters in strings, \u escapes as UTF-8 with lone surrogates refused.
 * Raw bytes >= 0x80 pass through unchecked, as lua-cjson passes them.
 */
#ifndef WECHATPAY_JSON_H
#define WECHATPAY_JSON_H
#include <stddef.h>

/* Deeper nesting is refused (WeChat Pay's documents are a few levels). */
#define WP_JSON_MAX_DEPTH 128
#define WP_JSON_ERRLEN 96

typedef enum {
  WP_JSON_ERROR = 0,    /* err says what, and at which byte */
  WP_JSON_DONE,         /* the whole text was one valid value */
  WP_JSON_NULL,
  WP_JSON_TRUE,
  WP_JSON_FALSE,
  WP_JSON_INTEGER,      /* no fraction or exponent, fits in long long: .integer */
  WP_JSON_NUMBER,       /* any other number: .str/.len is its text */
  WP_JSON_STRING,       /* a value: .str/.len, unescaped */
  WP_JSON_KEY,          /* an object member's name: .str/.len, unescaped */
  WP_JSON_OBJECT,       /* '{' */
  WP_JSON_ARRAY,        /* '[' */
  WP_JSON_END           /* the '}' or ']' closing the innermost container */
} wp_json_type;

typedef struct {
  wp_json_type type;
  const char *str;
  size_t len;
  long long integer;
} wp_json_token;

typedef struct {
  const unsigned char *start, *p, *end;
  char *buf;                                 /* where escaped strings are unescaped */
  size_t used;                               /* bytes of buf taken */
  int depth;
  int expect;                                /* what may come next (json.c) */
  unsigned char stack[WP_JSON_MAX_DEPTH];    /* '{' or '[' per open container */
} wp_json;

/* buf: at least len bytes (unescaped strings are never longer than the text). */
void wp_json_init(wp_json *j, const char *text, size_t len, char *buf);
/* The next token; WP_JSON_DONE once after the last one, WP_JSON_ERROR with
 * err (WP_JSON_ERRLEN bytes) on the first fault.  Messages name the byte
 * offset, never the text's content. */
wp_json_type wp_json_next(wp_json *j, wp_json_token *t, char *err);

#endif
