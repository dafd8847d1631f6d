/* Key objects: RSA private keys, public keys and certificates. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wechatpay.h"

/* The most core.read_file may be asked to read: key files are a few KB. */
#define WP_READ_FILE_MAX (1 << 20)

static const char key_class_tag = 0;

static wp_lkey *check_key_box(lua_State *L, int idx) {
  return (wp_lkey *)wp_check_class(L, idx, &key_class_tag, WP_KEY_CLASS);
}

wp_key *wp_check_key(lua_State *L, int idx) {
  wp_lkey *box = check_key_box(L, idx);
  if (!box->key) luaL_argerror(L, idx, "key has been closed");
  return box->key;
}

void *wp_scratch(lua_State *L, size_t size) {
  return lua_newuserdata(L, size ? size : 1);
}

static wp_lkey *key_box(lua_State *L) {
  wp_lkey *box = (wp_lkey *)lua_newuserdata(L, sizeof *box);
  box->key = NULL;
  wp_set_class(L, &key_class_tag);
  return box;
}

static const char *find_text(const char *hay, size_t len, const char *needle, size_t n) {
  size_t i;
  if (n > len) return NULL;
  for (i = 0; i + n <= len; i++)
    if (hay[i] == needle[0] && memcmp(hay + i, needle, n) == 0) return hay + i;
  return NULL;
}

/* The first PEM block of the text, BEGIN line to END line: of several, the
 * backends would take different ones (OpenSSL the first, mbedTLS the first
 * of the kind it looks for, refusing a broken certificate after a good
 * one), so each is given the first alone.  NULL when no block is complete:
 * the whole text then goes to the backend, to say what is wrong with it. */
static const char *first_pem_block(const char *pem, size_t *len) {
  const char *from = pem, *stop = pem + *len;
  for (;;) {
    const char *begin = find_text(from, (size_t)(stop - from), "-----BEGIN ", 11), *label, *label_end, *end;
    char tail[96];
    size_t n;
    if (!begin) return NULL;
    label = begin + 11;
    label_end = find_text(label, (size_t)(stop - label), "-----", 5);
    if (!label_end || (size_t)(label_end - label) > sizeof tail - 16) return NULL;
    n = (size_t)snprintf(tail, sizeof tail, "-----END %.*s-----", (int)(label_end - label), label);
    end = find_text(label_end, (size_t)(stop - label_end), tail, n);
    if (!end) return NULL;
    end += n;
    if (end < stop && *end == '\r') end++;
    if (end < stop && *end == '\n') end++;
    /* "EC PARAMETERS" (openssl ecparam -genkey writes it first) holds no key */
    if ((size_t)(label_end - label) >= 10 && memcmp(label_end - 10, "PARAMETERS", 10) == 0) {
      from = end;
      continue;
    }
    *len = (size_t)(end - begin);
    return begin;
  }
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v'; }

/* Room for canonical_pem's output from a block of len bytes: each byte at
 * most once, a newline per 64 base64 characters, and a few line ends the
 * input may lack (after BEGIN, the headers' blank line, after END). */
#define WP_CANONICAL_PEM_MAX(len) ((len) + (len) / 64 + 16)

/* A complete PEM block (first_pem_block's) in the one form both backends
 * read alike: the BEGIN line; any RFC 1421 headers of legacy encrypted PEM
 * ("Proc-Type: 4,ENCRYPTED", "DEK-Info: ...") each on its own line, then
 * the blank line that must follow them; the base64 with every space, tab,
 * carriage return and blank line taken out, wrapped at 64; the END line.
 * OpenSSL and mbedTLS each tolerate a different subset of indented lines,
 * trailing tabs and blank lines: given this, they read the same bytes.
 * Nothing is judged here, the backend says what is wrong.  Returns the
 * length written, at most cap (the writes stop there, whatever the input). */
static size_t canonical_pem(const char *block, size_t len, char *out, size_t cap, int *headers) {
  const char *stop = block + len, *p, *end_line = NULL, *q;
  size_t n = 0, col = 0;
  int in_headers = 1, had_headers = 0;
#define PUT(c) do { if (n < cap) out[n++] = (c); } while (0)
  /* the END line: the last "-----END " (a label holds no "-----") */
  for (q = block; (q = find_text(q, (size_t)(stop - q), "-----END ", 9)) != NULL; q++) end_line = q;
  p = find_text(block + 11, len - 11, "-----", 5);
  if (!end_line || !p || p + 5 > end_line) return 0;
  for (q = block; q < p + 5; q++) PUT(*q);   /* "-----BEGIN label-----" */
  PUT('\n');
  p += 5;
  while (p < end_line) {
    const char *eol = p, *a, *b;
    while (eol < end_line && *eol != '\n') eol++;
    for (a = p; a < eol && is_space(*a); a++) {}
    for (b = eol; b > a && is_space(b[-1]); b--) {}
    if (a < b && in_headers && memchr(a, ':', (size_t)(b - a))) {
      /* base64 holds no ':', a header line always one */
      for (; a < b; a++) PUT(*a);
      PUT('\n');
      had_headers = 1;
    } else if (a < b) {
      if (in_headers && had_headers) PUT('\n');
      in_headers = 0;
      for (; a < b; a++) {
        if (is_space(*a)) continue;
        PUT(*a);
        if (++col == 64) { PUT('\n'); col = 0; }
      }
    }
    p = eol < end_line ? eol + 1 : eol;
  }
  if (in_headers && had_headers) PUT('\n');
  if (col) PUT('\n');
  for (q = end_line; q < stop && *q != '\r' && *q != '\n'; q++) PUT(*q);
  PUT('\n');
  *headers = had_headers;
#undef PUT
  return n;
}

/* How many bytes follow the DER structure that starts der: 0 when none, or
 * when der does not start with a SEQUENCE of definite length that fits
 * (the backend then says what is wrong).  OpenSSL's decoders stop at the
 * structure's end and take the rest for something else; mbedTLS refuses
 * trailing bytes after a public key, but not after a private key or a
 * certificate.  Both must refuse them alike. */
static size_t der_trailing(const unsigned char *der, size_t len) {
  size_t hdr = 2, body, i;
  if (len < 2 || der[0] != 0x30) return 0;
  if (der[1] < 0x80) {
    body = der[1];
  } else {
    size_t k = der[1] & 0x7f;
    if (k == 0 || k > 4 || len < 2 + k) return 0;
    for (body = 0, i = 0; i < k; i++) body = (body << 8) | der[2 + i];
    hdr += k;
  }
  return body <= len - hdr && hdr + body < len ? len - hdr - body : 0;
}

/* The DER inside a canonical PEM block (its base64 lines, 64 characters
 * each, which wp_base64_decode takes one by one) into der; -1 when it is
 * not base64, for the backend to say. */
static long canonical_pem_der(const char *canon, size_t len, unsigned char *der) {
  const char *p = memchr(canon, '\n', len), *stop = canon + len;
  long total = 0;
  if (!p) return -1;
  for (p++; p < stop && *p != '-'; ) {
    const char *eol = memchr(p, '\n', (size_t)(stop - p));
    long n;
    if (!eol) return -1;
    if ((n = wp_base64_decode(p, (size_t)(eol - p), der + total)) < 0) return -1;
    total += n;
    p = eol + 1;
  }
  return total;
}

/* core.key_from_pem(pem [, passphrase]) -> key | nil, err */
static int l_key_from_pem(lua_State *L) {
  size_t len, passlen = 0;
  const char *pem = luaL_checklstring(L, 1, &len);
  const char *pass = luaL_optlstring(L, 2, NULL, &passlen);
  const char *block;
  char err[WP_ERRLEN], *canon = NULL;
  unsigned char *der = NULL;
  size_t blocklen = len, canonlen = 0, scratchlen = 0, trailing = 0;
  long derlen = -1;
  wp_lkey *box;
  int rc, headers = 0;
  /* made before any key text is written into it, and wiped before anything
   * that could raise: a Lua error never leaves key text in it */
  if ((block = first_pem_block(pem, &blocklen)) != NULL) {
    scratchlen = WP_CANONICAL_PEM_MAX(blocklen) + WP_BASE64_DECODED_MAX(blocklen) + 3;
    canon = (char *)wp_scratch(L, scratchlen);
    der = (unsigned char *)canon + WP_CANONICAL_PEM_MAX(blocklen);
  } else {
    block = pem;
  }
  box = key_box(L);
  if (canon && (canonlen = canonical_pem(block, blocklen, canon, WP_CANONICAL_PEM_MAX(blocklen), &headers)) > 0) {
    block = canon;
    blocklen = canonlen;
    /* legacy encryption's headers: the base64 holds ciphertext, not DER */
    if (!headers && (derlen = canonical_pem_der(canon, canonlen, der)) > 0)
      trailing = der_trailing(der, (size_t)derlen);
  }
  /* OpenSSL's passphrase callback reads at most 1024 bytes, mbedTLS any:
   * for a key that asks for one, both refuse a longer one alike */
  if (trailing) {
    rc = -1;
    snprintf(err, sizeof err, "trailing data after the DER structure in the PEM block (%zu bytes)", trailing);
  } else if (pass && passlen > WP_PASSPHRASE_MAX && find_text(block, blocklen, "ENCRYPTED", 9)) {
    rc = -1;
    snprintf(err, sizeof err, "%s", "the passphrase is longer than 1024 bytes");
  } else {
    rc = wp_key_from_pem(&box->key, block, blocklen, pass, passlen, err);
  }
  if (canon) wp_wipe(canon, scratchlen);   /* the text and what was decoded of it */
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  return 1;
}

/* core.read_file(path, max) -> at most max bytes | nil, reason
 * Opened without blocking, so a FIFO or a terminal cannot stall the caller; a
 * directory, FIFO or socket is refused before anything is read.  The reason
 * is strerror or "a directory" / "a FIFO" / "a socket", never file content.
 * The buffer is GC-owned scratch, allocated before the descriptor is opened,
 * so no Lua error can leak the descriptor; it is wiped once copied. */
static int l_read_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer max = luaL_checkinteger(L, 2);
  luaL_argcheck(L, max >= 0 && max <= WP_READ_FILE_MAX, 2, "out of range");
  char *buf = (char *)wp_scratch(L, (size_t)max);
  const char *reason = NULL;
  size_t got = 0;
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) {
    reason = strerror(errno);
  } else {
    struct stat st;
    if (fstat(fd, &st) != 0) reason = strerror(errno);
    else if (S_ISDIR(st.st_mode)) reason = "a directory";
    else if (S_ISFIFO(st.st_mode)) reason = "a FIFO";
    else if (S_ISSOCK(st.st_mode)) reason = "a socket";
    while (!reason && got < (size_t)max) {
      ssize_t n = read(fd, buf + got, (size_t)max - got);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) reason = strerror(errno);
      if (n <= 0) break;
      got += (size_t)n;
    }
    close(fd);
  }
  if (reason) {
    memset(buf, 0, got);
    lua_pushnil(L);
    lua_pushstring(L, reason);
    return 2;
  }
  lua_pushlstring(L, buf, got);
  memset(buf, 0, got);
  return 1;
}

/* core.key_from_der(der, form) -> key | nil, err
 * form: "auto", "private.pkcs8", "private.pkcs1", "public.pkcs1", "public.spki" */
static int l_key_from_der(lua_State *L) {
  static const char *const names[] = {
    "auto", "private.pkcs8", "private.pkcs1", "public.pkcs1", "public.spki", NULL
  };
  static const wp_der_form forms[] = {
    WP_DER_AUTO, WP_DER_PRIVATE_PKCS8, WP_DER_PRIVATE_PKCS1, WP_DER_PUBLIC_PKCS1, WP_DER_PUBLIC_SPKI
  };
  size_t len;
  const char *der = luaL_checklstring(L, 1, &len);
  wp_der_form form = forms[luaL_checkoption(L, 2, "auto", names)];
  char err[WP_ERRLEN];
  size_t trailing = der_trailing((const unsigned char *)der, len);
  wp_lkey *box;
  if (trailing) {
    lua_pushnil(L);
    lua_pushfstring(L, "trailing data after the DER structure (%d bytes)", (int)trailing);
    return 2;
  }
  box = key_box(L);
  if (wp_key_from_der(&box->key, form, (const unsigned char *)der, len, err) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  return 1;
}

/* key:kind() -> "private" | "public" */
static int l_key_kind(lua_State *L) {
  lua_pushstring(L, wp_key_is_private(wp_check_key(L, 1)) ? "private" : "public");
  return 1;
}

/* key:bits() -> integer */
static int l_key_bits(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)wp_key_bits(wp_check_key(L, 1)));
  return 1;
}

/* key:certificate() -> { serial = "HEX", not_before = t, not_after = t } | nil */
static int l_key_certificate(lua_State *L) {
  const wp_cert_info *cert = wp_key_cert(wp_check_key(L, 1));
  if (!cert) { lua_pushnil(L); return 1; }
  lua_createtable(L, 0, 3);
  lua_pushstring(L, cert->serial);
  lua_setfield(L, -2, "serial");
  lua_pushnumber(L, (lua_Number)cert->not_before);
  lua_setfield(L, -2, "not_before");
  lua_pushnumber(L, (lua_Number)cert->not_after);
  lua_setfield(L, -2, "not_after");
  return 1;
}

/* __gc and __close: idempotent, the key material is zeroized on free. */
static int l_key_close(lua_State *L) {
  wp_lkey *box = check_key_box(L, 1);
  wp_key_free(box->key);
  box->key = NULL;
  return 0;
}

/* Says what the key is and never anything of its material. */
static int l_key_tostring(lua_State *L) {
  wp_lkey *box = check_key_box(L, 1);
  if (!box->key) {
    lua_pushstring(L, "wechatpay.key (closed)");
  } else if (wp_key_cert(box->key)) {
    lua_pushfstring(L, "wechatpay.key (certificate %s, RSA-%d)", wp_key_cert(box->key)->serial,
                    (int)wp_key_bits(box->key));
  } else {
    lua_pushfstring(L, "wechatpay.key (%s RSA-%d)", wp_key_is_private(box->key) ? "private" : "public",
                    (int)wp_key_bits(box->key));
  }
  return 1;
}

void wp_open_keys(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"kind", l_key_kind},
    {"bits", l_key_bits},
    {"certificate", l_key_certificate},
    {"close", l_key_close},
    {NULL, NULL}
  };
  static const luaL_Reg metamethods[] = {
    {"__gc", l_key_close},
    {"__close", l_key_close},
    {"__tostring", l_key_tostring},
    {NULL, NULL}
  };
  static const luaL_Reg functions[] = {
    {"key_from_pem", l_key_from_pem},
    {"key_from_der", l_key_from_der},
    {"read_file", l_read_file},
    {NULL, NULL}
  };
  wp_new_class(L, &key_class_tag, WP_KEY_CLASS, metamethods, methods);
  luaL_setfuncs(L, functions, 0);
}
