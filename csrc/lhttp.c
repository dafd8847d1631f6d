/*
 * The libcurl transport: one curl multi handle per session drives every
 * transfer, so pooled connections are shared by synchronous and
 * asynchronous calls alike.  Curl callbacks only append to C buffers; Lua
 * is touched only between curl calls, so no Lua error can longjmp through
 * libcurl's frames.
 *
 *   local s = core.http_session{ cafile =, ca_pem =, capath =, proxy =, resolve = { "host:port:addr", ... },
 *                                max_connections =, idle_timeout =, max_body =,
 *                                client_cert =, client_key =, client_key_type = }
 *   local id = s:submit{ method =, url =, headers = { "Name: value", ... }, body =,
 *                        timeout =, connect_timeout =,   -- seconds, at least 0.001
 *                        client_cert = true,   -- present the session's client certificate (mutual TLS)
 *                        stream = false,        -- hand a 2xx body to Lua in pieces (perform)
 *                        replay = false }       -- true: it may be sent again after reaching the server
 *   local done = s:perform(wait_seconds)   -- list of finished transfers, each either
 *     { id =, status =, headers = { lower_name = value }, body = }            or
 *     { id =, error =, message =, sent =, retry =, curl_code = }
 *   and, for streamed transfers still running, what arrived since the last perform:
 *     { id =, status =, chunk = }
 *
 * Streaming (stream = true): a 2xx body is not kept whole.  The write
 * callback buffers up to WP_STREAM_CHUNK bytes and then pauses the transfer
 * (CURL_WRITEFUNC_PAUSE); perform() hands the buffered bytes to Lua as a
 * chunk entry and resumes it, so memory stays flat whatever the size.  The
 * finished entry's body holds the last bytes.  A non-2xx answer is read
 * whole, as WP_STREAM_ERROR_BODY bytes at most (WeChat Pay's JSON error).
 *   s:cancel(id); s:pending(); s:close()
 *
 * A failure's fields:
 *   error    "timeout" or "network"
 *   message  what went wrong, for people
 *   sent     bytes of the request this process handed to the connection
 *   retry    "safe": nothing of the request reached the server (DNS, refused,
 *              connect timeout, TLS handshake), any request may be sent again;
 *              or a request submitted with replay = true met a reused
 *              connection that closed unanswered (what curl would resend);
 *            "idempotent": the server may have seen it (timeout or reset after
 *              sending, a transfer abandoned by fork), only a request whose
 *              replay cannot duplicate may be sent again;
 *            false: sending again cannot help (certificate not trusted, bad
 *              URL, unsupported protocol, body over max_body, out of memory)
 *   curl_code  libcurl's code, for diagnostics only (absent when curl had none)
 *
 * Fork: a session remembers the process that made it.  In a fork child it
 * abandons everything it inherited (connections, handles, TLS state: they
 * are the parent's) and starts afresh; transfers in flight at the fork are
 * reported as failures.  Nothing inherited is cleaned up by the child, as
 * curl's cleanup would shut down TLS on the parent's connections.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <curl/curl.h>

#include "wechatpay.h"

#define WP_SESSION_CLASS "wechatpay.http_session"
static const char session_class_tag = 0;
#define WP_MAX_BODY_DEFAULT (64L * 1024 * 1024)
#define WP_MAX_BODY_LIMIT 1073741824.0      /* 1 GiB: bodies live in memory */
#define WP_MAX_MS 2147483647.0              /* curl_multi_poll takes an int */
#define WP_MAX_IDLE 86400.0
#define WP_MAX_CONNECTIONS 10000.0
#define WP_STREAM_CHUNK (256 * 1024)        /* buffered before a streamed transfer pauses */
#define WP_STREAM_ERROR_BODY (64 * 1024)    /* a streamed transfer's non-2xx body */

typedef struct {
  char *data;
  size_t len, cap;
} buffer;

typedef struct transfer {
  CURL *easy;
  struct curl_slist *headers;
  buffer body, head;
  lua_Integer id;
  size_t max_body;
  int active;       /* added to the multi handle */
  int finished;     /* waiting to be reported by perform() */
  int too_large;
  int head_ended;   /* the last header line was the blank one closing a block */
  int body_seen;    /* body bytes came: header lines after them are trailers */
  int inherited;    /* made before a fork: the easy handle is the parent's */
  int stream;       /* submitted with stream = true */
  int streaming;    /* its answer is a 2xx: the body goes out in chunks */
  int paused;       /* the write callback paused it: perform() resumes it */
  int dropping;     /* being released: the write callback refuses what comes */
  int forked;       /* was in flight at the fork: reported as a failure */
  int replayable;   /* submitted with replay = true: its caller may send it again */
  int sends;        /* times curl was about to send it (on_prereq) */
  int replay_refused;   /* curl wanted to send it again, and was stopped */
  long sent_at_fork;
  CURLcode result;
  char errbuf[CURL_ERROR_SIZE];
  struct transfer *next;   /* in the session's list */
} transfer;

typedef struct {
  curl_socket_t *fds;
  size_t len, cap;
} socket_list;

typedef struct {
  CURLM *multi;
  transfer *transfers;     /* every transfer, active, finished or idle */
  lua_Integer next_id;
  char *cafile, *capath, *proxy;
  char *ca_pem;            /* CA bundle bytes read at wechatpay.new(): workers need not read the file */
  size_t ca_pem_len;
  struct curl_slist *resolve;   /* CURLOPT_RESOLVE pins: "host:port:address" */
  long idle_timeout;       /* seconds a pooled connection may stay idle */
  long max_connections;    /* per host; 0: no limit */
  size_t max_body;
  pid_t pid;               /* the process that owns multi and the easy handles */
  socket_list sockets;     /* open connections' sockets, to drop in a fork child */
  /* mutual TLS (APIv2 security = true): the merchant certificate and key,
   * held in memory so nothing is read again per call.  Easy handles point
   * at these bytes (CURL_BLOB_NOCOPY) rather than keep copies; the key is
   * wiped when freed, after every easy handle of this process is cleaned
   * up.  An encrypted key arrives decrypted, as a key object made DER
   * here: curl is never given a passphrase (CURLOPT_KEYPASSWD would keep
   * a copy it frees unwiped).  The TLS library holds the parsed key per
   * connection. */
  char *client_cert, *client_key;
  size_t client_cert_len, client_key_len;
  int client_key_der;      /* the key's bytes are DER, not PEM */
} session;

/* What fork children inherited and must neither use nor clean up.  Kept
 * reachable for the life of the process, so memcheck sees no leak. */
typedef struct orphan_multi {
  CURLM *multi;
  struct orphan_multi *next;
} orphan_multi;
static orphan_multi *orphan_multis;
static transfer *orphan_transfers;

/* ---- buffers (no Lua here: called from curl) ---------------------------- */

static int buffer_append(buffer *b, const char *data, size_t len) {
  if (b->len + len + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    char *p;
    while (cap < b->len + len + 1) cap *= 2;
    p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
  }
  memcpy(b->data + b->len, data, len);
  b->len += len;
  b->data[b->len] = '\0';
  return 0;
}

static void buffer_free(buffer *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

static size_t on_body(char *data, size_t size, size_t n, void *userdata) {
  transfer *t = (transfer *)userdata;
  size_t len = size * n;
  if (len > 0) t->body_seen = 1;
  if (t->stream && !t->streaming) {
    long status = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    t->streaming = status >= 200 && status < 300;
  }
  if (t->dropping) return 0;   /* a write error: the transfer is being removed */
  if (t->streaming) {
    /* curl delivers these same bytes again once resumed: keep none now */
    if (t->body.len >= WP_STREAM_CHUNK) { t->paused = 1; return CURL_WRITEFUNC_PAUSE; }
    return buffer_append(&t->body, data, len) == 0 ? len : 0;
  }
  if (t->body.len + len > t->max_body) { t->too_large = 1; return 0; }
  return buffer_append(&t->body, data, len) == 0 ? len : 0;
}

static size_t on_header(char *data, size_t size, size_t n, void *userdata) {
  transfer *t = (transfer *)userdata;
  size_t len = size * n;
  /* After a block has ended, only a status line opens another (after a 1xx
   * answer or a proxy's CONNECT answer), and none once body bytes came:
   * anything else there is a chunked body's trailer, which is not a
   * header of the answer (it could join onto a signed header, or wipe
   * them all by beginning with "HTTP/").  A header line that merely begins
   * with "HTTP/" inside a block does not wipe the lines before it. */
  if (t->head_ended) {
    if (t->body_seen || len < 5 || memcmp(data, "HTTP/", 5) != 0) return len;
    t->head.len = 0;
  }
  t->head_ended = (len == 2 && data[0] == '\r' && data[1] == '\n') || (len == 1 && data[0] == '\n');
  return buffer_append(&t->head, data, len) == 0 ? len : 0;
}

/* Sockets are opened and closed here so that a fork child can drop its
 * copies of the parent's connections: close(2) on a descriptor the parent
 * also holds sends nothing on the wire. */
static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *addr) {
  session *s = (session *)clientp;
  int type = addr->socktype;
  curl_socket_t fd;
  (void)purpose;
#ifdef SOCK_CLOEXEC
  type |= SOCK_CLOEXEC;   /* a program the application execs gets none of them */
#endif
  fd = socket(addr->family, type, addr->protocol);
  if (fd == CURL_SOCKET_BAD) return fd;
  if (s->sockets.len == s->sockets.cap) {
    size_t cap = s->sockets.cap ? s->sockets.cap * 2 : 8;
    curl_socket_t *p = (curl_socket_t *)realloc(s->sockets.fds, cap * sizeof *p);
    if (!p) { close(fd); return CURL_SOCKET_BAD; }
    s->sockets.fds = p;
    s->sockets.cap = cap;
  }
  s->sockets.fds[s->sockets.len++] = fd;
  return fd;
}

static int on_close_socket(void *clientp, curl_socket_t fd) {
  session *s = (session *)clientp;
  size_t i;
  for (i = 0; i < s->sockets.len; i++) {
    if (s->sockets.fds[i] == fd) {
      s->sockets.fds[i] = s->sockets.fds[--s->sockets.len];
      break;
    }
  }
  return close(fd);
}

/* ---- transfers ---------------------------------------------------------- */

static void unlink_transfer(session *s, transfer *t) {
  transfer **link = &s->transfers;
  while (*link && *link != t) link = &(*link)->next;
  if (*link) *link = t->next;
}

/* Returns t to the idle pool, or, when it came from the parent process,
 * sets its easy handle aside for good. */
static void transfer_release(session *s, transfer *t) {
  if (t->active) {
    /* A streamed transfer cancelled while its write callback had paused it
     * is resumed first, or its easy handle would go back to the idle pool
     * still paused.  What curl delivers on resuming is refused. */
    if (t->paused) {
      t->dropping = 1;
      curl_easy_pause(t->easy, CURLPAUSE_CONT);
    }
    curl_multi_remove_handle(s->multi, t->easy);
    t->active = 0;
  }
  curl_slist_free_all(t->headers);   /* an inherited easy handle never runs again */
  t->headers = NULL;
  buffer_free(&t->body);
  buffer_free(&t->head);
  t->finished = 0;
  t->too_large = 0;
  t->head_ended = t->body_seen = 0;
  t->forked = 0;
  t->stream = t->streaming = t->paused = t->dropping = 0;
  t->id = 0;
  if (t->inherited) {
    unlink_transfer(s, t);
    t->next = orphan_transfers;
    orphan_transfers = t;
  }
}

/* In a fork child: set aside the parent's multi handle and easy handles,
 * mark transfers in flight as failed, and close this process's copies of
 * the parent's sockets.  Leaves s->multi NULL. */
static void session_abandon(session *s) {
  orphan_multi *o = (orphan_multi *)calloc(1, sizeof *o);
  transfer **link = &s->transfers, *t;
  size_t i;
  if (o) {   /* out of memory: the handle is lost, but still never cleaned up */
    o->multi = s->multi;
    o->next = orphan_multis;
    orphan_multis = o;
  }
  s->multi = NULL;
  while ((t = *link) != NULL) {
    t->inherited = 1;
    t->active = 0;   /* in the parent's multi handle: never remove it from there */
    if (t->id == 0) {
      *link = t->next;
      t->next = orphan_transfers;
      orphan_transfers = t;
      continue;
    }
    if (!t->finished) {
      t->finished = 1;
      t->forked = 1;
      t->sent_at_fork = 0;
      curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE, &t->sent_at_fork);
    }
    link = &t->next;
  }
  for (i = 0; i < s->sockets.len; i++) close(s->sockets.fds[i]);
  s->sockets.len = 0;
}

static CURLM *new_multi(session *s) {
  CURLM *multi = curl_multi_init();
  if (!multi) return NULL;
  if (s->max_connections > 0) curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, s->max_connections);
  curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, s->max_connections > 0 ? s->max_connections : 64L);
  return multi;
}

/* Frees key material after overwriting it (volatile: not optimised away). */
static void secret_free(char *p, size_t len) {
  volatile char *v = p;
  size_t i;
  if (!p) return;
  for (i = 0; i < len; i++) v[i] = 0;
  free(p);
}

static void session_destroy(session *s) {
  transfer *t, *next;
  if (s->multi && s->pid != getpid()) session_abandon(s);
  for (t = s->transfers; t; t = next) {
    next = t->next;
    if (t->inherited) {
      transfer_release(s, t);   /* to the orphans */
    } else {
      transfer_release(s, t);
      if (t->easy) curl_easy_cleanup(t->easy);
      free(t);
    }
  }
  s->transfers = NULL;
  if (s->multi) curl_multi_cleanup(s->multi);   /* closes sockets through on_close_socket */
  s->multi = NULL;
  free(s->sockets.fds);
  s->sockets.fds = NULL;
  s->sockets.len = s->sockets.cap = 0;
  free(s->cafile);
  free(s->capath);
  free(s->proxy);
  if (s->ca_pem) free(s->ca_pem);
  curl_slist_free_all(s->resolve);
  s->cafile = s->capath = s->proxy = s->ca_pem = NULL;
  s->ca_pem_len = 0;
  s->resolve = NULL;
  free(s->client_cert);
  secret_free(s->client_key, s->client_key_len);
  s->client_cert = s->client_key = NULL;
  s->client_cert_len = s->client_key_len = 0;
}

/* The session of argument 1, made this process's own if it was inherited
 * through fork(): a getpid() per call is the whole cost. */
static session *check_session(lua_State *L) {
  session *s = (session *)wp_check_class(L, 1, &session_class_tag, WP_SESSION_CLASS);
  if (s->multi && s->pid != getpid()) {
    session_abandon(s);
    s->pid = getpid();
    s->multi = new_multi(s);
    if (!s->multi) luaL_error(L, "cannot create a curl multi handle after fork");
  }
  if (!s->multi) luaL_argerror(L, 1, "HTTP session has been closed");
  return s;
}

/* An idle transfer keeps its easy handle: reusing it keeps curl's caches. */
static transfer *transfer_acquire(session *s) {
  transfer *t;
  for (t = s->transfers; t; t = t->next)
    if (t->id == 0 && !t->inherited) return t;
  t = (transfer *)calloc(1, sizeof *t);
  if (!t) return NULL;
  t->easy = curl_easy_init();
  if (!t->easy) { free(t); return NULL; }
  t->next = s->transfers;
  s->transfers = t;
  return t;
}

/* Pushes t[name] from the table at the absolute index idx, without
 * metamethods: no Lua code runs while a request or the options are read,
 * so no string kept here by pointer can be collected under it (the table
 * holds each one).  Requests and options are plain tables. */
static void raw_field(lua_State *L, int idx, const char *name) {
  lua_pushstring(L, name);
  lua_rawget(L, idx);
}

static const char *opt_field_string(lua_State *L, int idx, const char *name, size_t *len) {
  const char *value;
  raw_field(L, idx, name);
  if (lua_isnil(L, -1)) { lua_pop(L, 1); if (len) *len = 0; return NULL; }
  if (lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "bad request field '%s' (string expected, got %s)", name, luaL_typename(L, -1));
  value = lua_tolstring(L, -1, len);
  lua_pop(L, 1);   /* still referenced by the table at idx */
  return value;
}

/* A string curl will read up to its first NUL and send as one line: a NUL
 * would cut it short silently, a line break would start another line. */
static const char *opt_field_line(lua_State *L, int idx, const char *name) {
  size_t len;
  const char *value = opt_field_string(L, idx, name, &len);
  if (value && (memchr(value, '\0', len) || memchr(value, '\r', len) || memchr(value, '\n', len)))
    luaL_error(L, "bad request field '%s' (holds a NUL or a line break)", name);
  return value;
}

/* A number of seconds in [lo, hi]; NaN fails every comparison. */
static lua_Number opt_field_number(lua_State *L, int idx, const char *name, lua_Number lo, lua_Number hi,
                                   int whole, const char *what) {
  lua_Number v;
  raw_field(L, idx, name);
  v = lua_tonumber(L, -1);
  if (lua_type(L, -1) != LUA_TNUMBER || !(v >= lo && v <= hi) || (whole && v != (lua_Number)(long)v)) {
    const char *got = lua_type(L, -1) == LUA_TNUMBER ? lua_tostring(L, -1) : luaL_typename(L, -1);
    luaL_error(L, "bad %s '%s' (%s from %f to %f expected, got %s)", what, name,
               whole ? "a whole number" : "a number", lo, hi, got);
  }
  lua_pop(L, 1);
  return v;
}

/* Milliseconds for curl, from seconds: at least 1, as 0 means "no timeout". */
static long opt_field_ms(lua_State *L, int idx, const char *name, long dflt) {
  raw_field(L, idx, name);
  if (lua_isnil(L, -1)) { lua_pop(L, 1); return dflt; }
  lua_pop(L, 1);
  return (long)(opt_field_number(L, idx, name, 0.001, WP_MAX_MS / 1000, 0, "request field") * 1000.0 + 0.5);
}

/* An HTTP method is a token: letters, digits and a few marks, nothing else. */
static int is_token(const char *s) {
  if (!*s) return 0;
  for (; *s; s++)
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
          strchr("!#$%&'*+-.^_`|~", *s)))
      return 0;
  return 1;
}

/* An option curl did not take, for lack of memory or over its size limit
 * (8 MB for a blob): the transfer must not run without it, as a CA bundle
 * not taken would leave curl's default trust store in its place. */
static int refuse_option(lua_State *L, session *s, transfer *t, const char *what, CURLcode rc) {
  transfer_release(s, t);
  return luaL_error(L, "cannot give the HTTP transfer its %s: %s", what, curl_easy_strerror(rc));
}
#define SET_OR_REFUSE(option, value, what)                                  \
  do {                                                                      \
    CURLcode set_rc = curl_easy_setopt(t->easy, option, value);             \
    if (set_rc != CURLE_OK) return refuse_option(L, s, t, what, set_rc);    \
  } while (0)

#if LIBCURL_VERSION_NUM >= 0x075000
/* Called by curl each time it is about to send the request.  When a reused
 * connection closes without a byte of answer, curl sends the same bytes
 * again on a new one by itself: the same signature and nonce (WeChat Pay
 * wants every attempt signed anew), to a server that may have acted on the
 * first.  It stops there instead; the failure tells the caller whether
 * sending again is its to do (replay).  (No Lua here: called from curl.) */
static int on_prereq(void *data, char *primary_ip, char *local_ip, int primary_port, int local_port) {
  transfer *t = (transfer *)data;
  (void)primary_ip; (void)local_ip; (void)primary_port; (void)local_port;
  if (++t->sends > 1) {
    t->replay_refused = 1;
    return CURL_PREREQFUNC_ABORT;
  }
  return CURL_PREREQFUNC_OK;
}
#endif

/* s:submit(request) -> id.  Every argument is checked before curl is touched. */
static int l_submit(lua_State *L) {
  session *s = check_session(L);
  const char *method, *url, *body;
  size_t bodylen, nheaders, i;
  long timeout_ms, connect_ms;
  struct curl_slist *headers = NULL;
  transfer *t;
  int is_get, is_head, client_cert, replayable;

  luaL_checktype(L, 2, LUA_TTABLE);
  raw_field(L, 2, "replay");
  if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
    return luaL_argerror(L, 2, "request field 'replay' must be a boolean");
  replayable = lua_toboolean(L, -1);
  lua_pop(L, 1);
  raw_field(L, 2, "client_cert");
  if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
    return luaL_argerror(L, 2, "request field 'client_cert' must be a boolean");
  client_cert = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (client_cert && !s->client_cert)
    return luaL_argerror(L, 2, "client_cert: this session holds no client certificate (client_cert/client_key)");
  method = opt_field_line(L, 2, "method");
  url = opt_field_line(L, 2, "url");
  body = opt_field_string(L, 2, "body", &bodylen);
  if (!method || !url) return luaL_argerror(L, 2, "request needs a method and a url");
  if (!is_token(method)) return luaL_argerror(L, 2, "request method must be an HTTP token such as \"GET\"");
  timeout_ms = opt_field_ms(L, 2, "timeout", 30000);
  connect_ms = opt_field_ms(L, 2, "connect_timeout", 5000);
  raw_field(L, 2, "headers");
  if (!lua_isnil(L, -1) && !lua_istable(L, -1))
    return luaL_argerror(L, 2, "request headers must be a list of \"Name: value\" strings");
  nheaders = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
  for (i = 1; i <= nheaders; i++) {   /* check all before allocating any */
    size_t len;
    const char *line;
    lua_rawgeti(L, -1, (int)i);
    if (lua_type(L, -1) != LUA_TSTRING)
      return luaL_argerror(L, 2, "request headers must be a list of \"Name: value\" strings");
    line = lua_tolstring(L, -1, &len);
    if (memchr(line, '\n', len) || memchr(line, '\r', len))
      return luaL_argerror(L, 2, "a request header holds a line break");
    if (memchr(line, '\0', len))   /* curl would send the part before it, silently */
      return luaL_argerror(L, 2, "a request header holds a NUL byte");
    lua_pop(L, 1);
  }

  t = transfer_acquire(s);
  if (!t) return luaL_error(L, "out of memory for an HTTP transfer");
  for (i = 1; i <= nheaders; i++) {
    struct curl_slist *grown;
    lua_rawgeti(L, -1, (int)i);
    grown = curl_slist_append(headers, lua_tostring(L, -1));
    lua_pop(L, 1);
    if (!grown) { curl_slist_free_all(headers); return luaL_error(L, "out of memory for headers"); }
    headers = grown;
  }
  lua_pop(L, 1);
  {  /* curl would add these by itself; WeChat Pay wants neither */
    struct curl_slist *grown = curl_slist_append(headers, "Expect:");
    if (grown) headers = curl_slist_append(grown, "Accept-Encoding:");
    if (!grown || !headers) {
      curl_slist_free_all(grown ? grown : headers);
      return luaL_error(L, "out of memory for headers");
    }
  }

  curl_easy_reset(t->easy);
  t->headers = headers;
  t->max_body = s->max_body;
  t->errbuf[0] = '\0';
  t->replayable = replayable;
  t->sends = 0;
  t->replay_refused = 0;
#if LIBCURL_VERSION_NUM >= 0x075000
  curl_easy_setopt(t->easy, CURLOPT_PREREQFUNCTION, on_prereq);
  curl_easy_setopt(t->easy, CURLOPT_PREREQDATA, t);
#endif
  raw_field(L, 2, "stream");
  t->stream = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (t->stream && t->max_body > WP_STREAM_ERROR_BODY) t->max_body = WP_STREAM_ERROR_BODY;
  is_get = strcmp(method, "GET") == 0;
  is_head = strcmp(method, "HEAD") == 0;
  SET_OR_REFUSE(CURLOPT_URL, url, "URL");
  /* the bytes signed are the bytes sent: no "/./" or "/../" squashing */
  curl_easy_setopt(t->easy, CURLOPT_PATH_AS_IS, 1L);
  curl_easy_setopt(t->easy, CURLOPT_PROTOCOLS_STR, "https,http");
  curl_easy_setopt(t->easy, CURLOPT_FOLLOWLOCATION, 0L);   /* a redirect is an answer, not a hop */
  curl_easy_setopt(t->easy, CURLOPT_REDIR_PROTOCOLS_STR, "https");
  SET_OR_REFUSE(CURLOPT_HTTPHEADER, t->headers, "headers");
  curl_easy_setopt(t->easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(t->easy, CURLOPT_SSL_VERIFYPEER, 1L);   /* always: no option turns it off */
  curl_easy_setopt(t->easy, CURLOPT_SSL_VERIFYHOST, 2L);
  /* The CAs given are the only ones trusted: curl_easy_reset brought back
   * libcurl's built-in defaults (Debian's: the system bundle and
   * /etc/ssl/certs), which would otherwise be trusted beside them. */
  if (s->ca_pem) {
    struct curl_blob blob;
    blob.data = s->ca_pem;
    blob.len = s->ca_pem_len;
    blob.flags = CURL_BLOB_COPY;
    SET_OR_REFUSE(CURLOPT_CAINFO_BLOB, &blob, "CA bundle (cafile)");
  } else if (s->cafile) {
    SET_OR_REFUSE(CURLOPT_CAINFO, s->cafile, "CA file");
  } else if (s->capath) {
    SET_OR_REFUSE(CURLOPT_CAINFO, NULL, "no default CA bundle");
  }
  SET_OR_REFUSE(CURLOPT_RESOLVE, s->resolve, "resolve pins");
  if (s->capath) SET_OR_REFUSE(CURLOPT_CAPATH, s->capath, "CA directory (capath)");
  else if (s->ca_pem || s->cafile) SET_OR_REFUSE(CURLOPT_CAPATH, NULL, "no default CA directory");
  if (client_cert) {
    /* NOCOPY: the handle points at the session's buffers, which outlive
     * it: session_destroy cleans up every easy handle before it wipes and
     * frees them, and curl_easy_reset drops the pointers at the next use.
     * Handles inherited through fork() are set aside and never run or
     * cleaned up again, so their stale pointers are never followed.  (A
     * copy would be freed by curl without being wiped.)  A pooled
     * connection is reused only by transfers with the same certificate
     * (curl compares the certificate blobs when matching connections). */
    struct curl_blob cert, key;
    cert.data = s->client_cert;
    cert.len = s->client_cert_len;
    cert.flags = CURL_BLOB_NOCOPY;
    key.data = s->client_key;
    key.len = s->client_key_len;
    key.flags = CURL_BLOB_NOCOPY;
    if (curl_easy_setopt(t->easy, CURLOPT_SSLCERT_BLOB, &cert) != CURLE_OK ||
        curl_easy_setopt(t->easy, CURLOPT_SSLKEY_BLOB, &key) != CURLE_OK) {
      transfer_release(s, t);
      return luaL_error(L, "this libcurl (%s) cannot present a client certificate from memory "
                        "(CURLOPT_SSLCERT_BLOB needs 7.71.0 and an OpenSSL-like TLS backend)",
                        curl_version_info(CURLVERSION_NOW)->version);
    }
    curl_easy_setopt(t->easy, CURLOPT_SSLCERTTYPE, "PEM");
    curl_easy_setopt(t->easy, CURLOPT_SSLKEYTYPE, s->client_key_der ? "DER" : "PEM");
  }
  if (s->proxy) SET_OR_REFUSE(CURLOPT_PROXY, s->proxy, "proxy");
  curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(t->easy, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
  curl_easy_setopt(t->easy, CURLOPT_MAXAGE_CONN, s->idle_timeout);
  curl_easy_setopt(t->easy, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(t->easy, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
  curl_easy_setopt(t->easy, CURLOPT_OPENSOCKETDATA, s);
  curl_easy_setopt(t->easy, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
  curl_easy_setopt(t->easy, CURLOPT_CLOSESOCKETDATA, s);
  curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(t->easy, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(t->easy, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(t->easy, CURLOPT_ERRORBUFFER, t->errbuf);
  curl_easy_setopt(t->easy, CURLOPT_PRIVATE, t);
  if (is_head) {
    curl_easy_setopt(t->easy, CURLOPT_NOBODY, 1L);
  } else if (body && (bodylen > 0 || !is_get)) {
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)bodylen);
    SET_OR_REFUSE(CURLOPT_COPYPOSTFIELDS, body, "body");
    if (strcmp(method, "POST") != 0) SET_OR_REFUSE(CURLOPT_CUSTOMREQUEST, method, "method");
  } else {
    curl_easy_setopt(t->easy, CURLOPT_HTTPGET, 1L);
    if (!is_get) SET_OR_REFUSE(CURLOPT_CUSTOMREQUEST, method, "method");
  }
  if (curl_multi_add_handle(s->multi, t->easy) != CURLM_OK) {
    transfer_release(s, t);
    return luaL_error(L, "cannot start the HTTP transfer");
  }
  t->active = 1;
  t->id = ++s->next_id;
  lua_pushinteger(L, t->id);
  return 1;
}

static void collect_finished(session *s) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(s->multi, &left)) != NULL) {
    transfer *t = NULL;
    if (msg->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
    if (!t) continue;
    t->result = msg->data.result;
    curl_multi_remove_handle(s->multi, t->easy);
    t->active = 0;
    t->finished = 1;
  }
}

/* Lower-cases header names into a table; repeated names are joined by ", ". */
static void push_headers(lua_State *L, const buffer *head) {
  const char *p = head->data ? head->data : "", *end = p + head->len;
  lua_newtable(L);
  /* skip the status line */
  while (p < end && *p != '\n') p++;
  if (p < end) p++;
  while (p < end) {
    const char *line = p, *eol = memchr(p, '\n', (size_t)(end - p)), *colon, *v, *vend;
    if (!eol) eol = end;
    p = eol + 1;
    colon = memchr(line, ':', (size_t)(eol - line));
    if (!colon || colon == line) continue;
    v = colon + 1;
    vend = eol;
    while (v < vend && (*v == ' ' || *v == '\t')) v++;
    while (vend > v && (vend[-1] == '\r' || vend[-1] == ' ' || vend[-1] == '\t')) vend--;
    {
      luaL_Buffer name;
      const char *c;
      luaL_buffinit(L, &name);
      for (c = line; c < colon; c++)
        luaL_addchar(&name, (*c >= 'A' && *c <= 'Z') ? (char)(*c + 32) : *c);
      luaL_pushresult(&name);
    }
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_pushlstring(L, v, (size_t)(vend - v));
    } else {
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, v, (size_t)(vend - v));
      lua_concat(L, 3);
    }
    lua_rawset(L, -3);
  }
}

/* Whether a failed request may be sent again: "safe" when nothing of it
 * reached the server, "idempotent" when something may have, NULL when no
 * retry can help. */
static const char *retry_class(CURLcode code, long sent) {
  switch (code) {
  case CURLE_UNSUPPORTED_PROTOCOL: case CURLE_FAILED_INIT: case CURLE_URL_MALFORMAT:
  case CURLE_NOT_BUILT_IN: case CURLE_WRITE_ERROR: case CURLE_OUT_OF_MEMORY:
  case CURLE_BAD_FUNCTION_ARGUMENT: case CURLE_TOO_MANY_REDIRECTS: case CURLE_UNKNOWN_OPTION:
  case CURLE_SSL_ENGINE_NOTFOUND: case CURLE_SSL_ENGINE_SETFAILED: case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER: case CURLE_PEER_FAILED_VERIFICATION: case CURLE_FILESIZE_EXCEEDED:
  case CURLE_SSL_ENGINE_INITFAILED: case CURLE_SSL_CACERT_BADFILE: case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_ISSUER_ERROR: case CURLE_SSL_PINNEDPUBKEYNOTMATCH: case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_RECURSIVE_API_CALL: case CURLE_AUTH_ERROR: case CURLE_SSL_CLIENTCERT:
    return NULL;
  default:
    /* curl counts the request's bytes as it hands them to the connection;
     * a reused connection found dead before that is retried by curl itself */
    return sent > 0 ? "idempotent" : "safe";
  }
}

static void push_result(lua_State *L, transfer *t) {
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, t->id);
  lua_setfield(L, -2, "id");
  if (t->forked) {
    lua_pushliteral(L, "network");
    lua_setfield(L, -2, "error");
    lua_pushliteral(L, "the process forked while this request was in flight; "
                       "its connection stays with the parent process");
    lua_setfield(L, -2, "message");
    lua_pushinteger(L, (lua_Integer)t->sent_at_fork);
    lua_setfield(L, -2, "sent");
    lua_pushliteral(L, "idempotent");   /* the parent may still send it */
    lua_setfield(L, -2, "retry");
  } else if (t->result == CURLE_OK) {
    long status = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    push_headers(L, &t->head);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, t->body.data ? t->body.data : "", t->body.len);
    lua_setfield(L, -2, "body");
  } else {
    long sent = 0;
    const char *kind = t->result == CURLE_OPERATION_TIMEDOUT ? "timeout" : "network";
    const char *retry;
    curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE, &sent);
    retry = t->too_large ? NULL : retry_class(t->result, sent);
    if (t->replay_refused) {   /* it was sent once, on the connection that closed */
      retry = t->replayable ? "safe" : "idempotent";
      if (sent <= 0) sent = 1;
    }
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "error");
    if (t->too_large)
      lua_pushfstring(L, "response body larger than %d bytes", (int)t->max_body);
    else if (t->replay_refused && t->replayable)
      lua_pushliteral(L, "a reused connection closed without an answer after the request was sent");
    else if (t->replay_refused)
      lua_pushliteral(L, "a reused connection closed without an answer after the request was sent: not sent "
                         "again, as the server may have acted on it");
    else if (t->errbuf[0])
      lua_pushstring(L, t->errbuf);
    else
      lua_pushstring(L, curl_easy_strerror(t->result));
    lua_setfield(L, -2, "message");
    lua_pushinteger(L, (lua_Integer)t->result);
    lua_setfield(L, -2, "curl_code");
    lua_pushinteger(L, sent);
    lua_setfield(L, -2, "sent");
    if (retry) lua_pushstring(L, retry);
    else lua_pushboolean(L, 0);
    lua_setfield(L, -2, "retry");
  }
}

/* A streamed transfer's buffered bytes, as Lua sees them. */
static void push_chunk(lua_State *L, transfer *t) {
  long status = 0;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, t->id);
  lua_setfield(L, -2, "id");
  lua_pushinteger(L, status);
  lua_setfield(L, -2, "status");
  lua_pushlstring(L, t->body.data, t->body.len);
  lua_setfield(L, -2, "chunk");
}

/* Once its bytes are in Lua's hands: empties the buffer and resumes the
 * transfer if the write callback paused it (curl may call on_body again
 * from curl_easy_pause, into the buffer just emptied). */
static void chunk_taken(transfer *t) {
  t->body.len = 0;
  if (t->paused) {
    t->paused = 0;
    curl_easy_pause(t->easy, CURLPAUSE_CONT);
  }
}

static int has_chunk(const transfer *t) {
  return t->streaming && !t->finished && t->id != 0 && t->body.len > 0;
}

/* How many transfers perform() would report now: finished, or chunks. */
static int ready_count(const session *s) {
  const transfer *t;
  int n = 0;
  for (t = s->transfers; t; t = t->next) n += t->finished || has_chunk(t);
  return n;
}

/* s:perform([wait_seconds = 0]) -> list of finished transfers and of
 * streamed transfers' chunks (maybe empty).  Runs every transfer; waits up
 * to wait_seconds for activity when nothing is ready yet (callers with
 * timers pass the time to their next one). */
static int l_perform(lua_State *L) {
  session *s = check_session(L);
  lua_Number wait = luaL_optnumber(L, 2, 0);
  int running = 0, n = 0;
  transfer *t, *next;
  CURLMcode mc;
  luaL_argcheck(L, wait >= 0, 2, "wait must be a number of seconds, not negative");   /* NaN too */
  if (wait * 1000 > WP_MAX_MS) wait = WP_MAX_MS / 1000;
  mc = curl_multi_perform(s->multi, &running);
  collect_finished(s);
  if (mc == CURLM_OK && ready_count(s) == 0 && wait > 0) {   /* with nothing running it just sleeps */
    curl_multi_poll(s->multi, NULL, 0, (int)(wait * 1000), NULL);
    mc = curl_multi_perform(s->multi, &running);
    collect_finished(s);
  }
  if (mc != CURLM_OK) return luaL_error(L, "HTTP transport failure: %s", curl_multi_strerror(mc));
  /* The list is built whole before any transfer is released or any chunk
   * emptied: a memory error while building it loses nothing, and the next
   * perform reports the same transfers again.  Nothing calls curl between
   * the two passes, so both see the same transfers. */
  lua_createtable(L, ready_count(s), 0);
  for (t = s->transfers; t; t = t->next) {
    if (has_chunk(t)) push_chunk(L, t);
    else if (t->finished) push_result(L, t);
    else continue;
    lua_rawseti(L, -2, ++n);
  }
  for (t = s->transfers; t; t = next) {
    next = t->next;   /* an inherited transfer leaves the list when released */
    if (has_chunk(t)) chunk_taken(t);
    else if (t->finished) transfer_release(s, t);
  }
  return 1;
}

/* s:cancel(id) -> boolean: drops an in-flight transfer. */
static int l_cancel(lua_State *L) {
  session *s = check_session(L);
  lua_Integer id = luaL_checkinteger(L, 2);
  transfer *t;
  for (t = s->transfers; t; t = t->next) {
    if (t->id == id && id != 0) {
      transfer_release(s, t);
      lua_pushboolean(L, 1);
      return 1;
    }
  }
  lua_pushboolean(L, 0);
  return 1;
}

/* s:pending() -> number of transfers not yet reported */
static int l_pending(lua_State *L) {
  session *s = check_session(L);
  transfer *t;
  lua_Integer n = 0;
  for (t = s->transfers; t; t = t->next) n += t->id != 0;
  lua_pushinteger(L, n);
  return 1;
}

/* s:close(); also __gc and __close.  In a fork child it cleans up only what
 * the child made itself. */
static int l_session_close(lua_State *L) {
  session *s = (session *)wp_check_class(L, 1, &session_class_tag, WP_SESSION_CLASS);
  session_destroy(s);
  return 0;
}

static int l_session_tostring(lua_State *L) {
  session *s = (session *)wp_check_class(L, 1, &session_class_tag, WP_SESSION_CLASS);
  lua_pushstring(L, s->multi ? "wechatpay.http_session" : "wechatpay.http_session (closed)");
  return 1;
}

static char *opt_dup(lua_State *L, int idx, const char *name) {
  size_t len;
  const char *v = opt_field_string(L, idx, name, &len);
  char *copy;
  if (!v) return NULL;
  if (memchr(v, '\0', len)) luaL_error(L, "bad option '%s' (holds a NUL byte)", name);
  copy = (char *)malloc(len + 1);
  if (!copy) luaL_error(L, "out of memory");
  memcpy(copy, v, len + 1);
  return copy;
}

/* core.http_session([options]) -> session
 * options: cafile, ca_pem (the bundle's bytes, preferred over cafile), capath
 * (a folder of hashed CA certificates), proxy, resolve (a list of
 * "host:port:address" pins, as curl's CURLOPT_RESOLVE), max_connections
 * (per host), idle_timeout (s), max_body (bytes); client_cert (PEM bytes)
 * with client_key (unencrypted PEM or DER bytes with client_key_type "PEM" |
 * "DER", or a private key object, which an encrypted key decrypts to): the
 * certificate requests with client_cert present */
static int l_http_session(lua_State *L) {
  session *s;
  long max_conn = 0, idle = 7;
  size_t max_body = (size_t)WP_MAX_BODY_DEFAULT;
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TTABLE);
  else { lua_settop(L, 0); lua_newtable(L); }
  raw_field(L, 1, "max_connections");
  if (!lua_isnil(L, -1)) max_conn = (long)opt_field_number(L, 1, "max_connections", 0, WP_MAX_CONNECTIONS, 1, "option");
  raw_field(L, 1, "idle_timeout");
  if (!lua_isnil(L, -1)) idle = (long)opt_field_number(L, 1, "idle_timeout", 1, WP_MAX_IDLE, 0, "option");
  raw_field(L, 1, "max_body");
  if (!lua_isnil(L, -1)) max_body = (size_t)opt_field_number(L, 1, "max_body", 1, WP_MAX_BODY_LIMIT, 1, "option");
  lua_pop(L, 3);

  s = (session *)lua_newuserdata(L, sizeof *s);   /* box first ... */
  memset(s, 0, sizeof *s);
  wp_set_class(L, &session_class_tag);
  s->idle_timeout = idle;
  s->max_connections = max_conn;
  s->max_body = max_body;
  s->pid = getpid();
  s->cafile = opt_dup(L, 1, "cafile");             /* ... then acquire */
  s->capath = opt_dup(L, 1, "capath");
  s->proxy = opt_dup(L, 1, "proxy");
  {
    size_t len;
    const char *pem = opt_field_string(L, 1, "ca_pem", &len);
    if (pem) {
      s->ca_pem = (char *)malloc(len ? len : 1);
      if (!s->ca_pem) return luaL_error(L, "out of memory");
      memcpy(s->ca_pem, pem, len);
      s->ca_pem_len = len;
    }
  }
  {
    size_t cert_len, key_len = 0;
    const char *cert = opt_field_string(L, 1, "client_cert", &cert_len);
    const char *key = NULL, *type;
    wp_key *key_object = NULL;
    raw_field(L, 1, "client_key_passphrase");
    if (!lua_isnil(L, -1))
      return luaL_argerror(L, 1, "option 'client_key_passphrase' is not taken: give client_key as the "
                                 "decrypted key object (wechatpay.key.private(pem, passphrase))");
    lua_pop(L, 1);
    raw_field(L, 1, "client_key");
    if (lua_type(L, -1) == LUA_TUSERDATA) key_object = wp_check_key(L, lua_gettop(L));
    else if (lua_type(L, -1) == LUA_TSTRING) key = lua_tolstring(L, -1, &key_len);
    else if (!lua_isnil(L, -1))
      return luaL_error(L, "bad request field 'client_key' (string expected, got %s)", luaL_typename(L, -1));
    lua_pop(L, 1);   /* the key, string or object, is referenced by the options table */
    type = opt_field_string(L, 1, "client_key_type", NULL);
    if ((cert == NULL) != (key == NULL && key_object == NULL) || (cert && (cert_len == 0 || (key && key_len == 0))))
      return luaL_argerror(L, 1, "options 'client_cert' and 'client_key' go together, neither empty");
    if (type && strcmp(type, "PEM") != 0 && strcmp(type, "DER") != 0)
      return luaL_argerror(L, 1, "option 'client_key_type' must be \"PEM\" or \"DER\"");
    if (key_object && !wp_key_is_private(key_object))
      return luaL_argerror(L, 1, "option 'client_key' must be a private key");
    if (cert) {
      s->client_cert = (char *)malloc(cert_len);
      if (!s->client_cert) return luaL_error(L, "out of memory");
      memcpy(s->client_cert, cert, cert_len);
      s->client_cert_len = cert_len;
      if (key_object) {
        /* decrypted once, when it was loaded: curl never sees a passphrase,
         * and these bytes are wiped when the session ends */
        unsigned char *der;
        char err[WP_ERRLEN];
        if (wp_key_private_der(key_object, &der, &s->client_key_len, err) != 0)
          return luaL_error(L, "client_key: %s", err);
        s->client_key = (char *)der;
        s->client_key_der = 1;
      } else {
        s->client_key = (char *)malloc(key_len);
        if (!s->client_key) return luaL_error(L, "out of memory");
        memcpy(s->client_key, key, key_len);
        s->client_key_len = key_len;
        s->client_key_der = type && strcmp(type, "DER") == 0;
      }
    }
  }
  raw_field(L, 1, "resolve");
  if (!lua_isnil(L, -1)) {
    int i, n;
    luaL_argcheck(L, lua_istable(L, -1), 1, "option 'resolve' must be a list of \"host:port:address\"");
    n = (int)lua_rawlen(L, -1);
    for (i = 1; i <= n; i++) {
      size_t len;
      const char *pin;
      struct curl_slist *list;
      lua_rawgeti(L, -1, i);
      pin = lua_tolstring(L, -1, &len);
      if (!pin || lua_type(L, -1) != LUA_TSTRING || memchr(pin, '\0', len))
        return luaL_argerror(L, 1, "option 'resolve' must be a list of \"host:port:address\"");
      list = curl_slist_append(s->resolve, pin);
      if (!list) return luaL_error(L, "out of memory");
      s->resolve = list;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  s->multi = new_multi(s);
  if (!s->multi) return luaL_error(L, "cannot create a curl multi handle");
  return 1;
}

void wp_open_http(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"submit", l_submit},
    {"perform", l_perform},
    {"cancel", l_cancel},
    {"pending", l_pending},
    {"close", l_session_close},
    {NULL, NULL}
  };
  static const luaL_Reg metamethods[] = {
    {"__gc", l_session_close},
    {"__close", l_session_close},
    {"__tostring", l_session_tostring},
    {NULL, NULL}
  };
  curl_version_info_data *info;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    luaL_error(L, "cannot initialise libcurl");
  wp_new_class(L, &session_class_tag, WP_SESSION_CLASS, metamethods, methods);
  lua_pushcfunction(L, l_http_session);
  lua_setfield(L, -2, "http_session");
  info = curl_version_info(CURLVERSION_NOW);
  lua_pushstring(L, info->version);
  lua_setfield(L, -2, "curl_version");
}
