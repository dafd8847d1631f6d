# wechatpay-lua: `make` builds wechatpay.core for Lua 5.4 and LuaJIT 2.1 on
# OpenSSL (`make CRYPTO=mbedtls` on mbedTLS), `make test` installs what is
# missing and runs the suite on both backends under both runtimes,
# `make demo` runs the example against the built-in mock WeChat Pay.
# Variables are named as LuaRocks names them so a packager can override them.

LUA54_INCDIR  ?= /usr/include/lua5.4
LUAJIT_INCDIR ?= /usr/include/luajit-2.1
CURL_INCDIR   ?= $(shell pkg-config --cflags-only-I libcurl 2>/dev/null)
CURL_LIBS     ?= $(shell pkg-config --libs libcurl 2>/dev/null || echo -lcurl)
# The crypto backend: openssl (the default: RSA signing several times faster)
# or mbedtls.  `make` builds CRYPTO's; `make test`, `valgrind` and `bench` both.
CRYPTO        ?= openssl
OPENSSL_INCDIR ?= $(shell pkg-config --cflags-only-I libcrypto 2>/dev/null)
OPENSSL_LIBS  ?= $(shell pkg-config --libs libcrypto 2>/dev/null || echo -lcrypto)
# mbedTLS 2.28 on Debian 12 ships no .pc file
MBEDTLS_INCDIR ?=
MBEDTLS_LIBS  ?= -lmbedtls -lmbedx509 -lmbedcrypto
# zlib inflates gzip bills as they download (libcurl depends on it already)
ZLIB_LIBS     ?= $(shell pkg-config --libs zlib 2>/dev/null || echo -lz)
CC            ?= cc
CFLAGS        ?= -O2 -g
LIBFLAG       ?= -shared
WARNINGS       = -Wall -Wextra

ifeq ($(DEV),1)
# Strict warnings and the sanitizers; the interpreters are not instrumented,
# so scripts/test runs the suite in small ASan-linked hosts.
CFLAGS    = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
WARNINGS += -Werror -Wshadow -Wconversion -Wno-sign-conversion -Wstrict-prototypes \
            -Wmissing-prototypes -Wformat=2 -Wundef -Wcast-align
LIBFLAG  += -fsanitize=address,undefined
BUILD     = build/dev
else
BUILD     = build
endif

ifneq ($(CRYPTO),openssl)
ifneq ($(CRYPTO),mbedtls)
$(error CRYPTO must be openssl or mbedtls, not "$(CRYPTO)")
endif
endif

# OpenSSL's build keeps the historical folders (build/lua5.4, build/luajit,
# which .busted and WECHATPAY_BUILD name); mbedTLS's is build/mbedtls/...
DIR_openssl  = $(BUILD)
DIR_mbedtls  = $(BUILD)/mbedtls
INC_openssl  = $(OPENSSL_INCDIR)
INC_mbedtls  = $(MBEDTLS_INCDIR)
LIBS_openssl = $(OPENSSL_LIBS)
LIBS_mbedtls = $(MBEDTLS_LIBS)

SRCS      = $(wildcard csrc/*.c)
HDRS      = $(wildcard csrc/*.h)
FUZZ_SRCS = $(wildcard csrc/fuzz_*.c)
BACKEND_SRCS = $(wildcard csrc/crypto_*.c)
# every module source but the crypto backends, which are one per build
COMMON_SRCS = $(filter-out $(FUZZ_SRCS) $(BACKEND_SRCS),$(SRCS))
ALL_CFLAGS = $(CFLAGS) $(WARNINGS) -std=c99 -D_POSIX_C_SOURCE=200809L -fPIC -fvisibility=hidden \
             $(CURL_INCDIR)

.PHONY: all backends deps test valgrind demo bench fuzz clean
# `make` builds all: the module rules below come first in the file
.DEFAULT_GOAL := all

# module BACKEND RUNTIME LUA_INCDIR: the rules for one core.so
define module
$$(DIR_$(1))/obj/$(2)/%.o: csrc/%.c $$(HDRS)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(ALL_CFLAGS) $$(INC_$(1)) -I$(3) -c $$< -o $$@

# Never -llua: the interpreter that loads the module provides the Lua API.
$$(DIR_$(1))/$(2)/wechatpay/core.so: $$(patsubst csrc/%.c,$$(DIR_$(1))/obj/$(2)/%.o,$$(COMMON_SRCS) csrc/crypto_$(1).c)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LIBFLAG) -o $$@ $$^ $$(CURL_LIBS) $$(LIBS_$(1)) $$(ZLIB_LIBS) -lpthread
endef
$(eval $(call module,openssl,lua5.4,$(LUA54_INCDIR)))
$(eval $(call module,openssl,luajit,$(LUAJIT_INCDIR)))
$(eval $(call module,mbedtls,lua5.4,$(LUA54_INCDIR)))
$(eval $(call module,mbedtls,luajit,$(LUAJIT_INCDIR)))

sos = $(DIR_$(1))/lua5.4/wechatpay/core.so $(DIR_$(1))/luajit/wechatpay/core.so

all: $(call sos,$(CRYPTO))

backends: $(call sos,openssl) $(call sos,mbedtls)

deps:
	@sh scripts/deps.sh

# Four runs (two backends by two runtimes), one "N passed, N failed" total.
# The specs' npm packages are installed first: no spec waits on the registry.
test: deps
	@sh scripts/deps.sh peer
	@$(MAKE) --no-print-directory backends
	@sh scripts/test.sh $(DIR_openssl) $(DIR_mbedtls)

valgrind: deps
	@sh scripts/deps.sh peer
	@$(MAKE) --no-print-directory backends
	@WECHATPAY_VALGRIND=1 sh scripts/test.sh $(DIR_openssl) $(DIR_mbedtls)

demo: deps
	@$(MAKE) --no-print-directory all
	@sh scripts/demo.sh
	@sh scripts/demo_batch.sh

bench: deps
	@$(MAKE) --no-print-directory backends
	@BUILD=$(DIR_openssl) MBEDTLS_BUILD=$(DIR_mbedtls) sh scripts/bench.sh

fuzz:
	@WECHATPAY_EXTRA_PACKAGES="clang libclang-rt-14-dev" sh scripts/deps.sh
	@sh scripts/fuzz.sh

clean:
	rm -rf build
