# Build the plugin and the guest workloads; run the demo and the tests.
# `bash setup.sh` installs what these need first.

PY       ?= .venv/bin/python
BUILD    := build
CFLAGS   := -O2 -Wall -Wextra -std=gnu11
GUESTS   := $(patsubst guest/%.c,%,$(wildcard guest/*.c))
X86_CC   := gcc
ARM_CC   := aarch64-linux-gnu-gcc
GUEST_CFLAGS := -O2 -Wall -static -pthread -Iguest

PLUGIN   := $(BUILD)/libemu.so
X86_BINS := $(addprefix $(BUILD)/guest/x86_64/,$(GUESTS))
ARM_BINS := $(addprefix $(BUILD)/guest/arm64/,$(GUESTS))

.PHONY: build plugin guests bytecode demo test lint clean bench

build: plugin guests bytecode

# emu's own .pyc files, written even where PYTHONDONTWRITEBYTECODE is set:
# compiling the sources at every start costs ~0.15 s of each `emu run`.
bytecode:
	@$(PY) -m compileall -q emu

plugin: $(PLUGIN)

$(PLUGIN): $(wildcard plugin/*.c plugin/*.h) $(BUILD)/include/qemu-plugin.h
	$(CC) $(CFLAGS) -fPIC -shared -I$(BUILD)/include -Iplugin -o $@ $(filter %.c,$^)

guests: $(X86_BINS) $(ARM_BINS)

$(BUILD)/guest/x86_64/%: guest/%.c $(wildcard guest/*.h)
	@mkdir -p $(dir $@)
	$(X86_CC) $(GUEST_CFLAGS) -o $@ $<

$(BUILD)/guest/arm64/%: guest/%.c $(wildcard guest/*.h)
	@mkdir -p $(dir $@)
	$(ARM_CC) $(GUEST_CFLAGS) -o $@ $<

demo: build
	$(PY) -m emu.demo

lint:
	.venv/bin/ruff check emu tests benchmarks

test: build lint
	$(PY) -m pytest -q -rs

bench: build
	$(PY) benchmarks/run.py

clean:
	rm -rf $(BUILD)/libemu.so $(BUILD)/guest
