#!/bin/sh
# cu2cpp.sh IN.cu OUT.cpp: a CUDA source as C++ for the CPU emulator.
# The only syntax C++ lacks is the launch, k<<<config>>>(args), which
# becomes GD_EMU_LAUNCH(k, config)(args) (tests/emu/include/cuda_runtime.h).
# A launch this rule does not rewrite (split over lines, say) is an error.
set -eu
in=$1 out=$2
{
    printf '#line 1 "%s"\n' "$in"
    sed -E 's/([A-Za-z_][A-Za-z0-9_:]*)<<<(.*)>>>\(/GD_EMU_LAUNCH(\1, \2)(/' "$in"
} >"$out.tmp"
if grep -n '<<<\|>>>' "$out.tmp" >&2; then
    echo "cu2cpp: $in: a kernel launch the emulator cannot rewrite (above)" >&2
    rm -f "$out.tmp"
    exit 1
fi
mv "$out.tmp" "$out"
