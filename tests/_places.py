"""Helpers several suites share: where a Hugging Face save goes and is read back from (a folder,
nginx, moto S3), and dropping a file from the page cache (the benchmarks' ``evict``)."""

from __future__ import annotations

import os

import pytest

from tensorstream import _core

import _http_servers  # noqa: F401 - puts benchmarks/ on the path
from _system import evict  # noqa: E402,F401 - re-exported: the benchmarks' page-cache eviction


def save_and_load_place(request, tmp_path, monkeypatch, stem: str) -> tuple[str, str]:
    """(where to save, where to load from) for the medium ``request.param`` names: "file",
    "http" (a folder nginx serves) or "s3" (a moto bucket, with its credentials in the
    environment)."""
    kind = request.param
    if kind != "file" and getattr(_core, "HttpSource", None) is None:
        pytest.skip("the core was built without libcurl")
    if kind == "file":
        return str(tmp_path / stem), str(tmp_path / stem)
    if kind == "http":
        nginx = request.getfixturevalue("nginx")
        name = f"{stem}-{os.getpid()}-{request.node.name}".replace("[", "-").replace("]", "")
        return str(nginx.root / name), nginx.url(name + "/")
    s3 = request.getfixturevalue("moto_s3")
    bucket = s3.create_bucket()
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    return f"s3://{bucket}/{stem}s/tiny/", f"s3://{bucket}/{stem}s/tiny"


