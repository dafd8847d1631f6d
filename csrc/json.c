/*
 * The strict JSON pull parser of json.h.  The grammar is a small state
 * machine (what may come next) plus a stack of open containers; strings are
 * scanned with a byte-class table so the long base64 fields of WeChat Pay's
 * callbacks cost a table load per byte and no copy.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "json.h"

enum {
  EXPECT_VALUE,           /* the start, after ':' and after ',' in an array */
  EXPECT_VALUE_OR_END,    /* after '[' */
  EXPECT_KEY,             /* after ',' in an object */
  EXPECT_KEY_OR_END,      /* after '{' */
  EXPECT_COMMA_OR_END,    /* after a value inside a container */
  EXPECT_EOF,             /* after the top-level value */
  EXPECT_NOTHING          /* DONE or ERROR was returned */
};

/* 1 for the bytes that stop a string scan: '"', '\\' and control characters. */
static const unsigned char STOPS[256] = {
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
  0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* '"' */
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,   /* '\\' */
};

void wp_json_init(wp_json *j, const char *text, size_t len, char *buf) {
  j->start = j->p = (const unsigned char *)text;
  j->end = j->start + len;
  j->buf = buf;
  j->used = 0;
  j->depth = 0;
  j->expect = EXPECT_VALUE;
}

static wp_json_type fail(wp_json *j, char *err, const char *what) {
  snprintf(err, WP_JSON_ERRLEN, "invalid JSON: %s at offset %lu", what, (unsigned long)(j->p - j->start));
  j->expect = EXPECT_NOTHING;
  return WP_JSON_ERROR;
}

static void skip_space(wp_json *j) {
  const unsigned char *p = j->p, *end = j->end;
  while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
  j->p = p;
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static int hex4(const unsigned char *p, unsigned *out) {
  unsigned v = 0;
  int i;
  for (i = 0; i < 4; i++) {
    unsigned char c = p[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return 0;
  }
  *out = v;
  return 1;
}

static char *put_utf8(char *o, unsigned cp) {
  if (cp < 0x80) {
    *o++ = (char)cp;
  } else if (cp < 0x800) {
    *o++ = (char)(0xC0 | (cp >> 6));
    *o++ = (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *o++ = (char)(0xE0 | (cp >> 12));
    *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
    *o++ = (char)(0x80 | (cp & 0x3F));
  } else {
    *o++ = (char)(0xF0 | (cp >> 18));
    *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
    *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
    *o++ = (char)(0x80 | (cp & 0x3F));
  }
  return o;
}

/* One \uXXXX escape (a surrogate pair takes two) at p, just after the 'u';
 * writes its UTF-8 at *o.  Returns the byte after it, or NULL. */
static const unsigned char *unicode_escape(const unsigned char *p, const unsigned char *end, char **o,
                                           const char **why) {
  unsigned cp, low;
  if (end - p < 4 || !hex4(p, &cp)) { *why = "\\u needs four hex digits"; return NULL; }
  p += 4;
  if (cp >= 0xDC00 && cp <= 0xDFFF) { *why = "lone low surrogate"; return NULL; }
  if (cp >= 0xD800 && cp <= 0xDBFF) {
    if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || !hex4(p + 2, &low) || low < 0xDC00 || low > 0xDFFF) {
      *why = "lone high surrogate";
      return NULL;
    }
    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    p += 6;
  }
  *o = put_utf8(*o, cp);
  return p;
}

/* Eight bytes at a time up to the first that may stop a string ('"', '\\'
 * or a control character; bytes >= 0x80 never do), then byte by byte.
 * The tests for a zero byte and a byte below 0x20 are exact as to whether
 * one exists, which is all this needs. */
static const unsigned char *scan_plain(const unsigned char *p, const unsigned char *end) {
  const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
  while (end - p >= 8) {
    uint64_t x, quote, backslash;
    memcpy(&x, p, 8);
    quote = x ^ (ones * '"');
    backslash = x ^ (ones * '\\');
    if ((((quote - ones) & ~quote) | ((backslash - ones) & ~backslash) | ((x - ones * 0x20) & ~x)) & highs) break;
    p += 8;
  }
  while (p < end && !STOPS[*p]) p++;
  return p;
}

/* The string whose opening quote is at j->p. */
static int lex_string(wp_json *j, wp_json_token *t, char *err) {
  const unsigned char *p = j->p + 1, *end = j->end, *s = p;
  char *o;
  p = scan_plain(p, end);
  if (p < end && *p == '"') {   /* no escapes: the bytes as they are in the text */
    t->str = (const char *)s;
    t->len = (size_t)(p - s);
    j->p = p + 1;
    return 1;
  }
  o = j->buf + j->used;
  memcpy(o, s, (size_t)(p - s));
  o += p - s;
  for (;;) {
    const char *why = NULL;
    if (p >= end) { j->p = p; fail(j, err, "unterminated string"); return 0; }
    if (*p == '"') break;
    if (*p < 0x20) { j->p = p; fail(j, err, "control character in a string"); return 0; }
    if (*p != '\\') { *o++ = (char)*p++; continue; }
    if (++p >= end) { j->p = p; fail(j, err, "unterminated string"); return 0; }
    switch (*p++) {
      case '"': *o++ = '"'; break;
      case '\\': *o++ = '\\'; break;
      case '/': *o++ = '/'; break;
      case 'b': *o++ = '\b'; break;
      case 'f': *o++ = '\f'; break;
      case 'n': *o++ = '\n'; break;
      case 'r': *o++ = '\r'; break;
      case 't': *o++ = '\t'; break;
      case 'u': {
        const unsigned char *next = unicode_escape(p, end, &o, &why);
        if (!next) { j->p = p - 2; fail(j, err, why); return 0; }
        p = next;
        break;
      }
      default: j->p = p - 2; fail(j, err, "unknown escape in a string"); return 0;
    }
  }
  t->str = j->buf + j->used;
  t->len = (size_t)(o - t->str);
  j->used += t->len;
  j->p = p + 1;
  return 1;
}

/* The number starting at j->p: an INTEGER when it has neither fraction nor
 * exponent and fits in a long long, otherwise a NUMBER with its text. */
static wp_json_type lex_number(wp_json *j, wp_json_token *t, char *err) {
  const unsigned char *p = j->p, *end = j->end, *digits;
  int negative = 0, integral = 1;
  if (*p == '-') { negative = 1; p++; }
  digits = p;
  if (p < end && *p == '0') {
    p++;
  } else if (p < end && *p >= '1' && *p <= '9') {
    while (p < end && is_digit(*p)) p++;
  } else {
    j->p = p;
    return fail(j, err, "invalid number");
  }
  if (p < end && *p == '.') {
    integral = 0;
    if (++p >= end || !is_digit(*p)) { j->p = p; return fail(j, err, "invalid number"); }
    while (p < end && is_digit(*p)) p++;
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    integral = 0;
    p++;
    if (p < end && (*p == '+' || *p == '-')) p++;
    if (p >= end || !is_digit(*p)) { j->p = p; return fail(j, err, "invalid number"); }
    while (p < end && is_digit(*p)) p++;
  }
  t->str = (const char *)j->p;
  t->len = (size_t)(p - j->p);
  j->p = p;
  /* 18 digits always fit; 19 may, checked against the limit */
  if (integral && p - digits <= 19) {
    unsigned long long v = 0, limit = negative ? 9223372036854775808ULL : 9223372036854775807ULL;
    const unsigned char *d;
    for (d = digits; d < p; d++) v = v * 10 + (unsigned long long)(*d - '0');
    if (p - digits < 19 || v <= limit) {
      t->integer = negative ? (v == limit ? (-9223372036854775807LL - 1) : -(long long)v) : (long long)v;
      return WP_JSON_INTEGER;
    }
  }
  return WP_JSON_NUMBER;
}

static wp_json_type literal(wp_json *j, const char *word, size_t n, wp_json_type type, char *err) {
  if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0) return fail(j, err, "unexpected character");
  j->p += n;
  return type;
}

/* After a complete value: what may follow it. */
static void after_value(wp_json *j) {
  j->expect = j->depth == 0 ? EXPECT_EOF : EXPECT_COMMA_OR_END;
}

static wp_json_type open_container(wp_json *j, unsigned char c, char *err) {
  if (j->depth >= WP_JSON_MAX_DEPTH) return fail(j, err, "nesting too deep");
  j->stack[j->depth++] = c;
  j->p++;
  j->expect = c == '{' ? EXPECT_KEY_OR_END : EXPECT_VALUE_OR_END;
  return c == '{' ? WP_JSON_OBJECT : WP_JSON_ARRAY;
}

static wp_json_type close_container(wp_json *j) {
  j->depth--;
  j->p++;
  after_value(j);
  return WP_JSON_END;
}

static wp_json_type value(wp_json *j, wp_json_token *t, char *err) {
  wp_json_type type;
  switch (*j->p) {
    case '{': return open_container(j, '{', err);
    case '[': return open_container(j, '[', err);
    case '"':
      if (!lex_string(j, t, err)) return WP_JSON_ERROR;
      type = WP_JSON_STRING;
      break;
    case 't': type = literal(j, "true", 4, WP_JSON_TRUE, err); break;
    case 'f': type = literal(j, "false", 5, WP_JSON_FALSE, err); break;
    case 'n': type = literal(j, "null", 4, WP_JSON_NULL, err); break;
    default:
      if (*j->p != '-' && !is_digit(*j->p)) return fail(j, err, "unexpected character");
      type = lex_number(j, t, err);
      break;
  }
  if (type != WP_JSON_ERROR) after_value(j);
  return type;
}

static wp_json_type key(wp_json *j, wp_json_token *t, char *err) {
  if (*j->p != '"') return fail(j, err, "expected a member name");
  if (!lex_string(j, t, err)) return WP_JSON_ERROR;
  skip_space(j);
  if (j->p >= j->end || *j->p != ':') return fail(j, err, "expected ':'");
  j->p++;
  j->expect = EXPECT_VALUE;
  return WP_JSON_KEY;
}

wp_json_type wp_json_next(wp_json *j, wp_json_token *t, char *err) {
  t->type = WP_JSON_ERROR;
  if (j->expect == EXPECT_NOTHING) return fail(j, err, "read past the end");
  skip_space(j);
  if (j->expect == EXPECT_EOF) {
    if (j->p != j->end) return fail(j, err, "data after the value");
    j->expect = EXPECT_NOTHING;
    return t->type = WP_JSON_DONE;
  }
  if (j->p >= j->end) return fail(j, err, "unexpected end");
  switch (j->expect) {
    case EXPECT_COMMA_OR_END: {
      unsigned char open = j->stack[j->depth - 1];
      if (*j->p == (open == '{' ? '}' : ']')) return t->type = close_container(j);
      if (*j->p != ',') return fail(j, err, open == '{' ? "expected ',' or '}'" : "expected ',' or ']'");
      j->p++;
      skip_space(j);
      if (j->p >= j->end) return fail(j, err, "unexpected end");
      return t->type = open == '{' ? key(j, t, err) : value(j, t, err);
    }
    case EXPECT_KEY_OR_END:
      if (*j->p == '}') return t->type = close_container(j);
      return t->type = key(j, t, err);
    case EXPECT_VALUE_OR_END:
      if (*j->p == ']') return t->type = close_container(j);
      return t->type = value(j, t, err);
    case EXPECT_KEY:
      return t->type = key(j, t, err);
    default:
      return t->type = value(j, t, err);
  }
}
