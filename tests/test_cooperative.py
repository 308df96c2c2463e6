"""Loading across the ranks of a torch.distributed group (``process_group=``), with real processes.

Four worker processes (``_coop_worker.py``) join one gloo group on loopback for the whole module
and run each scenario on command; every rank's tensors are compared with a plain load made here.
The failure scenarios that break a group (a rank that exits, a rank that never comes) run in
groups of their own with a short timeout, and so does a launch through torchrun.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import tensorstream
from tensorstream import _coop_plan, _cooperative, _group, _loading, _native, _sources
from _coop_worker import model, summary
from _http_servers import free_port

WORKER = str(Path(__file__).with_name("_coop_worker.py"))
PACKAGE_ROOT = str(Path(tensorstream.__file__).resolve().parents[1])
KEY = bytes(range(32))
SMALL_BATCH = 256 << 10  # several rounds over the few-MB test files


class Ranks:
    """``world`` worker processes in one gloo group; ``run`` sends a command to all and collects
    one answer from each (a missing answer within ``timeout`` fails the test, never hangs it)."""

    def __init__(self, world: int, log_dir: Path, timeout: float = 30.0, launcher: list[str] | None = None):
        self.world = world
        self.port = free_port()
        self.answers: list[queue.Queue] = [queue.Queue() for _ in range(world)]
        self.logs = [log_dir / f"rank{r}-{self.port}.log" for r in range(world)]
        self.procs = [self._start(r, timeout) for r in range(world)]

    def _start(self, rank: int, timeout: float) -> subprocess.Popen:
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(self.world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(self.port), COOP_TIMEOUT=str(timeout),
                   PYTHONPATH=os.pathsep.join([PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")]))
        with open(self.logs[rank], "wb") as log:
            proc = subprocess.Popen([sys.executable, WORKER], env=env, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=log, text=True)
        threading.Thread(target=self._collect, args=(proc, self.answers[rank]), daemon=True).start()
        return proc

    @staticmethod
    def _collect(proc: subprocess.Popen, answers: queue.Queue) -> None:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                answers.put(json.loads(line[7:]))
        answers.put({"ok": False, "type": "Exited", "code": proc.wait()})

    def send(self, rank: int, cmd: dict) -> None:
        self.procs[rank].stdin.write(json.dumps(cmd) + "\n")
        self.procs[rank].stdin.flush()

    def answer(self, rank: int, timeout: float) -> dict:
        try:
            return self.answers[rank].get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"rank {rank} gave no answer within {timeout} s; its log: {self.log(rank)}")

    def run(self, cmd: dict, per_rank: dict[int, dict] | None = None, timeout: float = 60) -> list[dict]:
        for rank in range(self.world):
            self.send(rank, {**cmd, **(per_rank or {}).get(rank, {})})
        return [self.answer(rank, timeout) for rank in range(self.world)]

    def log(self, rank: int) -> str:
        return self.logs[rank].read_text(errors="replace")[-3000:]

    def close(self) -> None:
        for rank, proc in enumerate(self.procs):
            if proc.poll() is None:
                try:
                    self.send(rank, {"op": "quit"})
                except OSError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ------------------------------------------------------------------------------------------ data


def _state_dict() -> dict[str, torch.Tensor]:
    """About 3 MB in tensors of many sizes and dtypes, an empty one and a scalar."""
    g = torch.Generator().manual_seed(1)
    out = {}
    for i in range(18):
        out[f"layers.{i}.weight"] = torch.randn(64 + 29 * i, 48, generator=g)
        out[f"layers.{i}.bias"] = torch.randn(64 + 29 * i, generator=g).to(torch.bfloat16)
    out["embed"] = torch.randn(900, 256, generator=g)  # one tensor larger than a batch
    out["steps"] = torch.arange(1000, dtype=torch.int64)
    out["half"] = torch.randn(333, 7, generator=g).half()
    out["empty"] = torch.empty(0, 5)
    out["scale"] = torch.tensor(3.5)
    return out


def _shards(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A safetensors checkpoint of two shards and its index; returns the index's path."""
    from safetensors.torch import save_file

    names = list(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, part in halves.items():
        save_file({n: tensors[n].contiguous() for n in part}, str(folder / shard))
        weight_map.update((n, shard) for n in part)
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def _data_offset(path: Path, name: str) -> int:
    index = _native.read_index(_sources.open_source(str(path)))
    return next(e.data_offset for e in index.entries if e.name.decode() == name)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("coop")
    tensors = _state_dict()
    out = {"plain": base / "model.tensors", "sealed": base / "sealed.tensors", "bad": base / "bad.tensors",
           "module": base / "module.tensors", "other": base / "other.tensors"}
    tensorstream.save(tensors, out["plain"])
    with tensorstream.TensorSerializer(out["sealed"], encryption=tensorstream.EncryptionParams(KEY)) as s:
        s.write_state_dict(tensors)
    raw = bytearray(out["plain"].read_bytes())
    raw[_data_offset(out["plain"], "scale")] ^= 0xFF  # the last tensor: the last rank's share
    out["bad"].write_bytes(raw)
    tensorstream.save(model(), out["module"])
    tensorstream.save({"only": torch.ones(10)}, out["other"])
    shards = base / "shards"
    shards.mkdir()
    out["index"] = _shards(shards, tensors)
    return out


def reference(path, **kwargs) -> dict:
    with tensorstream.TensorDeserializer(str(path), device="cpu", **kwargs) as d:
        return summary(dict(d.items()))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    team = Ranks(4, tmp_path_factory.mktemp("coop-logs"))
    yield team
    team.close()


def assert_all_match(answers: list[dict], expected: dict, ranks: Ranks | None = None) -> None:
    for rank, got in enumerate(answers):
        assert got.get("ok"), f"rank {rank}: {got}" + (f"\n{ranks.log(rank)}" if ranks else "")
        assert got["tensors"] == expected, f"rank {rank} differs from a plain load"


def assert_failed_everywhere(answers: list[dict], rank: int | None, error_type: str | None) -> None:
    for r, got in enumerate(answers):
        assert not got.get("ok") and got["type"] == "RankFailedError", f"rank {r}: {got}"
        assert got["rank"] == rank and got["error_type"] == error_type, f"rank {r}: {got}"
        if rank is not None:
            assert f"rank {rank}" in got["message"]


# ---------------------------------------------------------------------------------- plain loads


def test_four_ranks_read_a_quarter_each_and_all_get_every_tensor(ranks, files):
    answers = ranks.run({"op": "load", "uri": str(files["plain"]), "verify_hash": True, "batch": SMALL_BATCH})
    assert_all_match(answers, reference(files["plain"]), ranks)
    total = sum(r.nbytes for r in _records(files["plain"]))
    shares = [a["bytes_read"] for a in answers]
    assert sum(shares) == total  # each tensor read by exactly one rank
    assert max(shares) < total / 2  # and no rank read most of it


def test_subgroup_with_filter_and_dtype(ranks, files):
    cmd = {"op": "load", "uri": str(files["plain"]), "group": "pair", "prefix": "layers.", "dtype": "float16",
           "batch": SMALL_BATCH}
    answers = ranks.run(cmd)
    assert answers[2] == answers[3] == {"skipped": True}
    expected = reference(files["plain"], filter_func=lambda n: n.startswith("layers."), dtype=torch.float16)
    assert_all_match(answers[:2], expected, ranks)


def test_per_tensor_destinations_go_through_staging(ranks, files):
    """The GPU path's shape (one allocation per tensor, packed staging) with the core's host
    stand-in for the device copy."""
    cmd = {"op": "load", "uri": str(files["plain"]), "batch": SMALL_BATCH, "stage": 64 << 10,
           "configure": {"device_standin": "host"}}
    assert_all_match(ranks.run(cmd), reference(files["plain"]), ranks)


def test_sharded_safetensors(ranks, files):
    answers = ranks.run({"op": "load", "uri": str(files["index"]), "batch": SMALL_BATCH})
    assert_all_match(answers, reference(files["index"]), ranks)


def test_encrypted_file(ranks, files):
    answers = ranks.run({"op": "load", "uri": str(files["sealed"]), "key": KEY.hex(), "verify_hash": True})
    assert_all_match(answers, reference(files["plain"]), ranks)


def test_load_and_load_module(ranks, files):
    answers = ranks.run({"op": "load", "uri": str(files["plain"]), "api": "load"})
    assert_all_match(answers, reference(files["plain"]), ranks)
    answers = ranks.run({"op": "load", "uri": str(files["module"]), "api": "load_module"})
    assert_all_match(answers, summary(model().state_dict()), ranks)


def test_http_serves_the_file_about_once(ranks, files, nginx):
    folder = nginx.root / f"coop-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    (folder / "model.tensors").write_bytes(files["plain"].read_bytes())
    url = nginx.url(f"{folder.name}/model.tensors")
    answers = ranks.run({"op": "load", "uri": url, "verify_hash": True, "batch": SMALL_BATCH})
    assert_all_match(answers, reference(files["plain"]), ranks)
    size = files["plain"].stat().st_size
    served = _bytes_served(nginx.access_log, f"/{folder.name}/model.tensors")
    # Each rank opens the file (one read of up to 256 KiB: header, index and what follows), then
    # reads its share: the file's bytes once in all, plus the four opening reads; not four files.
    assert size <= served <= size + 4 * (256 << 10) + 4096, (served, size)


def _bytes_served(log: Path, path: str) -> int:
    pattern = re.compile(r'"GET (\S+) HTTP/[\d.]+" \d+ (\d+)')
    total = 0
    for _ in range(20):  # nginx writes each line when its response is done
        lines = log.read_text().splitlines()
        total = sum(int(m.group(2)) for m in map(pattern.search, lines) if m and m.group(1) == path)
        if total:
            break
        time.sleep(0.05)
    return total


def _aws_env(moto) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": moto.access_key, "AWS_SECRET_ACCESS_KEY": moto.secret_key,
            "AWS_ENDPOINT_URL": moto.endpoint, "AWS_REGION": moto.region}


def test_s3_sharded_checkpoint_and_a_missing_object(ranks, files, moto_s3):
    bucket = moto_s3.create_bucket()
    for path in files["index"].parent.iterdir():
        moto_s3.put_object(bucket, f"ckpt/{path.name}", path.read_bytes())
    env = _aws_env(moto_s3)
    answers = ranks.run({"op": "load", "uri": f"s3://{bucket}/ckpt/", "env": env, "batch": SMALL_BATCH})
    assert_all_match(answers, reference(files["index"]), ranks)
    answers = ranks.run({"op": "load", "uri": f"s3://{bucket}/ckpt/model.safetensors", "env": env})
    assert_failed_everywhere(answers, 0, "NotFoundError")
    assert all(a["cause"] == "NotFoundError" for a in answers)  # every rank missed it itself
    assert set(answers[0]["failures"]) == {"0", "1", "2", "3"}


# ------------------------------------------------------------------------------------- failures


def test_missing_file_on_one_rank(ranks, files):
    answers = ranks.run({"op": "load", "uri": str(files["plain"])}, per_rank={1: {"uri": str(files["plain"]) + ".x"}})
    assert_failed_everywhere(answers, 1, "FileNotFoundError")
    assert answers[1]["cause"] == "FileNotFoundError" and answers[0]["cause"] is None


def test_hash_mismatch_in_one_share(ranks, files):
    answers = ranks.run({"op": "load", "uri": str(files["bad"]), "verify_hash": True, "batch": SMALL_BATCH})
    assert_failed_everywhere(answers, 3, "HashMismatchError")
    assert answers[3]["cause"] == "HashMismatchError"
    assert "scale" in answers[0]["message"]  # the tensor is named on every rank


def test_wrong_key_on_one_rank(ranks, files):
    wrong = bytes(32).hex()
    answers = ranks.run({"op": "load", "uri": str(files["sealed"]), "key": KEY.hex()}, per_rank={2: {"key": wrong}})
    assert_failed_everywhere(answers, 2, "CryptographyError")


def test_ranks_asking_for_different_loads(ranks, files):
    answers = ranks.run({"op": "load", "uri": str(files["plain"])}, per_rank={3: {"uri": str(files["other"])}})
    assert_failed_everywhere(answers, 3, "ValueError")
    # The group is still usable after failures that every rank reported.
    assert_all_match(ranks.run({"op": "load", "uri": str(files["plain"])}), reference(files["plain"]), ranks)


def test_a_rank_that_exits_or_never_comes(files, tmp_path):
    """Two small groups with a 4 s timeout, side by side: in one, rank 1 exits before loading;
    in the other it sleeps through the timeout. Rank 0 gets a RankFailedError naming rank 1."""
    exits, sleeps = Ranks(2, tmp_path, timeout=4), Ranks(2, tmp_path, timeout=4)
    try:
        load = {"op": "load", "uri": str(files["plain"])}
        for team, other in ((exits, {"op": "exit", "code": 0}), (sleeps, {"op": "sleep", "seconds": 30})):
            team.send(0, load)
            team.send(1, other)
        started = time.monotonic()
        for team in (exits, sleeps):
            got = team.answer(0, timeout=40)
            assert got["type"] == "RankFailedError" and got["rank"] == 1, (got, team.log(0))
            assert "rank 1 never started this load" in got["message"]
        assert time.monotonic() - started < 30  # bounded by the group's timeout, not the sleeper
    finally:
        for team in (exits, sleeps):
            for proc in team.procs:
                proc.kill()
            team.close()


def test_torchrun(files, tmp_path):
    cmd = json.dumps({"op": "load", "uri": str(files["plain"]), "verify_hash": True, "batch": SMALL_BATCH})
    path = os.pathsep.join([PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, COOP_COMMAND=cmd, PYTHONPATH=path)
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", WORKER],
        env=env, capture_output=True, text=True, timeout=120,
    )
    answers = [json.loads(line[7:]) for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and len(answers) == 2, run.stdout + run.stderr[-3000:]
    assert_all_match(answers, reference(files["plain"]))


# -------------------------------------------------------------------------------- in one process


def _records(path: Path) -> list[_loading.Record]:
    index = _native.read_index(_sources.open_source(str(path)))
    return _loading.describe(index.entries, index.file_size)


def test_plan_balances_runs_and_batches(files):
    records = _records(files["plain"])
    plan = _coop_plan.make(records, 4, SMALL_BATCH)
    total = sum(r.nbytes for r in records)
    owned = [i for rank in range(4) for batch in plan.batches[rank] for i in batch]
    assert owned == list(range(len(records)))  # every record once, runs in file order
    biggest = max(r.nbytes for r in records)
    assert all(abs(plan.bytes_of(r) - total / 4) <= biggest for r in range(4))
    for rank in range(4):
        for batch in plan.batches[rank]:
            data = sum(records[i].nbytes for i in batch)
            assert data <= SMALL_BATCH or len([i for i in batch if records[i].nbytes]) == 1
    assert _coop_plan.split([5, 0, 0, 5], 2) == [0, 1, 4]
    assert _coop_plan.split([1, 1], 4) == [0, 0, 1, 1, 2]  # more ranks than tensors: some read nothing
    assert _coop_plan.split([10, 1, 1, 1, 1], 2) == [0, 1, 5]


def test_packs_keep_large_tensors_whole(monkeypatch):
    """Small tensors share a staged piece; a large one is cut into pieces that hold it alone."""
    monkeypatch.setattr(_cooperative, "STAGE_BYTES", 10)
    packs = _cooperative._packs([(0, 0, 3), (1, 0, 25), (2, 0, 4), (3, 0, 4), (4, 0, 4)])
    assert packs == [[(0, 0, 3)], [(1, 0, 10)], [(1, 10, 20)], [(1, 20, 25), (2, 0, 4)], [(3, 0, 4), (4, 0, 4)]]


def test_process_group_values():
    with pytest.raises(TypeError, match="process_group must be"):
        _group.resolve("nonsense", torch.device("cpu"))
    assert _group.resolve(None, torch.device("cpu")) is None
    if not torch.distributed.is_initialized():
        with pytest.raises(ValueError, match="init_process_group"):
            tensorstream.TensorDeserializer(b"unused", process_group=True)
    assert _group._backends_by_device("cpu:gloo,cuda:nccl") == {"cpu": "gloo", "cuda": "nccl"}
    with pytest.raises(ValueError, match="NCCL"):
        _group._comm_device("nccl", torch.device("cpu"))
    assert _group._comm_device("gloo", torch.device("cuda", 1)) == torch.device("cpu")
    assert _group._comm_device("nccl", torch.device("cuda", 1)) == torch.device("cuda", 1)


def test_single_rank_group_in_this_process(files, tmp_path):
    """A group of one (an already initialised default group): a plain load in effect; lazy
    loading is refused; the group is left as it was."""
    if torch.distributed.is_initialized():
        pytest.skip("a default group already exists in this process")
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        got = tensorstream.load(str(files["plain"]), device="cpu", process_group="default")
        assert summary(got) == reference(files["plain"])
        with pytest.raises(ValueError, match="lazy_load"):
            tensorstream.TensorDeserializer(str(files["plain"]), lazy_load=True, process_group=True)
        assert torch.distributed.is_initialized()
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.cuda
def test_a_group_of_one_over_nccl_loads_onto_the_gpu(files, tmp_path):
    """The NCCL path (run by the GPU check): a default group of one on NCCL, loading onto the GPU
    through the group, gives the tensors of a plain CPU load."""
    if not torch.cuda.is_available() or not torch.distributed.is_nccl_available():
        if os.environ.get("TENSORSTREAM_TEST_REQUIRE_CUDA") == "1":  # the GPU check: a skip is a failure
            pytest.fail("no CUDA GPU or no NCCL in this torch")
        pytest.skip("no CUDA GPU or no NCCL in this torch")
    if torch.distributed.is_initialized():
        pytest.skip("a default group already exists in this process")
    torch.distributed.init_process_group("nccl", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        got = tensorstream.load(str(files["plain"]), device="cuda", process_group=True, verify_hash=True)
        assert all(t.device.type == "cuda" for t in got.values())
        assert summary({k: t.cpu() for k, t in got.items()}) == reference(files["plain"])
    finally:
        torch.distributed.destroy_process_group()
