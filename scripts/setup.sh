#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine for tensorstream: system packages, a virtualenv,
# torch (installed first and pinned, so nothing pulls another build), and the package
# with its test and benchmark extras. Safe to run again; later runs are quick.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${TENSORSTREAM_VENV:-.venv}"
TORCH_SPEC="${TENSORSTREAM_TORCH:-torch==2.13.0}"
APT_PACKAGES=(build-essential pkg-config cmake ninja-build liburing-dev zlib1g-dev libssl-dev
              libsodium23 libsodium-dev libcurl4-openssl-dev openssl nginx python3-dev python3-venv
              clang libclang-rt-14-dev llvm-14)  # the last three: fuzzing (libFuzzer) with symbolized reports

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
echo "==> installing $TORCH_SPEC"
"$PY" -m pip install -q "$TORCH_SPEC"
echo "==> building and installing tensorstream (C++ core + Python package)"
"$PY" -m pip install -q ".[test,bench]"
"$PY" -c "import tensorstream; print('tensorstream', tensorstream.__version__, tensorstream.features())"
