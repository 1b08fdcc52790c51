#!/usr/bin/env bash
# Runs every test suite of `make check` and prints, last, the sum of all of
# them as "check: N passed, N failed, N skipped".  GPU checks that could not
# run are counted as skipped, never as passed.  Exits 1 if anything failed.
set -u
cd "$(dirname "$0")/.."

passed=0 failed=0 skipped=0

# A runner that ends with "N passed, N failed[, N skipped]".
run_counted() {
    local label=$1; shift
    echo "== $label"
    local out rc
    out=$("$@" 2>&1); rc=$?
    printf '%s\n' "$out"
    local last p f s
    last=$(printf '%s\n' "$out" | tail -n 1)
    if [[ $last =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed(,\ ([0-9]+)\ skipped)?$ ]]; then
        p=${BASH_REMATCH[1]} f=${BASH_REMATCH[2]} s=${BASH_REMATCH[4]:-0}
    else
        echo "$label: no summary line (exit $rc)"
        p=0 f=1 s=0
    fi
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "$label: exited $rc"
        f=1
    fi
    passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
}

# bats in TAP form: "ok", "not ok", and "ok ... # skip".  The test files
# after the build directory (default: all of tests/cli).
run_bats() {
    local label=$1 bindir=$2; shift 2
    [ $# -gt 0 ] || set -- tests/cli
    echo "== $label"
    local out rc
    out=$(GEODINO_BIN="$bindir" bats --tap "$@" 2>&1); rc=$?
    printf '%s\n' "$out"
    local p f s
    s=$(printf '%s\n' "$out" | grep -c '^ok .* # skip' || true)
    p=$(printf '%s\n' "$out" | grep -c '^ok ' || true)
    f=$(printf '%s\n' "$out" | grep -c '^not ok ' || true)
    p=$((p - s))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "$label: bats exited $rc"
        f=1
    fi
    passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

run_counted "unit" build/test-unit
[ -x build/test-gpu ] && run_counted "gpu" build/test-gpu
run_bats "cli" "$PWD/bin"
run_counted "unit (ASan+UBSan)" build-asan/test-unit
# The CUDA backend's kernels on the CPU emulator (tests/emu), ASan+UBSan:
# real runs of the kernel code, but not of a GPU (see tests/emu/README.md)
run_counted "gpu checks on the CUDA emulator (ASan+UBSan)" build-emu/test-gpu
# a kernel that depends on the order of its threads or blocks differs here
GD_EMU_ORDER=reverse run_counted "gpu checks on the CUDA emulator, threads and blocks in reverse" \
    build-emu/test-gpu
run_counted "emulator self-test (ASan+UBSan)" build-emu/test-emu
# the tools that run on a GPU, with --device cuda on the emulator
GEODINO_TEST_DEVICE=cuda run_bats "cli of the GPU tools on the CUDA emulator (ASan+UBSan)" \
    "$PWD/build-emu/bin" tests/cli/dino-step.bats tests/cli/dino-serve.bats \
    tests/cli/dino-embed.bats tests/cli/ema-update.bats tests/cli/mpa-adapt.bats \
    tests/cli/dino-mpi.bats
run_bats "cli (ASan+UBSan)" "$PWD/build-asan/bin"

echo "check: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
