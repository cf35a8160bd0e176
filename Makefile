# Builds the NIF into the Mix build path: objects under $(MIX_APP_PATH)/obj and
# the library in $(MIX_APP_PATH)/priv/llama_cpp_ex_nif.so, where
# :code.priv_dir(:llama_cpp_ex) finds it and `mix release` copies it from.
# Nothing is written into the source tree (deps/llama_cpp_ex/ for a dependency).
# Driven by `mix compile` (see the :llama_cpp_ex compiler in mix.exs), which
# passes MIX_APP_PATH (Mix.Project.app_path()), ERTS_INCLUDE_DIR and the
# LLAMA_* variables from scripts/llama_cpp.sh.
# The convenience targets at the bottom (demo, test, ...) are for people.

MIX_APP_PATH ?= $(CURDIR)/_build/dev/lib/llama_cpp_ex
PRIV_DIR = $(MIX_APP_PATH)/priv
OBJ_DIR = $(MIX_APP_PATH)/obj
NIF_SO = $(PRIV_DIR)/llama_cpp_ex_nif.so

# Only evaluated when a compile runs without it (mix passes it).
ERTS_INCLUDE_DIR ?= $(shell erl -noshell -eval 'io:format("~ts/erts-~ts/include/", [code:root_dir(), erlang:system_info(version)]), halt().')

C_SRCS = $(wildcard c_src/*.c)
CXX_SRCS = $(wildcard c_src/*.cpp)
OBJS = $(patsubst c_src/%.c,$(OBJ_DIR)/%.o,$(C_SRCS)) $(patsubst c_src/%.cpp,$(OBJ_DIR)/%.o,$(CXX_SRCS))

# The same NIF built with AddressSanitizer (llama.cpp itself is not
# instrumented), next to the normal one, with objects of its own. Built by
# `mix compile.llama_cpp_ex --asan`, loaded instead of the normal one when
# LLAMA_CPP_EX_NIF is llama_cpp_ex_nif_asan. See scripts/test_asan.sh.
ASAN_SO = $(PRIV_DIR)/llama_cpp_ex_nif_asan.so
ASAN_OBJ_DIR = $(MIX_APP_PATH)/obj_asan
ASAN_OBJS = $(patsubst c_src/%.c,$(ASAN_OBJ_DIR)/%.o,$(C_SRCS)) $(patsubst c_src/%.cpp,$(ASAN_OBJ_DIR)/%.o,$(CXX_SRCS))
ASAN_FLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

WARN = -Wall -Wextra -Wno-unused-parameter
COMMON_FLAGS = -fPIC -fvisibility=hidden -O2 -g -MMD -MP \
	-I$(ERTS_INCLUDE_DIR) -I$(LLAMA_SRC)/include -I$(LLAMA_SRC)/ggml/include
CFLAGS += -std=c11 $(WARN) $(COMMON_FLAGS) $(NIF_CFLAGS)
CXXFLAGS += -std=c++17 $(WARN) $(COMMON_FLAGS) $(NIF_CFLAGS)

UNAME_S := $(shell uname -s)
ifeq ($(UNAME_S),Darwin)
	SO_LDFLAGS = -dynamiclib -undefined dynamic_lookup
else
	SO_LDFLAGS = -shared -Wl,--exclude-libs,ALL
endif

.PHONY: nif nif-asan demo serve test test-asan bench clean format

nif: $(NIF_SO)

$(NIF_SO): $(OBJS) $(LLAMA_LIBS)
	@mkdir -p $(PRIV_DIR)
	$(CXX) $(SO_LDFLAGS) -o $@ $(OBJS) $(LLAMA_LIBS) $(LLAMA_LDFLAGS)

$(OBJ_DIR)/%.o: c_src/%.c
	@mkdir -p $(OBJ_DIR)
	$(CC) $(CFLAGS) -c $< -o $@

$(OBJ_DIR)/%.o: c_src/%.cpp
	@mkdir -p $(OBJ_DIR)
	$(CXX) $(CXXFLAGS) -c $< -o $@

nif-asan: $(ASAN_SO)

$(ASAN_SO): $(ASAN_OBJS) $(LLAMA_LIBS)
	@mkdir -p $(PRIV_DIR)
	$(CXX) $(SO_LDFLAGS) $(ASAN_FLAGS) -o $@ $(ASAN_OBJS) $(LLAMA_LIBS) $(LLAMA_LDFLAGS)

$(ASAN_OBJ_DIR)/%.o: c_src/%.c
	@mkdir -p $(ASAN_OBJ_DIR)
	$(CC) $(CFLAGS) $(ASAN_FLAGS) -c $< -o $@

$(ASAN_OBJ_DIR)/%.o: c_src/%.cpp
	@mkdir -p $(ASAN_OBJ_DIR)
	$(CXX) $(CXXFLAGS) $(ASAN_FLAGS) -c $< -o $@

-include $(OBJS:.o=.d) $(ASAN_OBJS:.o=.d)

# ---- for people -------------------------------------------------------------

# Installs what is missing, builds llama.cpp + the NIF, and writes a story.
demo:
	scripts/setup.sh
	mix llama.generate --prompt "Once upon a time" -n 200

# Installs what is missing, builds, and serves the shared model over the
# OpenAI-compatible API on http://127.0.0.1:8080 (chat page at /).
# ARGS="--port 9000 --parallel 8" passes options to mix llama.server.
serve:
	scripts/setup.sh
	mix llama.server $(ARGS)

# Removes what the compiler built, for every Mix environment.
clean:
	mix clean

# Every test suite that runs on this machine (what CI runs): all tests, then
# the model tests again with the NIF built with AddressSanitizer + UBSan.
test:
	scripts/setup.sh
	mix test --include model --include conformance --include slow
	scripts/test_asan.sh

test-asan:
	scripts/setup.sh
	scripts/test_asan.sh

bench:
	scripts/setup.sh
	mix llama.bench

format:
	mix format
	clang-format -i c_src/*.c c_src/*.h c_src/*.cpp
