#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, with ASan and UBSan) and runs each over its seed corpus in
# csrc/fuzz/corpus for a bounded time; any crash, hang, leak or sanitizer report fails the run and
# leaves the input in build/fuzz/artifacts. New inputs go to a scratch folder, not to the corpus.
#   FUZZ_SECONDS   seconds per target (default 20)
#   FUZZ_TARGETS   targets to run (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build/fuzz
SECONDS_EACH="${FUZZ_SECONDS:-20}"
# Longest input per target: the seed files are at most a few KiB.
declare -A MAX_LEN=([fuzz_index]=8192 [fuzz_load]=8192 [fuzz_tensor_header]=1024 [fuzz_crypt_info]=512
                    [fuzz_http_text]=1024 [fuzz_safetensors]=8192)
TARGETS=(${FUZZ_TARGETS:-fuzz_index fuzz_tensor_header fuzz_crypt_info fuzz_load fuzz_http_text fuzz_safetensors})

CC=clang CXX=clang++ cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTENSORSTREAM_FUZZ=ON >/dev/null
cmake --build "$BUILD" --target fuzz_targets

# Reports name functions and lines when llvm-symbolizer is found (Debian: llvm-14).
if [ -z "${ASAN_SYMBOLIZER_PATH:-}" ] && ! command -v llvm-symbolizer >/dev/null; then
  if command -v llvm-symbolizer-14 >/dev/null; then export ASAN_SYMBOLIZER_PATH="$(command -v llvm-symbolizer-14)"; fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$BUILD/artifacts"
for target in "${TARGETS[@]}"; do
  mkdir "$work/$target"
  log="$work/$target.log"
  if ! "$BUILD/csrc/fuzz/$target" "$work/$target" "csrc/fuzz/corpus/$target" -dict=csrc/fuzz/tensors.dict \
      -max_total_time="$SECONDS_EACH" -max_len="${MAX_LEN[$target]}" -timeout=10 -rss_limit_mb=1024 \
      -print_final_stats=1 -artifact_prefix="$BUILD/artifacts/$target-" >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "==> $target failed; the input is in $BUILD/artifacts" >&2
    exit 1
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  echo "==> $target: $runs inputs in ${SECONDS_EACH}s, clean"
done
