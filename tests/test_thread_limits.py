"""A process that may start no more threads (a container's or user's thread limit) still loads
and saves: the core's parallel steps run on the threads they get, and never terminate the process.

The child runs as an unprivileged user (root ignores RLIMIT_NPROC) and lowers its own limit to
the threads it already has plus one, so almost every thread the core asks for is refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

NOBODY = 65534

CHILD = textwrap.dedent(
    """
    import os, resource, sys
    import torch
    import tensorstream
    from tensorstream import TensorDeserializer, TensorSerializer

    folder = sys.argv[1]
    gen = torch.Generator().manual_seed(3)
    sd = {f"w{i}": torch.randn(256, 1024, generator=gen) for i in range(16)}
    tasks = len(os.listdir("/proc/self/task"))
    resource.setrlimit(resource.RLIMIT_NPROC, (tasks + 1, tasks + 1))
    path = os.path.join(folder, "m.tensors")
    with TensorSerializer(path, limit_cpu_concurrency=8) as s:
        s.write_state_dict(sd)
    for backend in ("posix", "uring"):
        os.environ["TENSORSTREAM_IO_BACKEND"] = backend
        with TensorDeserializer(path, num_readers=8, verify_hash=True) as d:
            assert all(torch.equal(d[k], v) for k, v in sd.items()), backend
    print("ok", tasks)
    """
)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_refused_threads_do_not_stop_loads_or_saves():
    folder = tempfile.mkdtemp(prefix="ts-threads-")
    try:
        os.chmod(folder, 0o777)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HOME": folder}
        as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-c"]
        probe = subprocess.run([*as_nobody, "import tensorstream"], env=env, capture_output=True, timeout=60)
        if probe.returncode != 0:
            pytest.skip("the interpreter or the package is not readable by an unprivileged user here")
        done = subprocess.run([*as_nobody, CHILD, folder], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.startswith("ok"), done.stdout
    finally:
        shutil.rmtree(folder, ignore_errors=True)
