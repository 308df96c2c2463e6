#!/usr/bin/env bash
# Checks a repaired wheel: it installs into a fresh virtualenv, imports, saves and loads a file,
# and its libcurl, liburing and libsodium come from the wheel itself (tensorstream.libs), not from
# the system.
#   bash scripts/check_wheel.sh wheelhouse/tensorstream-*.whl
# TENSORSTREAM_CHECK_TORCH_SITE: a site-packages folder that already holds torch and numpy, added
# to the fresh environment instead of installing them (saves the download).
set -euo pipefail
WHEEL="$1"
PY="${PYTHON:-python3}"
VENV="$(mktemp -d)/venv"
"$PY" -m venv "$VENV"
if [ -n "${TENSORSTREAM_CHECK_TORCH_SITE:-}" ]; then
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$TENSORSTREAM_CHECK_TORCH_SITE" > "$site/zz-torch.pth"  # after the venv's own packages
else
  "$VENV/bin/python" -m pip install -q torch numpy
fi
"$VENV/bin/python" -m pip install -q --no-deps --ignore-installed "$WHEEL"
cd "$(dirname "$VENV")"
"$VENV/bin/python" - <<'EOF'
import os, sys
import torch
import tensorstream

here = os.path.dirname(tensorstream.__file__)
assert here.startswith(sys.prefix), f"tensorstream imported from {here}, not the fresh environment"
tensorstream.save({"w": torch.arange(1000, dtype=torch.float32)}, "check.tensors")
loaded = tensorstream.load("check.tensors", verify_hash=True)
assert torch.equal(loaded["w"], torch.arange(1000, dtype=torch.float32))
maps = open("/proc/self/maps").read().split("\n")
libs = {line.split()[-1] for line in maps if ".so" in line}
for name in ("libcurl", "liburing", "libsodium"):
    found = [p for p in libs if os.path.basename(p).startswith(name)]
    assert found and all("tensorstream.libs" in p for p in found), (name, found)
    print(f"{name}: {found[0]}")
print("ok:", tensorstream.__version__, tensorstream.features())
EOF
