# Shared set-up for the bats tests.  Every test file starts with
#     load helpers
# and runs programs as "$BIN/tool".  GEODINO_BIN picks the build (make
# check runs the suite on bin/ and on the ASan build).
load /usr/lib/bats/bats-support/load.bash
load /usr/lib/bats/bats-assert/load.bash

ROOT=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
BIN=${GEODINO_BIN:-$ROOT/bin}
DATA=$ROOT/tests/data
PY=/usr/bin/python3   # Debian's python, which has numpy and msgpack
# The CLI tests compare against float64 references: keep dino-step and
# mpa-adapt on the CPU even where a GPU is present (tests/gpu checks the
# GPU against the CPU, make check-gpu runs it).  GEODINO_TEST_DEVICE=cuda
# runs them on the CUDA backend instead: make check does so for the GPU
# tools on the CUDA emulator (tests/emu), where they pass as on the CPU.
export GEODINO_DEVICE=${GEODINO_TEST_DEVICE:-cpu}
# GDAL must compute statistics, never read them from a stray .aux.xml
export GDAL_PAM_ENABLED=NO

# A scratch directory per test.
setup() {
    TMP=$(mktemp -d "${BATS_TMPDIR:-/tmp}/geodino-cli.XXXXXX")
}

teardown() {
    rm -rf "$TMP"
}
