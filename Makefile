# Builds priv/llama_cpp_ex_nif.so. Driven by `mix compile` (see the :llama_cpp_ex
# compiler in mix.exs), which passes LLAMA_* variables from scripts/llama_cpp.sh.
# The convenience targets at the bottom (demo, test, ...) are for people.

PRIV_DIR ?= $(CURDIR)/priv
NIF_SO = $(PRIV_DIR)/llama_cpp_ex_nif.so
MIX_APP_PATH ?= $(CURDIR)/_build/dev/lib/llama_cpp_ex
OBJ_DIR = $(MIX_APP_PATH)/obj

ERTS_INCLUDE_DIR ?= $(shell erl -noshell -eval 'io:format("~ts/erts-~ts/include/", [code:root_dir(), erlang:system_info(version)]), halt().')

C_SRCS = $(wildcard c_src/*.c)
CXX_SRCS = $(wildcard c_src/*.cpp)
OBJS = $(patsubst c_src/%.c,$(OBJ_DIR)/%.o,$(C_SRCS)) $(patsubst c_src/%.cpp,$(OBJ_DIR)/%.o,$(CXX_SRCS))

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

.PHONY: nif demo test test-all bench clean format

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

-include $(OBJS:.o=.d)

# ---- for people -------------------------------------------------------------

# Installs what is missing, builds llama.cpp + the NIF, and writes a story.
demo:
	scripts/setup.sh
	mix llama.generate --prompt "Once upon a time" -n 200

# Every test suite that runs on this machine (what CI runs).
test:
	scripts/setup.sh
	mix test --include model --include conformance --include slow

bench:
	scripts/setup.sh
	mix llama.bench

format:
	mix format
	clang-format -i c_src/*.c c_src/*.h c_src/*.cpp

clean:
	rm -rf $(NIF_SO) $(OBJ_DIR)
