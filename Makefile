# ferry — plain GNU Makefile.  `make`, `make check`, `make bench`, `make demo`,
# `make install`, `make clean`.  SANITIZE=1 builds with ASan/UBSan, V=1 echoes
# the commands.

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
PCDIR  ?= $(LIBDIR)/pkgconfig
VERSION := 0.1.0

CC      ?= cc
CXX     ?= g++
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow -pthread -MMD -MP
LDLIBS  += -lgnutls -lxxhash -pthread -lm
ifeq ($(SANITIZE),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer
LDFLAGS += -fsanitize=address,undefined
endif

ifeq ($(V),1)
Q :=
else
Q := @
endif

# Who may include what; includes point down only:
#   src/ (the engine)      its own headers, the public API, common/
#   vm/, workload/         the public API and the VMs' own public headers
#   tools/                 the public API and the VMs' public headers
#   tests/, bench/, fuzz/  anything
ENGINE_INC := -Iinclude -Isrc -Icommon
VM_INC     := -Iinclude -Ivm/include -Icommon -Iworkload
TOOL_INC   := -Iinclude -Ivm/include
TEST_INC   := -Iinclude -Ivm/include -Isrc -Icommon -Iworkload -Ivm/builtin \
	      -Ivm/kvm

# The KVM guest image (guest/): the workload's own sources built
# freestanding (no libc, XXH3 inlined from the same header), linked flat
# at the address vm/kvm/guest_abi.h gives, and carried inside
# libferry-vm.a (vm/kvm/image.S).  Not CFLAGS: no sanitizer, no PIE.
GUEST_CFLAGS := -std=c11 -O2 -ffreestanding -fno-pic -fno-pie \
	-mno-red-zone -mcmodel=small -fno-stack-protector \
	-fno-asynchronous-unwind-tables -fcf-protection=none \
	-fno-tree-loop-distribute-patterns -ffunction-sections \
	-fdata-sections -DXXH_INLINE_ALL -Wall -Wextra -Wshadow -MMD -MP \
	-Ivm/kvm -Iworkload -Icommon
GUEST_SRC := guest/main.c guest/lib.c workload/workload_gen.c \
	     workload/cell.c
GUEST_OBJ = $(GUEST_SRC:%.c=$(O)/guest/%.o) $(O)/guest/guest/entry.o
GUEST_BIN = $(O)/guest/guest.bin

O := build
LIB_SRC   := $(sort $(wildcard src/*/*.c))
VM_SRC    := $(sort $(wildcard vm/*/*.c workload/*.c))
TOOL_SRC  := $(sort $(wildcard tools/*.c))
TEST_SRC  := $(sort $(wildcard tests/*.c))
BENCH_SRC := $(sort $(wildcard bench/*.c))

LIB_OBJ   := $(LIB_SRC:%.c=$(O)/%.o)
PIC_OBJ   := $(LIB_SRC:%.c=$(O)/pic/%.o)
VM_OBJ    := $(VM_SRC:%.c=$(O)/%.o) $(O)/vm/kvm/image.o
TOOL_OBJ  := $(TOOL_SRC:%.c=$(O)/%.o)
TEST_OBJ  := $(TEST_SRC:%.c=$(O)/%.o)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(O)/bench/%)

STATIC := $(O)/libferry.a
SHARED := $(O)/libferry.so.$(VERSION)
SONAME := libferry.so.0
VMLIB  := $(O)/libferry-vm.a
TOOL   := $(O)/ferry
TESTS  := $(O)/tests/run

all: $(STATIC) $(SHARED) $(VMLIB) $(TOOL) $(TESTS)

$(O)/src/%.o: src/%.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS) $(ENGINE_INC) -c -o $@ $<

$(O)/pic/src/%.o: src/%.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC [pic] $<")
	$(Q)$(CC) $(CFLAGS) $(ENGINE_INC) -fPIC -c -o $@ $<

$(O)/vm/%.o: vm/%.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS) $(VM_INC) -c -o $@ $<

$(O)/guest/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC [guest] $<")
	$(Q)$(CC) $(GUEST_CFLAGS) -c -o $@ $<

$(O)/guest/guest/entry.o: guest/entry.S
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  AS [guest] $<")
	$(Q)$(CC) $(GUEST_CFLAGS) -c -o $@ $<

$(O)/guest/guest.elf: $(GUEST_OBJ) guest/guest.ld
	@$(if $(Q),echo "  LD [guest] $@")
	$(Q)$(LD) -nostdlib -static --gc-sections -T guest/guest.ld -o $@ \
		$(GUEST_OBJ) $(shell $(CC) -print-libgcc-file-name)

$(GUEST_BIN): $(O)/guest/guest.elf
	$(Q)objcopy -O binary $< $@

$(O)/vm/kvm/image.o: vm/kvm/image.S $(GUEST_BIN)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  AS      $<")
	$(Q)$(CC) -DGUEST_BIN='"$(GUEST_BIN)"' -c -o $@ $<

$(O)/workload/%.o: workload/%.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS) $(VM_INC) -c -o $@ $<

$(O)/tools/%.o: tools/%.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS) $(TOOL_INC) -c -o $@ $<

$(O)/tests/%.o: tests/%.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS) $(TEST_INC) -c -o $@ $<

$(STATIC): $(LIB_OBJ)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(VMLIB): $(VM_OBJ)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

# Only ferry_* leaves the shared library (src/libferry.map).
$(SHARED): $(PIC_OBJ) src/libferry.map
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) -shared -Wl,-soname,$(SONAME) \
		-Wl,--version-script=src/libferry.map $(LDFLAGS) -o $@ \
		$(PIC_OBJ) $(LDLIBS)
	$(Q)ln -sf libferry.so.$(VERSION) $(O)/$(SONAME)
	$(Q)ln -sf $(SONAME) $(O)/libferry.so

$(TOOL): $(TOOL_OBJ) $(VMLIB) $(STATIC)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $(TOOL_OBJ) $(VMLIB) $(STATIC) $(LDLIBS)

$(TESTS): $(TEST_OBJ) $(VMLIB) $(STATIC)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $(TEST_OBJ) $(VMLIB) $(STATIC) $(LDLIBS)

$(O)/bench/%: bench/%.c $(VMLIB) $(STATIC) bench/bench.h
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) $(TOOL_INC) -Ibench $(LDFLAGS) -o $@ $< $(VMLIB) $(STATIC) $(LDLIBS)

# Installs the Debian packages ferry needs (only those missing).
deps:
	scripts/install-deps

# First the include rules above (scripts/check-layout: one line per
# include that points the wrong way), the library's hygiene and the
# example VMM built against an installed copy.  Then the test runner,
# which forks each case with a time limit and prints "N passed, N failed,
# N skipped" last.  TESTFLAGS=-f NAME filters.
check: $(TESTS) $(TOOL) check-lib check-example
	scripts/check-layout
	$(TESTS) $(TESTFLAGS)

# libferry.so exports ferry_* only; the public headers build as C++17 (and
# link: a declaration without C linkage would not).
check-lib: $(SHARED)
	scripts/check-symbols $(O)/libferry.so
	@$(if $(Q),echo "  CXX     tests/cxx_headers.cc")
	$(Q)$(CXX) -std=c++17 -Wall -Wextra -pedantic -Werror -Iinclude \
		-Ivm/include -o $(O)/cxx_headers tests/cxx_headers.cc \
		-L$(O) -lferry
	$(Q)LD_LIBRARY_PATH=$(O) $(O)/cxx_headers >/dev/null

# The example VMM as a user builds it: ferry installed (here into a
# staging directory, as a package would be), then only <ferry/ferry.h>
# and `pkg-config --cflags --libs ferry`.  It runs every flow it shows and
# checks its own memory after each; a failure fails the check.
EXAMPLE_SRC := examples/minivmm.c examples/flows.c
STAGE := $(abspath $(O)/stage)
STAGE_PC := PKG_CONFIG_PATH=$(STAGE)/usr/lib/pkgconfig \
	    PKG_CONFIG_SYSROOT_DIR=$(STAGE)
check-example: all
	@rm -rf $(STAGE)
	@$(if $(Q),echo "  INSTALL $(STAGE)")
	$(Q)$(MAKE) --no-print-directory -s install DESTDIR=$(STAGE) \
		PREFIX=/usr >/dev/null
	@$(if $(Q),echo "  CC      $(EXAMPLE_SRC) (pkg-config ferry)")
	$(Q)$(CC) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow -Werror -O2 \
		-o $(O)/minivmm $(EXAMPLE_SRC) \
		$$($(STAGE_PC) pkg-config --cflags --libs ferry) -pthread
	LD_LIBRARY_PATH=$(STAGE)/usr/lib $(O)/minivmm

bench: $(BENCH_BIN) $(TOOL)
	bench/run

# ferry and QEMU side by side, interleaved on the same kind of memory:
# installs Debian's QEMU, nasm and gnuplot when they are missing, runs
# bench/qemu_migrate (ferry's side is build/bench/migrate) and writes the
# report again (bench/out/report.md).
bench-qemu: $(O)/bench/migrate
	bench/qemu/install
	FERRY_BENCH_COMMAND="make bench-qemu" bench/run qemu_migrate

# The main job on a built-in default: a live migration of the workload VM
# between two processes here, run on and verified at the destination.
demo: $(TOOL)
	$(TOOL) demo

# Made at install time, so it always names the PREFIX being installed to.
$(O)/ferry.pc: ferry.pc.in FORCE
	@mkdir -p $(O)
	$(Q)sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
		-e 's|@INCDIR@|$(INCDIR)|' -e 's|@VERSION@|$(VERSION)|' $< > $@

install: all $(O)/ferry.pc
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCDIR)/ferry \
		$(DESTDIR)$(INCDIR)/ferry-vm $(DESTDIR)$(BINDIR) \
		$(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(PCDIR)
	install -m 644 include/ferry/*.h $(DESTDIR)$(INCDIR)/ferry/
	install -m 644 vm/include/ferry-vm/*.h $(DESTDIR)$(INCDIR)/ferry-vm/
	install -m 644 $(STATIC) $(VMLIB) $(DESTDIR)$(LIBDIR)/
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/
	ln -sf libferry.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libferry.so
	install -m 755 $(TOOL) $(DESTDIR)$(BINDIR)/
	install -m 644 man/ferry.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 644 $(O)/ferry.pc $(DESTDIR)$(PCDIR)/

clean:
	rm -rf $(O)

FORCE:
.PHONY: all deps check check-lib check-example bench bench-qemu demo \
	install clean FORCE

-include $(shell find $(O) -path $(O)/nested -prune -o -type f -name '*.d' -print 2>/dev/null)
