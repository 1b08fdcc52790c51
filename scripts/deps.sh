#!/usr/bin/env bash
# Installs what geodino's build and tests need, with apt-get.  Idempotent,
# and silent when everything is already there.  --fuzz adds clang for the
# libFuzzer targets.
set -euo pipefail

packages=(make gcc libtiff-dev libmsgpack-dev libopenblas-dev libopenmpi-dev openmpi-bin
          bats bats-assert bats-support libpng-dev python3 python3-msgpack python3-numpy
          gdal-bin python3-gdal libtiff-tools gnuplot-nox)
[ "${1:-}" = "--fuzz" ] && packages+=(clang libclang-rt-14-dev)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
