/*
 * libFuzzer harness: the JSON reader (json.c).  Built and run by
 * scripts/fuzz.sh.
 *
 * Any input must end in DONE or ERROR within len + 2 tokens, with every
 * string inside the text or the unescape buffer (both exactly sized heap
 * blocks, so ASan sees any overrun), and nothing but ERROR after the end.
 * A valid input is written back as JSON from its tokens and read again:
 * the second reading must give the same tokens.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
  char *p;
  size_t len, cap;
} out_buf;

static void put(out_buf *o, const char *s, size_t n) {
  if (n == 0) return;
  if (o->len + n > o->cap) {
    o->cap = (o->len + n) * 2 + 16;
    o->p = realloc(o->p, o->cap);
    if (!o->p) abort();
  }
  memcpy(o->p + o->len, s, n);
  o->len += n;
}

static void put_string(out_buf *o, const char *s, size_t n) {
  size_t i;
  put(o, "\"", 1);
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    char esc[8];
    if (c == '"' || c == '\\') {
      esc[0] = '\\'; esc[1] = (char)c;
      put(o, esc, 2);
    } else if (c < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", c);
      put(o, esc, 6);
    } else {
      put(o, (const char *)&s[i], 1);
    }
  }
  put(o, "\"", 1);
}

/* Reads text to the end; writes it back as JSON into `back` when given.
 * Returns the number of tokens when valid, -1 otherwise. */
static long read_all(const char *text, size_t len, out_buf *back, wp_json_token *tokens, size_t max_tokens,
                     out_buf *strings) {
  char *buf = malloc(len ? len : 1), err[WP_JSON_ERRLEN];
  wp_json j;
  wp_json_token t;
  size_t n = 0;
  int first_in_container = 1;
  if (!buf) abort();
  wp_json_init(&j, text, len, buf);
  for (;;) {
    wp_json_type type = wp_json_next(&j, &t, err);
    if (type == WP_JSON_ERROR) {
      if (memchr(err, '\0', WP_JSON_ERRLEN) == NULL || err[0] == '\0') abort();
      if (wp_json_next(&j, &t, err) != WP_JSON_ERROR) abort();
      free(buf);
      return -1;
    }
    if (type == WP_JSON_DONE) {
      if (wp_json_next(&j, &t, err) != WP_JSON_ERROR) abort();
      free(buf);
      return (long)n;
    }
    if (++n > len + 2) abort();   /* every token takes at least one byte */
    if (type == WP_JSON_STRING || type == WP_JSON_KEY || type == WP_JSON_NUMBER) {
      int in_text = t.str >= text && t.str + t.len <= text + len;
      int in_buf = t.str >= buf && t.str + t.len <= buf + len;
      if (!in_text && !in_buf) abort();
    }
    if (tokens && n <= max_tokens) {
      tokens[n - 1] = t;
      if (type == WP_JSON_STRING || type == WP_JSON_KEY || type == WP_JSON_NUMBER) {
        /* keep the bytes: the buffer is freed before the comparison */
        tokens[n - 1].str = (const char *)(uintptr_t)strings->len;
        put(strings, t.str, t.len);
      }
    }
    if (!back) continue;
    if (type == WP_JSON_END) {
      put(back, j.stack[j.depth] == '{' ? "}" : "]", 1);
      first_in_container = 0;
      continue;
    }
    {
      /* a key, or a value in an array (or at the top), follows a comma
       * unless it is the first of its container; a member's value never */
      int parent = (type == WP_JSON_OBJECT || type == WP_JSON_ARRAY) ? j.depth - 1 : j.depth;
      if ((type == WP_JSON_KEY || parent == 0 || j.stack[parent - 1] == '[') && !first_in_container)
        put(back, ",", 1);
    }
    first_in_container = 0;
    if (type == WP_JSON_OBJECT || type == WP_JSON_ARRAY) {
      put(back, type == WP_JSON_OBJECT ? "{" : "[", 1);
      first_in_container = 1;
      continue;
    }
    switch (type) {
      case WP_JSON_KEY: put_string(back, t.str, t.len); put(back, ":", 1); first_in_container = 1; break;
      case WP_JSON_STRING: put_string(back, t.str, t.len); break;
      case WP_JSON_NUMBER: put(back, t.str, t.len); break;
      case WP_JSON_INTEGER: {
        char num[32];
        int k = snprintf(num, sizeof num, "%lld", t.integer);
        put(back, num, (size_t)k);
        break;
      }
      case WP_JSON_NULL: put(back, "null", 4); break;
      case WP_JSON_TRUE: put(back, "true", 4); break;
      case WP_JSON_FALSE: put(back, "false", 5); break;
      default: abort();
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size ? size : 1);
  out_buf back = { NULL, 0, 0 }, s1 = { NULL, 0, 0 }, s2 = { NULL, 0, 0 };
  wp_json_token *t1, *t2;
  long n1, n2, i;
  if (!text) abort();
  memcpy(text, data, size);
  t1 = calloc(size + 2, sizeof *t1);
  t2 = calloc(size + 2, sizeof *t2);
  if (!t1 || !t2) abort();
  n1 = read_all(text, size, &back, t1, size + 2, &s1);
  if (n1 >= 0) {
    n2 = read_all(back.p ? back.p : "", back.len, NULL, t2, size + 2, &s2);
    if (n2 != n1) abort();
    for (i = 0; i < n1; i++) {
      if (t1[i].type != t2[i].type) abort();
      if (t1[i].type == WP_JSON_INTEGER && t1[i].integer != t2[i].integer) abort();
      if (t1[i].type == WP_JSON_STRING || t1[i].type == WP_JSON_KEY || t1[i].type == WP_JSON_NUMBER) {
        if (t1[i].len != t2[i].len ||
            (t1[i].len && memcmp(s1.p + (uintptr_t)t1[i].str, s2.p + (uintptr_t)t2[i].str, t1[i].len) != 0))
          abort();
      }
    }
  }
  free(text);
  free(t1);
  free(t2);
  free(back.p);
  free(s1.p);
  free(s2.p);
  return 0;
}
