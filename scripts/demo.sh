#!/usr/bin/env bash
# Sets everything up from nothing (scripts/setup.sh), then runs the main job: save a real
# transformer model and load it back from a local file with tensorstream, tensorizer and
# torch.load, printing GB/s side by side. Extra arguments go to `python -m tensorstream.demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
"${TENSORSTREAM_VENV:-.venv}/bin/python" -m tensorstream.demo "$@"
