#!/usr/bin/env bash
# Fetches what benchmarks/gpu_check.sh needs on a GPU machine that reaches no package registry,
# on a machine that reaches Debian's archive and PyPI:
#   DEST/debs/    .deb files: the build dependencies (headers, pkg-config) and every library they
#                 need at run time, except the few every system has (libc, libstdc++, ...)
#   DEST/wheels/  wheels for CPython 3.12 on x86-64: tensorizer and what it needs beyond torch,
#                 numpy, protobuf and psutil, the build backend (pybind11, scikit-build-core), and
#                 the safetensors peers of bench_gpu.py (fastsafetensors, the Run:ai streamer)
#   DEST/python3.12-include/  CPython 3.12's headers, from a local Python 3.12 if there is one
#                 (used only where the GPU machine's Python has no Python.h)
# DEST defaults to .gpu-deps (ignored by git). Nothing is installed here.
#   bash benchmarks/fetch_gpu_deps.sh [DEST]
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-.gpu-deps}"
mkdir -p "$DEST/debs" "$DEST/wheels"

DEBS=(liburing-dev liburing2 libcurl4-openssl-dev libcurl4 zlib1g-dev zlib1g libssl-dev libssl3
      libsodium-dev libsodium23 pkgconf pkgconf-bin libpkgconf3)
# Present on every Debian or Ubuntu system, and unsafe to shadow: never carried.
ESSENTIAL='^(libc6|libc-dev-bin|libc6-dev|linux-libc-dev|libgcc-s1|libstdc\+\+6|gcc-.*-base|debconf|dpkg|perl-base|libcrypt1|libcrypt-dev|libselinux1|libpcre2-8-0|tar|install-info|sensible-utils)$'

if ! apt-cache show liburing-dev >/dev/null 2>&1; then
  echo "==> apt-get update"
  apt-get update -qq
fi
closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
            --no-replaces --no-enhances "${DEBS[@]}" | grep -E '^[a-z0-9]' | sort -u | grep -Ev "$ESSENTIAL")
echo "==> downloading $(echo "$closure" | wc -w) .deb files into $DEST/debs"
rm -f "$DEST"/debs/*.deb
(cd "$DEST/debs" && apt-get download -qq -o APT::Sandbox::User=root $closure)

# Versions as tested here; --no-deps so that pip never pulls torch or numpy.
WHEELS=(tensorizer==2.12.1 boto3==1.44.8 botocore==1.44.8 s3transfer==0.19.3 jmespath==1.1.0
        redis==8.1.0 hiredis==3.5.0 libnacl==2.1.0 pybind11==3.1.0 scikit-build-core==1.1.2
        fastsafetensors==0.5.0 runai-model-streamer==0.17.1 humanize==4.17.0)
PLATFORMS=()
for p in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 \
         manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${p}_x86_64")
done
echo "==> downloading wheels into $DEST/wheels"
rm -f "$DEST"/wheels/*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" --platform any -d "$DEST/wheels" "${WHEELS[@]}"

for py312 in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12.*/bin/python3.12 /usr/bin/python3.12 python3.12; do
  inc="$("$py312" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null)" || continue
  if [ -f "$inc/Python.h" ]; then
    rm -rf "$DEST/python3.12-include" && cp -r "$inc" "$DEST/python3.12-include"
    echo "==> CPython headers from $py312"
    break
  fi
done

du -sh "$DEST"/*
