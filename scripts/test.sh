#!/usr/bin/env bash
# Sets everything up from nothing (scripts/setup.sh), then runs the C++ unit tests and the
# pytest suite, the vLLM tests (scripts/test_vllm.sh, their own venv; TENSORSTREAM_SKIP_VLLM=1
# skips them), a short fuzzing pass and the sanitizer builds. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY="${TENSORSTREAM_VENV:-.venv}/bin/python"

echo "==> C++ unit tests"
cmake -S . -B build/ctest -G Ninja -DTENSORSTREAM_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/ctest --target core_tests
./build/ctest/core_tests

echo "==> pytest"
"$PY" -m pytest "$@"

if [ "${TENSORSTREAM_SKIP_VLLM:-0}" != 1 ]; then
  echo "==> vLLM load format (tests_vllm, in a venv of their own)"
  bash scripts/test_vllm.sh
fi

echo "==> fuzzing (a short pass over every parser)"
bash scripts/fuzz.sh

echo "==> sanitizers (ASan + UBSan: C++ tests and pytest; TSan: C++ tests)"
bash scripts/sanitize.sh all "$@"
