/*
 * The file-system calls Lua's io library lacks, for the certificate store
 * and bill downloads, made without a subprocess: io.popen would fork the
 * process, an nginx worker among them, and block it until the child ends.
 *
 *   local ok, err = core.fsync(path)     -- a file's (or directory's) bytes on disk
 *   local names, err = core.list_dir(path)   -- its entries but . and .., in no order
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "wechatpay.h"

#define WP_DIR_CLASS "wechatpay.dir"
static const char dir_class_tag = 0;

/* core.fsync(path) -> true | nil, err: the file (or directory) at path on
 * disk.  By path, as neither runtime gives a file handle's descriptor; the
 * page cache is the inode's, so a fresh read-only descriptor covers what
 * any other wrote (after their own flush). */
static int l_fsync(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int fd, rc, saved;
  do fd = open(path, O_RDONLY | O_CLOEXEC); while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    saved = errno;
    lua_pushnil(L);
    lua_pushfstring(L, "cannot open %s to sync it: %s", path, strerror(saved));
    return 2;
  }
  do rc = fsync(fd); while (rc != 0 && errno == EINTR);
  saved = errno;
  close(fd);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot sync %s to disk: %s", path, strerror(saved));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
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

void wp_open_fs(lua_State *L) {
  static const luaL_Reg dir_metamethods[] = {
    {"__gc", l_dir_close},
    {NULL, NULL}
  };
  static const luaL_Reg dir_methods[] = {
    {NULL, NULL}
  };
  static const luaL_Reg functions[] = {
    {"fsync", l_fsync},
    {"list_dir", l_list_dir},
    {NULL, NULL}
  };
  wp_new_class(L, &dir_class_tag, WP_DIR_CLASS, dir_metamethods, dir_methods);
  luaL_setfuncs(L, functions, 0);
}
