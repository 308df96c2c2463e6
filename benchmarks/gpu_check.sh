#!/usr/bin/env bash
# The GPU check, in one go, on a GPU machine that reaches no package registry: builds tensorstream
# from the files that benchmarks/fetch_gpu_deps.sh fetched beforehand (.debs unpacked into a private
# prefix, no root apt; wheels installed into a private folder), runs the device tests (the CUDA
# ones included), then benchmarks/bench_gpu.py. Logs and results go to $OUT (default
# ./gpu-check-out): gpu_check.log, pytest.log, bench_gpu.json, bench_gpu.txt, bench_repeat.json,
# bench_repeat.txt, summary.txt.
#
#   bash benchmarks/gpu_check.sh [--cpu-dry-run] [--size-gib G] [--runs N] [--no-tests] [--no-bench]
#
# --cpu-dry-run: no GPU needed; the same steps with a small model and the benchmark's CPU dry run.
# Environment: PYTHON (default python3: must hold torch), TENSORSTREAM_GPU_DEPS (default .gpu-deps).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu-check-out}"
DEPS="${TENSORSTREAM_GPU_DEPS:-$ROOT/.gpu-deps}"
PY="${PYTHON:-python3}"
WORK="${TMPDIR:-/tmp}/tensorstream-gpu-check"
DRY=0; SIZE=2.0; RUNS=3; TESTS=1; BENCH=1
while (($#)); do
  case "$1" in
    --cpu-dry-run) DRY=1; SIZE=0.05; RUNS=1 ;;
    --size-gib) SIZE="$2"; shift ;;
    --runs) RUNS="$2"; shift ;;
    --no-tests) TESTS=0 ;;
    --no-bench) BENCH=0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
START=$SECONDS
STATUS=()
step() { echo; echo "==> [$((SECONDS - START)) s] $*"; }
record() { STATUS+=("$1: $2"); echo "--> $1: $2"; }

step "machine"
uname -srm; nproc
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| gpu', torch.cuda.is_available())" \
  || { record machine "FAIL: $PY cannot import torch"; exit 1; }

step "build dependencies from $DEPS/debs (unpacked into a private prefix)"
PREFIX="$WORK/prefix"
LIBDIR="$PREFIX/usr/lib/x86_64-linux-gnu"
rm -rf "$WORK"; mkdir -p "$PREFIX" "$WORK/bin" "$WORK/runtime" "$WORK/site"
shopt -s nullglob
debs=("$DEPS"/debs/*.deb)
for deb in "${debs[@]}"; do dpkg-deb -x "$deb" "$PREFIX" || record debs "FAIL: cannot unpack $deb"; done
echo "unpacked ${#debs[@]} packages"
if ((${#debs[@]})); then
  export PKG_CONFIG_LIBDIR="$LIBDIR/pkgconfig:$PREFIX/usr/share/pkgconfig"
  export PKG_CONFIG_SYSROOT_DIR="$PREFIX"
  export CMAKE_PREFIX_PATH="$PREFIX/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  # Multiarch headers (openssl/configuration.h, curl/) and libraries the compiler and linker
  # would otherwise look for under /usr only.
  export CPATH="$PREFIX/usr/include/x86_64-linux-gnu:$PREFIX/usr/include${CPATH:+:$CPATH}"
  export LIBRARY_PATH="$LIBDIR${LIBRARY_PATH:+:$LIBRARY_PATH}"
  if ! command -v pkg-config >/dev/null && [ -x "$PREFIX/usr/bin/pkgconf" ]; then
    printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec "%s" "$@"\n' "$LIBDIR" "$PREFIX/usr/bin/pkgconf" > "$WORK/bin/pkg-config"
    chmod +x "$WORK/bin/pkg-config"
    export PATH="$WORK/bin:$PATH"
  fi
  pkg-config --modversion liburing libsodium libcurl zlib libcrypto | paste -sd' ' | sed 's/^/versions: liburing libsodium libcurl zlib libcrypto = /'
fi

step "Python packages"
wheels=("$DEPS"/wheels/*.whl)
if "$PY" -c "import tensorizer, safetensors, pybind11, scikit_build_core, fastsafetensors, runai_model_streamer" 2>/dev/null; then
  echo "already importable: tensorizer, safetensors, pybind11, scikit-build-core, fastsafetensors, runai-model-streamer"
elif ((${#wheels[@]})); then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "${wheels[@]}" \
    || record wheels "FAIL: pip could not install the carried wheels"
fi
export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"

step "build tensorstream (pip wheel, no build isolation)"
if ! "$PY" -c "import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h'))" \
     2>/dev/null; then
  if [ -f "$DEPS/python3.12-include/Python.h" ]; then
    echo "this Python has no Python.h: using the carried CPython headers"
    export CMAKE_ARGS="-DPython_INCLUDE_DIR=$DEPS/python3.12-include ${CMAKE_ARGS:-}"
  else
    echo "this Python has no Python.h and none were carried: the build will fail"
  fi
fi
export CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
if "$PY" -m pip wheel -q --no-build-isolation --no-deps --no-index -w "$WORK/wheel" \
     --config-settings=build-dir="$WORK/skbuild" "$ROOT" > "$OUT/build.log" 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$WORK/site" "$WORK"/wheel/tensorstream-*.whl
  record build "ok ($(basename "$WORK"/wheel/tensorstream-*.whl))"
  grep -E '^(pkgcfg_lib_URING_uring|pkgcfg_lib_SODIUM_sodium|CURL_INCLUDE_DIR|OPENSSL_CRYPTO_LIBRARY|ZLIB_LIBRARY_RELEASE)[:=]' \
    "$WORK/skbuild/CMakeCache.txt" || true
else
  tail -40 "$OUT/build.log"
  record build "FAIL (see build.log)"
  printf '%s\n' "${STATUS[@]}" > "$OUT/summary.txt"
  exit 1
fi

step "run-time libraries the system lacks (linked from the prefix)"
CORE="$(ls "$WORK"/site/tensorstream/_core*.so)"
for _ in 1 2 3 4 5 6; do
  missing=$(LD_LIBRARY_PATH="$WORK/runtime" ldd "$CORE" | awk '/not found/ {print $1}')
  [ -z "$missing" ] && break
  for lib in $missing; do
    if [ -e "$LIBDIR/$lib" ]; then ln -sf "$LIBDIR/$lib" "$WORK/runtime/$lib"; else echo "not carried: $lib"; fi
  done
done
ls "$WORK/runtime"
export LD_LIBRARY_PATH="$WORK/runtime${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if (cd "$WORK" && "$PY" -c "import tensorstream as t, tensorstream._core as c; print(t.__file__); print(t.features()); print(c.cuda_driver())"); then
  record import ok
else
  record import FAIL
  printf '%s\n' "${STATUS[@]}" > "$OUT/summary.txt"
  exit 1
fi

if ((TESTS)); then
  step "tests: the device pipeline (stand-in and CUDA) and every cuda-marked test"
  export TENSORSTREAM_TEST_REQUIRE_CUDA=$((1 - DRY))
  (cd "$ROOT" && timeout 300 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_device_pipeline.py \
      && { timeout 120 "$PY" -m pytest -q -p no:cacheprovider -rs -m cuda tests \
             --ignore=tests/test_device_pipeline.py; r=$?; [ $r -eq 5 ] || exit $r; }) > "$OUT/pytest.log" 2>&1
  rc=$?  # (pytest's 5: no other cuda-marked tests)
  tail -25 "$OUT/pytest.log"
  record tests "$([ $rc -eq 0 ] && echo ok || echo "FAIL (exit $rc, see pytest.log)")"
fi

if ((BENCH)); then
  step "benchmark (size $SIZE GiB, $RUNS runs)"
  extra=(--ring-sweep 64 1024 --variant lanes1:TENSORSTREAM_RING_LANES=1
         --variant lanes4:TENSORSTREAM_RING_LANES=4,TENSORSTREAM_RING_SLOTS=8)
  ((DRY)) && extra=(--cpu-dry-run --ring-mb 8 --ring-sweep 2 --variant lanes1:TENSORSTREAM_RING_LANES=1)
  (cd "$ROOT" && timeout 330 "$PY" benchmarks/bench_gpu.py --size-gib "$SIZE" --runs "$RUNS" --budget-s 210 \
      --workdir "$WORK/bench" --out-dir "$OUT" "${extra[@]}")
  rc=$?
  record bench "$([ $rc -eq 0 ] && echo ok || echo "FAIL (exit $rc)")"
fi

if ((BENCH)); then
  step "many deserializers in a row (the pinned pool: loads 2..20 against load 1, pool off vs on)"
  rdev=cuda; rmb=100; ((DRY)) && { rdev=cpu; rmb=10; }
  (cd "$ROOT" && timeout 150 "$PY" benchmarks/bench_repeat.py --device "$rdev" --size-mb "$rmb" --runs "$RUNS" --loads 20 \
      --methods ts,ts-ring-nopool,tensorizer --workdir "$WORK/repeat" --json "$OUT/bench_repeat.json") \
      > "$OUT/bench_repeat.txt" 2>&1
  rc=$?
  cat "$OUT/bench_repeat.txt"
  record repeat "$([ $rc -eq 0 ] && echo ok || echo "FAIL (exit $rc)")"
fi

step "done"
printf '%s\n' "${STATUS[@]}" | tee "$OUT/summary.txt"
! grep -q FAIL "$OUT/summary.txt"
