#!/usr/bin/env python3
"""Time a load across N local ranks (``process_group=``) against every rank loading alone.

Starts ``--ranks`` processes in one gloo group on loopback (torch.multiprocessing), then in each
method's turn every rank loads the same URI at once: ``coop`` with the group, ``alone`` without
it (each rank reads the whole file, as without tensorstream's group support). Each rank checks
its tensors against a checksum of the first method's, and rank 0 prints one row per method:
wall seconds (slowest rank), bytes read by all ranks together, and GB/s of the file per rank.

With no URI, ``--make-mb`` writes a synthetic ``.tensors`` file of that size to a temporary folder.
``--device cuda`` with ``--backend nccl`` is the GPU form (one GPU per rank). Not run at size here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import tempfile
import time
import zlib

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tensorstream


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _checksum(tensors: dict) -> int:
    crc = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        crc = zlib.crc32(name.encode(), crc)
        if t.numel():
            crc = zlib.crc32(t.view(-1).view(torch.uint8).numpy().tobytes(), crc)
    return crc


def _one(method: str, args: argparse.Namespace, device: str) -> tuple[float, int, int]:
    group = True if method == "coop" else None
    dist.barrier()
    start = time.perf_counter()
    with tensorstream.TensorDeserializer(args.uri, device=device, process_group=group,
                                         verify_hash=args.verify_hash) as d:
        tensors = dict(d.items())
        nread = d.total_bytes_read
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, nread, _checksum(tensors)


def _rank(rank: int, args: argparse.Namespace, port: int) -> None:
    dist.init_process_group(args.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=args.ranks, timeout=datetime.timedelta(seconds=args.timeout))
    from tensorstream import _cooperative

    _cooperative.BATCH_BYTES = args.batch_mb << 20
    device = f"cuda:{rank}" if args.device == "cuda" else "cpu"
    rows = []
    for method in args.methods.split(","):
        seconds, nread, crc = _one(method, args, device)
        gathered: list = [None] * args.ranks
        dist.all_gather_object(gathered, (seconds, nread, crc))
        rows.append({"method": method, "seconds": max(g[0] for g in gathered),
                     "bytes_read": sum(g[1] for g in gathered), "same": len({g[2] for g in gathered}) == 1,
                     "checksum": gathered[0][2]})
    if rank == 0:
        _report_rows(rows, args)
    dist.destroy_process_group()


def _report_rows(rows: list[dict], args: argparse.Namespace) -> None:
    size = os.path.getsize(args.uri) if os.path.exists(args.uri) else None
    ok = all(r["same"] for r in rows) and len({r["checksum"] for r in rows}) == 1
    for r in rows:
        rate = f", {size / r['seconds'] / 1e9:.2f} GB/s per rank" if size else ""
        read = r["bytes_read"] / 1e6
        print(f"{r['method']:>6}: {r['seconds']:.3f} s, {read:.1f} MB read by {args.ranks} ranks{rate}")
    print("tensors equal on every rank and method" if ok else "MISMATCH between ranks or methods")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ranks": args.ranks, "file_bytes": size, "rows": rows, "ok": ok}, f, indent=1)
    if not ok:
        sys.exit(1)


def _make(folder: str, mb: int) -> str:
    path = os.path.join(folder, "model.tensors")
    g = torch.Generator().manual_seed(0)
    n = max(mb * (1 << 20) // (4 * 1024 * 256), 1)
    tensorstream.save({f"layers.{i}.weight": torch.randn(1024, 256, generator=g) for i in range(n)}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("uri", nargs="?", help="file, URL or s3:// URI (default: a synthetic file)")
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--methods", default="coop,alone", help="comma-separated: coop, alone")
    parser.add_argument("--make-mb", type=int, default=64, help="size of the synthetic file")
    parser.add_argument("--batch-mb", type=int, default=64, help="bytes each rank reads per round")
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--verify-hash", action="store_true")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.uri is None:
            args.uri = _make(folder, args.make_mb)
        mp.spawn(_rank, args=(args, _free_port()), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main()
