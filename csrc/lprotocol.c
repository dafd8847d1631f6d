/*
 * The WeChat Pay v3 signature scheme on the hot path of every call: the
 * request's string to sign and Authorization header, and the response's
 * signed message.  Building them here saves copying the body through Lua
 * string concatenation twice per call.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "wechatpay.h"
#include "base64.h"
#include "json.h"

#define NONCE_LEN 32

/* Adds `parts` joined by "\n", each followed by "\n", to the buffer. */
static void add_lines(luaL_Buffer *b, const char *const *parts, const size_t *lens, int n) {
  int i;
  for (i = 0; i < n; i++) {
    luaL_addlstring(b, parts[i], lens[i]);
    luaL_addchar(b, '\n');
  }
}

/* A byte that may stand between the quotes of the Authorization header:
 * no quote, no CR, LF or other control character. */
static int header_safe(char c) {
  unsigned char u = (unsigned char)c;
  return u >= 0x20 && u != 0x7f && u != '"';
}

/* core.authorization(private_key, mchid, serial, method, target, body [, timestamp, nonce])
 *   -> Authorization header value, timestamp, nonce
 * timestamp and nonce are made here unless given (tests pin them). */
static int l_authorization(lua_State *L) {
  wp_key *key = wp_check_key(L, 1);
  size_t lens[5], mchid_len, serial_len, siglen, i;
  const char *mchid = luaL_checklstring(L, 2, &mchid_len);
  const char *serial = luaL_checklstring(L, 3, &serial_len);
  const char *parts[5];
  char ts[24], nonce[NONCE_LEN + 1];
  unsigned char sig[WP_RSA_MAX_BYTES];
  char sig64[WP_BASE64_ENCODED_LEN(WP_RSA_MAX_BYTES)];
  char err[WP_ERRLEN];
  luaL_Buffer b;

  if (!wp_key_is_private(key))
    return luaL_argerror(L, 1, "signing needs a private key, not a public key or certificate");
  parts[0] = luaL_checklstring(L, 4, &lens[0]);
  parts[1] = luaL_checklstring(L, 5, &lens[1]);
  parts[4] = luaL_optlstring(L, 6, "", &lens[4]);
  if (lua_isnoneornil(L, 7)) {
    snprintf(ts, sizeof ts, "%lld", (long long)time(NULL));
  } else {
    snprintf(ts, sizeof ts, "%lld", (long long)luaL_checkinteger(L, 7));
  }
  if (lua_isnoneornil(L, 8)) {
    if (wp_nonce(nonce, NONCE_LEN, err) != 0) return luaL_error(L, "%s", err);
    nonce[NONCE_LEN] = '\0';
  } else {
    size_t n;
    const char *given = luaL_checklstring(L, 8, &n);
    luaL_argcheck(L, n >= 1 && n <= NONCE_LEN, 8, "nonce must be 1 to 32 characters");
    /* it goes between quotes in the header: letters and digits only, as made */
    for (i = 0; i < n; i++)
      luaL_argcheck(L, (given[i] >= '0' && given[i] <= '9') || (given[i] >= 'A' && given[i] <= 'Z') ||
                       (given[i] >= 'a' && given[i] <= 'z'), 8, "nonce must be letters and digits only");
    memcpy(nonce, given, n);
    nonce[n] = '\0';
  }
  parts[2] = ts; lens[2] = strlen(ts);
  parts[3] = nonce; lens[3] = strlen(nonce);
  /* Refuse what would break the header's quoting or its line rather than send it. */
  for (i = 0; i < mchid_len; i++)
    luaL_argcheck(L, header_safe(mchid[i]), 2, "mchid holds a quote or a control character");
  for (i = 0; i < serial_len; i++)
    luaL_argcheck(L, header_safe(serial[i]), 3, "serial holds a quote or a control character");

  luaL_buffinit(L, &b);
  add_lines(&b, parts, lens, 5);
  luaL_pushresult(&b);   /* the string to sign */
  {
    size_t msglen;
    const char *msg = lua_tolstring(L, -1, &msglen);
    if (wp_rsa_sign_sha256(key, (const unsigned char *)msg, msglen, sig, &siglen, err) != 0)
      return luaL_error(L, "%s", err);
  }
  lua_pop(L, 1);
  wp_base64_encode(sig, siglen, sig64);

  luaL_buffinit(L, &b);
  luaL_addstring(&b, "WECHATPAY2-SHA256-RSA2048 mchid=\"");
  luaL_addlstring(&b, mchid, mchid_len);
  luaL_addstring(&b, "\",nonce_str=\"");
  luaL_addstring(&b, nonce);
  luaL_addstring(&b, "\",signature=\"");
  luaL_addlstring(&b, sig64, WP_BASE64_ENCODED_LEN(siglen));
  luaL_addstring(&b, "\",timestamp=\"");
  luaL_addstring(&b, ts);
  luaL_addstring(&b, "\",serial_no=\"");
  luaL_addlstring(&b, serial, serial_len);
  luaL_addchar(&b, '"');
  luaL_pushresult(&b);
  lua_pushstring(L, ts);
  lua_pushstring(L, nonce);
  return 3;
}

/* core.verify_message(public_key, timestamp, nonce, body, signature) -> boolean
 * Verifies a response or callback: SHA256withRSA over "TIMESTAMP\nNONCE\nBODY\n". */
static int l_verify_message(lua_State *L) {
  wp_key *key = wp_check_key(L, 1);
  const char *parts[3];
  size_t lens[3], siglen_b64;
  const char *sig64;
  unsigned char sig[WP_RSA_B64_DECODED_MAX];
  long siglen;
  luaL_Buffer b;
  int ok;
  parts[0] = luaL_checklstring(L, 2, &lens[0]);
  parts[1] = luaL_checklstring(L, 3, &lens[1]);
  parts[2] = luaL_checklstring(L, 4, &lens[2]);
  sig64 = luaL_checklstring(L, 5, &siglen_b64);
  /* A WECHATPAY/SIGNTEST/ probe or anything else not base64 is just "no". */
  if (siglen_b64 > WP_BASE64_ENCODED_LEN(WP_RSA_MAX_BYTES) ||
      (siglen = wp_base64_decode(sig64, siglen_b64, sig)) <= 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  luaL_buffinit(L, &b);
  add_lines(&b, parts, lens, 3);
  luaL_pushresult(&b);
  {
    size_t msglen;
    const char *msg = lua_tolstring(L, -1, &msglen);
    ok = wp_rsa_verify_sha256(key, (const unsigned char *)msg, msglen, sig, (size_t)siglen);
  }
  lua_pushboolean(L, ok);
  return 1;
}

/* A string member of a callback's envelope: where it is in the body (or in
 * the unescape buffer), or what it was instead. */
typedef struct {
  const char *str;
  size_t len;
  wp_json_type type;   /* WP_JSON_ERROR while absent */
} member;

static const char *const EVENT_FIELDS[] = { "id", "create_time", "event_type", "resource_type", "summary", NULL };
static const char *const RESOURCE_FIELDS[] = { "algorithm", "ciphertext", "nonce", "associated_data", NULL };
enum { EVENT_ID, EVENT_CREATE_TIME, EVENT_TYPE, EVENT_RESOURCE_TYPE, EVENT_SUMMARY, EVENT_N };
enum { RES_ALGORITHM, RES_CIPHERTEXT, RES_NONCE, RES_ASSOCIATED_DATA, RES_N };

static int field_index(const char *const *names, const wp_json_token *t) {
  int i;
  for (i = 0; names[i]; i++)
    if (strlen(names[i]) == t->len && memcmp(names[i], t->str, t->len) == 0) return i;
  return -1;
}

/* Consumes the rest of a value whose first token was `type`. */
static int skip_value(wp_json *j, wp_json_token *t, wp_json_type type, char *err) {
  int depth = 0;
  for (;;) {
    if (type == WP_JSON_ERROR) return 0;
    if (type == WP_JSON_OBJECT || type == WP_JSON_ARRAY) depth++;
    else if (type == WP_JSON_END) depth--;
    if (depth == 0) return 1;
    type = wp_json_next(j, t, err);
  }
}

/* The members of an object whose '{' was just read: those named in
 * `names` are kept (the last of a repeated name wins, as in a decoder),
 * others skipped.  A member named `nested` that is an object is read by
 * `inner` into `inner_fields`. */
static int read_members(wp_json *j, const char *const *names, member *fields, const char *nested,
                        const char *const *inner_names, member *inner_fields, member *nested_seen, char *err) {
  wp_json_token t;
  for (;;) {
    wp_json_type type = wp_json_next(j, &t, err);
    int i;
    if (type == WP_JSON_END) return 1;
    if (type != WP_JSON_KEY) return 0;
    i = field_index(names, &t);
    if (i < 0 && nested && strlen(nested) == t.len && memcmp(nested, t.str, t.len) == 0) {
      type = wp_json_next(j, &t, err);
      nested_seen->type = type;
      if (type == WP_JSON_OBJECT) {
        int k;
        for (k = 0; inner_names[k]; k++) inner_fields[k].type = WP_JSON_ERROR;
        if (!read_members(j, inner_names, inner_fields, NULL, NULL, NULL, NULL, err)) return 0;
      } else if (!skip_value(j, &t, type, err)) {
        return 0;
      }
      continue;
    }
    type = wp_json_next(j, &t, err);
    if (i >= 0) {
      fields[i].type = type;
      fields[i].str = t.str;
      fields[i].len = t.len;
    }
    if (!skip_value(j, &t, type, err)) return 0;
  }
}

static int is_string(const member *m) { return m->type == WP_JSON_STRING; }

static const char *json_type_name(wp_json_type type) {
  switch (type) {
    case WP_JSON_NULL: return "null";
    case WP_JSON_TRUE: case WP_JSON_FALSE: return "boolean";
    case WP_JSON_INTEGER: case WP_JSON_NUMBER: return "number";
    case WP_JSON_STRING: return "string";
    case WP_JSON_OBJECT: return "object";
    case WP_JSON_ARRAY: return "array";
    default: return "missing";
  }
}

/* nil, kind, message, id.  An escaped id points into the scratch buffer on
 * the stack: it is copied first, while that buffer is still referenced (a
 * push may collect it), and nothing below the four results is dropped. */
static int open_failure(lua_State *L, const char *kind, const char *message, const member *id) {
  int idpos;
  if (id && is_string(id) && id->len > 0) lua_pushlstring(L, id->str, id->len);
  else lua_pushnil(L);
  idpos = lua_gettop(L);
  lua_pushnil(L);
  lua_pushstring(L, kind);
  lua_pushstring(L, message);
  lua_pushvalue(L, idpos);
  return 4;
}

/* core.open_notification(body, apiv3_key) -> event | nil, kind, message, id
 * A callback body that has been verified: its envelope read straight from
 * the bytes (the ciphertext never becomes a Lua string), the resource
 * decrypted with AEAD_AES_256_GCM and decoded.  event = { id, create_time,
 * event_type, resource_type, summary, resource, plaintext }.  kind is
 * "decrypt" when the resource does not open with the key, "malformed" for
 * anything else wrong with the body; message never quotes the body or
 * the plaintext. */
static int l_open_notification(lua_State *L) {
  size_t len, keylen;
  const char *body = luaL_checklstring(L, 1, &len);
  const char *key = luaL_checklstring(L, 2, &keylen);
  int i;
  char small[4096];   /* escaped strings are rare: most bodies never write here */
  char *buf = len <= sizeof small ? small : (char *)wp_scratch(L, len);
  char err[WP_ERRLEN], message[WP_ERRLEN + 64];
  member event[EVENT_N], resource[RES_N], resource_seen;
  const member *id = &event[EVENT_ID];
  const char *aad = "";
  size_t aadlen = 0;
  wp_json j;
  wp_json_token t;

  for (i = 0; i < EVENT_N; i++) event[i].type = WP_JSON_ERROR;
  for (i = 0; i < RES_N; i++) resource[i].type = WP_JSON_ERROR;
  resource_seen.type = WP_JSON_ERROR;
  err[0] = '\0';   /* set by the reader only when the text is not JSON */
  wp_json_init(&j, body, len, buf);
  if (wp_json_next(&j, &t, err) != WP_JSON_OBJECT ||
      !read_members(&j, EVENT_FIELDS, event, "resource", RESOURCE_FIELDS, resource, &resource_seen, err) ||
      wp_json_next(&j, &t, err) != WP_JSON_DONE) {
    snprintf(message, sizeof message, "the body (%lu bytes) verified but is not a JSON object%s%s",
             (unsigned long)len, err[0] ? ": " : "", err);
    return open_failure(L, "malformed", message, NULL);
  }
  if (!is_string(id) || id->len == 0)
    return open_failure(L, "malformed", "the body verified but has no event id", NULL);
  if (resource_seen.type != WP_JSON_OBJECT)
    return open_failure(L, "malformed", "the body verified but has no resource object", id);

  if (resource[RES_ALGORITHM].type != WP_JSON_ERROR &&
      !(is_string(&resource[RES_ALGORITHM]) && resource[RES_ALGORITHM].len == 16 &&
        memcmp(resource[RES_ALGORITHM].str, "AEAD_AES_256_GCM", 16) == 0))
    return open_failure(L, "malformed", "unsupported resource algorithm (AEAD_AES_256_GCM expected)", id);
  for (i = RES_CIPHERTEXT; i <= RES_NONCE; i++) {
    if (!is_string(&resource[i]) || resource[i].len == 0) {
      snprintf(message, sizeof message, "the resource's %s is %s", RESOURCE_FIELDS[i],
               is_string(&resource[i]) ? "empty" : json_type_name(resource[i].type));
      return open_failure(L, "malformed", message, id);
    }
  }
  if (is_string(&resource[RES_ASSOCIATED_DATA])) {
    aad = resource[RES_ASSOCIATED_DATA].str;
    aadlen = resource[RES_ASSOCIATED_DATA].len;
  } else if (resource[RES_ASSOCIATED_DATA].type != WP_JSON_ERROR &&
             resource[RES_ASSOCIATED_DATA].type != WP_JSON_NULL) {
    snprintf(message, sizeof message, "the resource's associated_data must be a string, got %s",
             json_type_name(resource[RES_ASSOCIATED_DATA].type));
    return open_failure(L, "malformed", message, id);
  }
  if (keylen != 32) {
    snprintf(message, sizeof message, "AES-256 key must be 32 bytes (the APIv3 key), got %lu", (unsigned long)keylen);
    return open_failure(L, "decrypt", message, id);
  }
  switch (wp_push_gcm_plaintext(L, key, keylen, resource[RES_NONCE].str, resource[RES_NONCE].len, aad, aadlen,
                                 resource[RES_CIPHERTEXT].str, resource[RES_CIPHERTEXT].len, err)) {
    case -1: return open_failure(L, "malformed", err, id);
    case 0: return open_failure(L, "decrypt", err, id);
    default: break;
  }
  {
    size_t plen;
    const char *plaintext = lua_tolstring(L, -1, &plen);
    if (!wp_push_json(L, plaintext, plen, err) || !lua_istable(L, -1)) {
      snprintf(message, sizeof message, "the decrypted resource (%lu bytes) is not a JSON object", (unsigned long)plen);
      return open_failure(L, "malformed", message, id);
    }
  }
  /* on the stack: [scratch,] plaintext, resource */
  lua_createtable(L, 0, 7);
  for (i = 0; i < EVENT_N; i++) {
    if (is_string(&event[i])) {
      lua_pushlstring(L, event[i].str, event[i].len);
      lua_setfield(L, -2, EVENT_FIELDS[i]);
    }
  }
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "resource");
  lua_pushvalue(L, -3);
  lua_setfield(L, -2, "plaintext");
  return 1;
}

void wp_open_protocol(lua_State *L) {
  static const luaL_Reg functions[] = {
    {"authorization", l_authorization},
    {"verify_message", l_verify_message},
    {"open_notification", l_open_notification},
    {NULL, NULL}
  };
  luaL_setfuncs(L, functions, 0);
}
