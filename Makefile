# geodino: one Makefile, no generated build system.
#
#   make            lib/libcommon.a and bin/<tool>  (-O2 -g, warnings are errors)
#   make asan       the same with ASan + UBSan into build-asan/
#   make emu        the same with the CUDA backend on a CPU emulator into build-emu/
#   make check      install dependencies, build, run every test
#   make demo       install dependencies, build, run the main job on bundled data
#   make fuzz       libFuzzer targets for a bounded time (FUZZ_SECONDS each)
#   make bench      benchmarks (results are recorded by hand in BENCHMARKS.md)
#
# The CUDA part is built whenever nvcc is found (on PATH or in
# /usr/local/cuda/bin), and skipped with one line when it is not.

BUILD   ?= build
SAN     ?= 0
CC      ?= cc
ifeq ($(BUILD),build)
LIBDIR  := lib
BINDIR  := bin
else
LIBDIR  := $(BUILD)/lib
BINDIR  := $(BUILD)/bin
endif
OBJDIR  := $(BUILD)/obj

WARN     = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter -Wno-format-truncation
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -fopenmp -pthread $(WARN) -Ilibcommon -Ikernels -MMD -MP
LDLIBS   = -ltiff -lmsgpackc -lpng -lopenblas -lm -lpthread -fopenmp
ifeq ($(SAN),1)
SANFLAGS = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
CFLAGS  += $(SANFLAGS)
LDFLAGS += $(SANFLAGS)
endif

NVCC := $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
ifeq ($(SAN),1)
NVCC :=            # the CUDA runtime and ASan do not share an address space well
endif
# EMU=1: the CUDA sources built as C++ against the CPU emulator of the CUDA
# runtime and cuBLAS (tests/emu), so that test-gpu runs their kernels, with
# ASan and UBSan too, where there is no GPU (make emu)
EMU     ?= 0
ifeq ($(EMU),1)
NVCC    := tests/emu/cu2cpp.sh
endif
CUDA_HOME  := $(patsubst %/bin/nvcc,%,$(NVCC))
# --fmad=false: no multiply-add contraction in our kernels, so that the
# elementwise ops (EMA, AdamW, axpy, ...) round as the CPU backend does and
# give the same bits (ema-update's bit-for-bit test holds on either backend)
NVCCFLAGS  := -O2 -g -std=c++17 -Ilibcommon -Ikernels -MMD -MP -Xcompiler -Wall,-Wextra,-Werror -Werror all-warnings \
              --fmad=false -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80

LIB_SRC  := $(wildcard libcommon/*.c) $(wildcard kernels/cpu/*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(OBJDIR)/%.o)
TOOL_SRC := $(wildcard tools/*.c)
TOOLS    := $(TOOL_SRC:tools/%.c=$(BINDIR)/%)
UNIT_SRC := $(wildcard tests/unit/*.c)
UNIT_OBJ := $(UNIT_SRC:%.c=$(OBJDIR)/%.o)
UNIT_BIN := $(BUILD)/test-unit
CUDA_SRC := $(wildcard kernels/cuda/*.cu)
CUDA_OBJ := $(CUDA_SRC:%.cu=$(OBJDIR)/%.o)
ifeq ($(EMU),1)
CUDA_OBJ += $(OBJDIR)/tests/emu/emu.o
EMU_TEST := $(BUILD)/test-emu
EMU_CXXFLAGS = -std=c++17 -O2 -g -pthread -fopenmp -Itests/emu/include -Ilibcommon -Ikernels -MMD -MP \
               -Wall -Wextra -Werror -Wno-unused-parameter $(SANFLAGS)
endif
GPU_SRC  := $(wildcard tests/gpu/*.c)
GPU_BIN  := $(BUILD)/test-gpu

# With CUDA, libcommon's backend.c (GD_HAVE_CUDA) calls into libgdcuda,
# which calls back into libcommon (gd_errf): the two archives are one link
# group.  Programs that never open a backend pull nothing from libgdcuda,
# and --as-needed keeps the CUDA libraries out of them.
ifneq ($(NVCC),)
CUDA_LIB  := $(LIBDIR)/libgdcuda.a
ifeq ($(EMU),1)
LIBS      := -Wl,--start-group $(LIBDIR)/libcommon.a $(CUDA_LIB) -Wl,--end-group -lstdc++
else
LIBS      := -Wl,--start-group $(LIBDIR)/libcommon.a $(CUDA_LIB) -Wl,--end-group \
             -L$(CUDA_HOME)/lib64 -Wl,--as-needed -lcublas -lcudart -lstdc++ \
             -Wl,-rpath,$(CUDA_HOME)/lib64
endif
ALL_EXTRA := $(CUDA_LIB) $(GPU_BIN) $(EMU_TEST)
$(OBJDIR)/libcommon/backend.o: CFLAGS += -DGD_HAVE_CUDA
else
LIBS      := $(LIBDIR)/libcommon.a
endif
# sqrt without errno lets the optimizer loops vectorize (omp simd); the
# results are the same IEEE operations, bit for bit
$(OBJDIR)/kernels/cpu/cpu_ops.o: CFLAGS += -fno-math-errno
# test-gpu reuses the unit runner and the PyTorch parity replay
GPU_OBJ  := $(GPU_SRC:%.c=$(OBJDIR)/%.o) $(OBJDIR)/tests/unit/main.o $(OBJDIR)/tests/unit/parity.o

# ---- distributed training (issue 8) -----------------------------------------
# Plugins that dino-step dlopen()s only for a distributed run (libcommon/comm.h),
# so that a single process needs neither MPI nor NCCL at run time:
# geodino-mpi.so when mpicc is found, geodino-nccl.so when NCCL and nvcc are too.
MPICC    := $(shell command -v mpicc 2>/dev/null)
NCCL_H   := $(firstword $(wildcard $(CUDA_HOME)/include/nccl.h /usr/local/include/nccl.h /usr/include/nccl.h))
NCCL_LIB := $(firstword $(wildcard $(CUDA_HOME)/lib64/libnccl.so /usr/local/lib/libnccl.so /usr/lib/x86_64-linux-gnu/libnccl.so))
PLUGIN_CFLAGS = -std=c11 -D_GNU_SOURCE -O2 -g -fPIC -shared -pthread $(WARN) -Ilibcommon $(SANFLAGS)
ifneq ($(MPICC),)
DIST_LIBS := $(LIBDIR)/geodino-mpi.so
ifeq ($(EMU),1)
DIST_LIBS += $(LIBDIR)/geodino-nccl.so
else ifneq ($(and $(NVCC),$(NCCL_H),$(NCCL_LIB)),)
DIST_LIBS += $(LIBDIR)/geodino-nccl.so
endif
endif

$(LIBDIR)/geodino-mpi.so: kernels/dist/comm_mpi.c libcommon/comm.h
	@mkdir -p $(dir $@)
	$(MPICC) $(PLUGIN_CFLAGS) $< -o $@

ifeq ($(EMU),1)
# NCCL emulated over MPI (tests/emu/nccl_emu.c); the CUDA calls resolve to
# the emulator in the program, which exports its symbols (-rdynamic)
$(LIBDIR)/geodino-nccl.so: kernels/dist/comm_mpi.c tests/emu/nccl_emu.c libcommon/comm.h \
                           tests/emu/include/nccl.h tests/emu/include/cuda_runtime.h
	@mkdir -p $(dir $@)
	$(MPICC) $(PLUGIN_CFLAGS) -DGD_NCCL -Itests/emu/include kernels/dist/comm_mpi.c \
	    tests/emu/nccl_emu.c -o $@
LDFLAGS += -rdynamic
else
$(LIBDIR)/geodino-nccl.so: kernels/dist/comm_mpi.c libcommon/comm.h
	@mkdir -p $(dir $@)
	$(MPICC) $(PLUGIN_CFLAGS) -DGD_NCCL -isystem $(dir $(NCCL_H)) -isystem $(CUDA_HOME)/include \
	    $< -o $@ -L$(dir $(NCCL_LIB)) -L$(CUDA_HOME)/lib64 -lnccl -lcudart \
	    -Wl,-rpath,$(dir $(NCCL_LIB)) -Wl,-rpath,$(CUDA_HOME)/lib64
endif
# ---- end of distributed training ----------------------------------------------

.PHONY: all asan emu check check-gpu demo deps fuzz bench clean unit cli gpu
.DEFAULT_GOAL := all

all: $(LIBDIR)/libcommon.a $(TOOLS) $(UNIT_BIN) $(ALL_EXTRA) $(DIST_LIBS)
ifeq ($(MPICC),)
	@echo "make: mpicc not found: distributed training (lib/geodino-mpi.so) skipped"
endif
ifeq ($(NVCC),)
ifneq ($(SAN),1)
	@echo "make: nvcc not found: CUDA backend skipped"
endif
endif

$(OBJDIR)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

ifeq ($(EMU),1)
# the converted headers sit beside the converted sources, where their
# quoted #includes find them first
EMU_HDR := $(patsubst %,$(OBJDIR)/%,$(wildcard kernels/cuda/*.h))
$(OBJDIR)/kernels/cuda/%.h: kernels/cuda/%.h tests/emu/cu2cpp.sh
	@mkdir -p $(dir $@)
	tests/emu/cu2cpp.sh $< $@

$(OBJDIR)/%.o: %.cu tests/emu/cu2cpp.sh $(EMU_HDR)
	@mkdir -p $(dir $@)
	tests/emu/cu2cpp.sh $< $(OBJDIR)/$*.emu.cpp
	$(CXX) $(EMU_CXXFLAGS) -iquote $(dir $<) -c $(OBJDIR)/$*.emu.cpp -o $@

$(OBJDIR)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@
else
$(OBJDIR)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@
endif

$(LIBDIR)/libcommon.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(LIBDIR)/libgdcuda.a: $(CUDA_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BINDIR)/%: $(OBJDIR)/tools/%.o $(LIBDIR)/libcommon.a $(CUDA_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< $(LIBS) $(LDLIBS) -o $@

$(UNIT_BIN): $(UNIT_OBJ) $(LIBDIR)/libcommon.a $(CUDA_LIB)
	$(CC) $(LDFLAGS) $(UNIT_OBJ) $(LIBS) $(LDLIBS) -o $@

$(GPU_BIN): $(GPU_OBJ) $(CUDA_LIB) $(LIBDIR)/libcommon.a
	$(CC) $(LDFLAGS) $(GPU_OBJ) $(LIBS) $(LDLIBS) -o $@

$(BUILD)/test-emu: $(OBJDIR)/tests/emu/test_emu.o $(OBJDIR)/tests/unit/main.o $(CUDA_LIB)
	$(CC) $(LDFLAGS) $(OBJDIR)/tests/emu/test_emu.o $(OBJDIR)/tests/unit/main.o $(LIBS) $(LDLIBS) -o $@

# The GPU checks, then compute-sanitizer's memcheck on one training step
# when it is installed.  Without a CUDA build or a GPU: says so, exits 0,
# and claims no pass.
check-gpu: all
ifeq ($(NVCC),)
	@echo "check-gpu: this build has no CUDA backend (nvcc not found): nothing checked"
else
	@out=$$($(GPU_BIN)); rc=$$?; printf '%s\n' "$$out"; \
	if printf '%s\n' "$$out" | grep -q 'skipped: no GPU'; then \
		echo "check-gpu: no GPU on this machine: nothing checked, nothing passed"; exit 0; fi; \
	[ $$rc -eq 0 ] || exit $$rc; \
	san=$$(command -v compute-sanitizer || ls $(CUDA_HOME)/bin/compute-sanitizer 2>/dev/null); \
	if [ -z "$$san" ]; then echo "check-gpu: compute-sanitizer not found: memcheck not run"; \
	else $$san --tool memcheck --error-exitcode 1 $(GPU_BIN) cuda_dino_one_step || exit 1; \
		echo "check-gpu: memcheck clean on one step"; fi; \
	tests/cli/one_rank.sh cuda; rc=$$?; \
	if [ $$rc -eq 77 ]; then echo "check-gpu: the NCCL one-rank check did not run"; \
	elif [ $$rc -ne 0 ]; then exit $$rc; fi
endif

asan:
	$(MAKE) BUILD=build-asan SAN=1 all

# the CUDA backend on the CPU emulator, with ASan and UBSan: build-emu/test-gpu
emu:
	$(MAKE) BUILD=build-emu SAN=1 EMU=1 all

deps:
	@scripts/deps.sh

check: deps
	$(MAKE) all
	$(MAKE) asan
	$(MAKE) emu
	scripts/check.sh

demo: deps
	$(MAKE) all
	scripts/demo.sh

fuzz: deps
	@scripts/deps.sh --fuzz
	$(MAKE) -f tests/fuzz/fuzz.mk

bench: all
	@for b in bench/*.sh; do echo "== $$b"; $$b || exit 1; done

clean:
	rm -rf build build-asan build-emu build-fuzz lib bin

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
