/*
 * The file-system calls Lua's io library lacks, for the certificate store
 * and bill downloads, made without a subprocess: io.popen would fork the
 * process, an nginx worker among them, and block it until the child ends.
 *
 *   local names, err = core.list_dir(path)   -- its entries but . and .., in no order
 *   local temp, err = core.temp_file(path, like [, mode])   -- a new empty file, removed unless committed
 *   local ok, err = temp:write(bytes)    -- appended, straight to its descriptor
 *   local ok, err = temp:commit(final)   -- synced, then renamed over final, whole or not at all
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wechatpay.h"

#define WP_DIR_CLASS "wechatpay.dir"
static const char dir_class_tag = 0;
#define WP_TEMP_CLASS "wechatpay.temp_file"
static const char temp_class_tag = 0;

/* fsync(2) of a directory, so a rename in it lasts: best effort, as some
 * file systems refuse fsync on a directory. */
static void sync_directory(const char *path) {
  int fd, rc;
  do fd = open(path, O_RDONLY | O_CLOEXEC); while (fd < 0 && errno == EINTR);
  if (fd < 0) return;
  do rc = fsync(fd); while (rc != 0 && errno == EINTR);
  close(fd);
}

/* An open directory: boxed before opendir, so a memory error while the
 * names are pushed cannot leak its descriptor (__gc closes it). */
typedef struct {
  DIR *dir;
} dir_box;

static int l_dir_close(lua_State *L) {
  dir_box *box = (dir_box *)wp_check_class(L, 1, &dir_class_tag, WP_DIR_CLASS);
  if (box->dir) closedir(box->dir);
  box->dir = NULL;
  return 0;
}

/* core.list_dir(path) -> { name, ... } | nil, err */
static int l_list_dir(lua_State *L) {
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  dir_box *box;
  struct dirent *entry;
  int n = 0, saved;
  luaL_argcheck(L, len > 0 && !memchr(path, '\0', len), 1, "a directory path without NUL bytes expected");
  box = (dir_box *)lua_newuserdata(L, sizeof *box);   /* box first ... */
  box->dir = NULL;
  wp_set_class(L, &dir_class_tag);
  box->dir = opendir(path);                            /* ... then acquire */
  if (!box->dir) {
    saved = errno;
    lua_pushnil(L);
    lua_pushfstring(L, "cannot list %s: %s", path, strerror(saved));
    return 2;
  }
  lua_newtable(L);
  for (;;) {
    errno = 0;
    entry = readdir(box->dir);
    if (!entry) break;
    if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
    lua_pushstring(L, entry->d_name);
    lua_rawseti(L, -2, ++n);
  }
  saved = errno;
  closedir(box->dir);
  box->dir = NULL;
  if (saved) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot list %s: %s", path, strerror(saved));
    return 2;
  }
  return 1;
}

/* A file being written and not yet committed: its path and descriptor,
 * the file removed when the box is collected.  A download inside nginx
 * whose light thread is killed (ngx.exit, a client abort, a worker
 * shutting down) never resumes to remove its partial file; its box is
 * collected instead.  Only by the process that made it: a child forked
 * meanwhile closes its copy of the descriptor and nothing more.  Bytes go
 * straight to the descriptor (no stdio buffer a child could flush into
 * the parent's file, at the offset they share). */
typedef struct {
  char *path;    /* NULL once committed or removed */
  int fd;        /* -1 once closed */
  mode_t mode;   /* what temp:commit() gives it */
  pid_t owner;
} temp_box;

static temp_box *check_temp(lua_State *L) {
  return (temp_box *)wp_check_class(L, 1, &temp_class_tag, WP_TEMP_CLASS);
}

static void temp_forget(temp_box *box, int remove) {
  if (box->fd >= 0) {
    close(box->fd);
    box->fd = -1;
  }
  if (!box->path) return;
  if (remove && box->owner == getpid()) unlink(box->path);
  free(box->path);
  box->path = NULL;
}

static int l_temp_gc(lua_State *L) {
  temp_forget(check_temp(L), 1);
  return 0;
}

static temp_box *check_open_temp(lua_State *L) {
  temp_box *box = check_temp(L);
  luaL_argcheck(L, box->path != NULL, 1, "the temporary file was already committed or removed");
  luaL_argcheck(L, box->owner == getpid(), 1, "the temporary file belongs to the process that made it");
  return box;
}

static int temp_failure(lua_State *L, temp_box *box, const char *what, int saved) {
  lua_pushnil(L);
  lua_pushfstring(L, what, box->path, strerror(saved));
  return 2;
}

/* temp:write(bytes) -> true | nil, err: all of bytes, appended. */
static int l_temp_write(lua_State *L) {
  temp_box *box = check_open_temp(L);
  size_t len;
  const char *bytes = luaL_checklstring(L, 2, &len);
  while (len > 0) {
    ssize_t n = write(box->fd, bytes, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return temp_failure(L, box, "cannot write %s: %s", errno);
    }
    bytes += n;
    len -= (size_t)n;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* temp:commit(final) -> true | nil, err: the written file takes the place
 * of `final`, whole or not at all.  Its bytes reach the disk before the
 * rename, so after a crash `final` is the old file or the whole new one,
 * never a renamed file still empty; it gets its final permissions before
 * the rename (while written it is 0600, so a read-only file it replaces
 * does not make it unwritable); then the directory is synced so the rename
 * lasts too (best effort: some file systems refuse fsync on a directory).
 * On failure the temporary file is removed. */
static int l_temp_commit(lua_State *L) {
  temp_box *box = check_open_temp(L);
  size_t len;
  const char *final = luaL_checklstring(L, 2, &len);
  const char *slash;
  const char *failed = NULL;
  int rc, saved = 0;
  luaL_argcheck(L, len > 0 && !memchr(final, '\0', len), 2, "a file path without NUL bytes expected");
  do rc = fsync(box->fd); while (rc != 0 && errno == EINTR);
  if (rc != 0) saved = errno, failed = "cannot sync %s to disk: %s";
  else if (fchmod(box->fd, box->mode) != 0) saved = errno, failed = "cannot set the permissions of %s: %s";
  else if ((rc = close(box->fd), box->fd = -1, rc) != 0) saved = errno, failed = "cannot write %s: %s";
  else if (rename(box->path, final) != 0) saved = errno, failed = "cannot rename %s into place: %s";
  if (failed) {
    temp_failure(L, box, failed, saved);
    temp_forget(box, 1);
    return 2;
  }
  temp_forget(box, 0);
  slash = strrchr(final, '/');
  if (!slash) {
    sync_directory(".");
  } else {
    /* the directory part of final, on the stack while it is synced */
    lua_pushlstring(L, final, slash == final ? 1 : (size_t)(slash - final));
    sync_directory(lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* temp:remove(): the file goes now */
static int l_temp_remove(lua_State *L) {
  temp_forget(check_temp(L), 1);
  return 0;
}

/* core.temp_file(path [, like [, mode]]) -> temp | nil, err
 * Creates path, which must not exist, empty and 0600 whatever the umask
 * (nginx runs with umask 0), open for temp:write(bytes).  temp:commit(final)
 * then gives it the permissions of the regular file `like` when there is
 * one (the file it will replace; a symbolic link there is replaced, not
 * followed), else `mode` (default 0600: a bill holds orders and openids),
 * and renames it over final.  Refuses a `like` that is a directory. */
static int l_temp_file(lua_State *L) {
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  const char *like = luaL_optstring(L, 2, NULL);
  lua_Integer given = luaL_optinteger(L, 3, 0600);
  mode_t mode;
  struct stat st;
  temp_box *box;
  int saved;
  luaL_argcheck(L, len > 0 && !memchr(path, '\0', len), 1, "a file path without NUL bytes expected");
  luaL_argcheck(L, given >= 0 && given <= 0777, 3, "permissions from 0 to 0777 expected");
  mode = (mode_t)given;
  if (like && lstat(like, &st) == 0) {
    if (S_ISDIR(st.st_mode)) {
      lua_pushnil(L);
      lua_pushfstring(L, "%s is a directory", like);
      return 2;
    }
    if (S_ISREG(st.st_mode)) mode = st.st_mode & 0777;
  }
  box = (temp_box *)lua_newuserdata(L, sizeof *box);   /* box first ... */
  box->path = NULL;
  box->fd = -1;
  box->mode = mode;
  box->owner = getpid();
  wp_set_class(L, &temp_class_tag);
  box->path = (char *)malloc(len + 1);
  if (!box->path) return luaL_error(L, "not enough memory");
  memcpy(box->path, path, len + 1);
  do box->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600); while (box->fd < 0 && errno == EINTR);
  if (box->fd < 0) {                                   /* ... then acquire */
    saved = errno;
    free(box->path);
    box->path = NULL;
    lua_pushnil(L);
    lua_pushfstring(L, "cannot create %s: %s", path, strerror(saved));
    return 2;
  }
  /* 0600 whatever the umask took away or let through */
  if (fchmod(box->fd, 0600) != 0) {
    saved = errno;
    lua_pushnil(L);
    lua_pushfstring(L, "cannot set the permissions of %s: %s", path, strerror(saved));
    temp_forget(box, 1);
    return 2;
  }
  return 1;
}

void wp_open_fs(lua_State *L) {
  static const luaL_Reg dir_metamethods[] = {
    {"__gc", l_dir_close},
    {NULL, NULL}
  };
  static const luaL_Reg dir_methods[] = {
    {NULL, NULL}
  };
  static const luaL_Reg temp_metamethods[] = {
    {"__gc", l_temp_gc},
    {NULL, NULL}
  };
  static const luaL_Reg temp_methods[] = {
    {"write", l_temp_write},
    {"commit", l_temp_commit},
    {"remove", l_temp_remove},
    {NULL, NULL}
  };
  static const luaL_Reg functions[] = {
    {"list_dir", l_list_dir},
    {"temp_file", l_temp_file},
    {NULL, NULL}
  };
  wp_new_class(L, &dir_class_tag, WP_DIR_CLASS, dir_metamethods, dir_methods);
  wp_new_class(L, &temp_class_tag, WP_TEMP_CLASS, temp_metamethods, temp_methods);
  luaL_setfuncs(L, functions, 0);
}
