# wechatpay-lua: `make` builds wechatpay.core for Lua 5.4 and LuaJIT 2.1,
# `make test` installs what is missing and runs the suite on both,
# `make demo` runs the example against the built-in mock WeChat Pay.
# Variables are named as LuaRocks names them so a packager can override them.

LUA54_INCDIR  ?= /usr/include/lua5.4
LUAJIT_INCDIR ?= /usr/include/luajit-2.1
CURL_INCDIR   ?= $(shell pkg-config --cflags-only-I libcurl 2>/dev/null)
CURL_LIBS     ?= $(shell pkg-config --libs libcurl 2>/dev/null || echo -lcurl)
# mbedTLS 2.28 on Debian 12 ships no .pc file
MBEDTLS_INCDIR ?=
MBEDTLS_LIBS  ?= -lmbedtls -lmbedx509 -lmbedcrypto
CC            ?= cc
CFLAGS        ?= -O2 -g
LIBFLAG       ?= -shared
WARNINGS       = -Wall -Wextra

ifeq ($(DEV),1)
# Strict warnings and the sanitizers; the interpreters are not instrumented,
# so scripts/test preloads the ASan runtime.
CFLAGS    = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
WARNINGS += -Werror -Wshadow -Wconversion -Wno-sign-conversion -Wstrict-prototypes \
            -Wmissing-prototypes -Wformat=2 -Wundef -Wcast-align
LIBFLAG  += -fsanitize=address,undefined
BUILD     = build/dev
else
BUILD     = build
endif

SRCS     = $(wildcard csrc/*.c)
HDRS     = $(wildcard csrc/*.h)
FUZZ_SRCS = $(wildcard csrc/fuzz_*.c)
MOD_SRCS = $(filter-out $(FUZZ_SRCS),$(SRCS))
ALL_CFLAGS = $(CFLAGS) $(WARNINGS) -std=c99 -D_POSIX_C_SOURCE=200809L -fPIC -fvisibility=hidden \
             $(CURL_INCDIR) $(MBEDTLS_INCDIR)
LIBS     = $(CURL_LIBS) $(MBEDTLS_LIBS) -lpthread

LUA54_SO  = $(BUILD)/lua5.4/wechatpay/core.so
LUAJIT_SO = $(BUILD)/luajit/wechatpay/core.so

.PHONY: all deps test valgrind demo bench fuzz clean

all: $(LUA54_SO) $(LUAJIT_SO)

$(BUILD)/obj/lua5.4/%.o: csrc/%.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -I$(LUA54_INCDIR) -c $< -o $@

$(BUILD)/obj/luajit/%.o: csrc/%.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -I$(LUAJIT_INCDIR) -c $< -o $@

# Never -llua: the interpreter that loads the module provides the Lua API.
$(LUA54_SO): $(MOD_SRCS:csrc/%.c=$(BUILD)/obj/lua5.4/%.o)
	@mkdir -p $(dir $@)
	$(CC) $(LIBFLAG) -o $@ $^ $(LIBS)

$(LUAJIT_SO): $(MOD_SRCS:csrc/%.c=$(BUILD)/obj/luajit/%.o)
	@mkdir -p $(dir $@)
	$(CC) $(LIBFLAG) -o $@ $^ $(LIBS)

deps:
	@sh scripts/deps.sh

test: deps
	@$(MAKE) --no-print-directory all
	@sh scripts/test.sh $(BUILD)

valgrind: deps
	@$(MAKE) --no-print-directory all
	@WECHATPAY_VALGRIND=1 sh scripts/test.sh $(BUILD)

demo: deps
	@$(MAKE) --no-print-directory all
	@sh scripts/demo.sh
	@sh scripts/demo_batch.sh

bench: deps
	@$(MAKE) --no-print-directory all
	@sh scripts/bench.sh

fuzz:
	@WECHATPAY_EXTRA_PACKAGES="clang libclang-rt-14-dev" sh scripts/deps.sh
	@sh scripts/fuzz.sh

clean:
	rm -rf build
