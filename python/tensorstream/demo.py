"""Save a real transformer model and load it back, against tensorizer and torch.load.

    python -m tensorstream.demo [--model llama-small] [--out DIR] [--runs 3]

The model is built locally from a config (random fp16 weights, nothing downloaded), saved with
tensorstream and tensorizer (the two files must be identical) and with ``torch.save``, then loaded
from the warm page cache by each library in this process. Every load is checked against the
model's tensors; the median time and the peak growth of resident memory are printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

import tensorstream

MODELS: dict[str, tuple[str, dict[str, int]]] = {
    "gpt2-small": ("gpt2", {}),  # 124M parameters, ~250 MB in fp16
    "gpt2-medium": ("gpt2", {"n_layer": 24, "n_embd": 1024, "n_head": 16}),  # ~710 MB
    "llama-small": (  # ~270M parameters, ~540 MB in fp16
        "llama",
        {
            "hidden_size": 1024,
            "intermediate_size": 2816,
            "num_hidden_layers": 16,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
            "vocab_size": 32000,
        },
    ),
}


def build_model(name: str) -> Callable[[], torch.nn.Module]:
    """A factory for the named model, with fp16 weights (transformers config, no download)."""
    import transformers

    kind, overrides = MODELS[name]
    if kind == "gpt2":
        config, cls = transformers.GPT2Config(**overrides), transformers.GPT2LMHeadModel
    else:
        config, cls = transformers.LlamaConfig(**overrides), transformers.LlamaForCausalLM

    def factory() -> torch.nn.Module:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float16)
        try:
            return cls(config).eval()
        finally:
            torch.set_default_dtype(previous)

    return factory


def module_tensors(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's tensors under the names ``write_module`` gives them."""
    out = {}
    for prefix, module in m.named_modules():
        for attr, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            out[f"{prefix}.{attr}"] = t.detach()
    return out


class PeakRss:
    """Samples this process's resident memory in a thread; ``peak`` is the growth over the start."""

    def __init__(self) -> None:
        self.start = self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakRss:
        self.start = self.now()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.now() - self.start)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now() - self.start)


def timed(fn: Callable[[], Any], runs: int) -> tuple[Any, float, int]:
    """Run ``fn`` ``runs`` times; the last result, the median seconds and the largest RSS growth."""
    times, peaks, result = [], [], None
    for _ in range(runs):
        result = None
        with PeakRss() as rss:
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        peaks.append(rss.peak)
    return result, statistics.median(times), max(peaks)


def equal(loaded: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> bool:
    return loaded.keys() == ref.keys() and all(
        loaded[k].dtype == t.dtype and torch.equal(loaded[k], t) for k, t in ref.items()
    )


def run(model_name: str, out: str, runs: int) -> list[tuple[str, float, int, Any]]:
    import tensorizer

    torch.manual_seed(0)
    factory = build_model(model_name)
    model = factory()
    ref = module_tensors(model)
    nbytes = sum(t.numel() * t.element_size() for t in ref.values())
    paths = {k: os.path.join(out, f"model.{k}") for k in ("ts.tensors", "tz.tensors", "pt")}
    print(f"model {model_name}: {len(ref)} tensors, {tensorstream.utils.convert_bytes(nbytes)} (fp16)")

    def save_ts() -> None:
        tensorstream.save(model, paths["ts.tensors"])

    def save_tz() -> None:
        serializer = tensorizer.TensorSerializer(paths["tz.tensors"])
        serializer.write_module(model)
        serializer.close()

    rows: list[tuple[str, float, int, Any]] = []
    for label, fn in (("tensorstream save", save_ts), ("tensorizer save", save_tz)):
        _, secs, peak = timed(fn, runs)
        rows.append((label, secs, peak, None))
    torch.save(ref, paths["pt"])
    with open(paths["ts.tensors"], "rb") as a, open(paths["tz.tensors"], "rb") as b:
        print("tensorstream and tensorizer files identical:", a.read() == b.read())

    backend = []

    def load_ts() -> dict[str, torch.Tensor]:
        with tensorstream.TensorDeserializer(paths["ts.tensors"]) as d:
            backend.append(d.io_backend)
            return dict(d)

    def load_tz() -> dict[str, torch.Tensor]:
        d = tensorizer.TensorDeserializer(paths["ts.tensors"])
        return {k: v.data for k, v in d.items()}

    def load_pt() -> dict[str, torch.Tensor]:
        return torch.load(paths["pt"], weights_only=True)

    for label, fn in (("tensorstream load", load_ts), ("tensorizer load", load_tz), ("torch.load", load_pt)):
        loaded, secs, peak = timed(fn, runs)
        rows.append((label, secs, peak, equal(loaded, ref)))
        del loaded

    rebuilt, secs, peak = timed(lambda: tensorstream.load_module(paths["ts.tensors"], factory), runs)
    sample = torch.arange(16).unsqueeze(0)
    with torch.no_grad():
        same = torch.equal(rebuilt(sample).logits, model(sample).logits)
    rows.append(("load_module", secs, peak, same))  # equal: same logits as the original
    _print(rows, nbytes)
    print(
        f"\ntensorstream {tensorstream.__version__}, io backend {backend[-1]}, torch {torch.__version__}, "
        f"tensorizer {tensorizer.__version__}, {os.cpu_count()} CPUs"
    )
    return rows


def _print(rows: list[tuple[str, float, int, Any]], nbytes: int) -> None:
    print(f"\n{'method':<20}{'seconds':>9}{'GB/s':>8}{'peak RSS growth':>17}  equal")
    for label, secs, peak, ok in rows:
        gbps = nbytes / secs / 1e9
        shown = "-" if ok is None else ok
        print(f"{label:<20}{secs:>9.3f}{gbps:>8.2f}{tensorstream.utils.convert_bytes(peak):>17}  {shown}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="llama-small")
    parser.add_argument("--out", help="directory for the files (default: a temporary one, removed)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per method (median shown)")
    args = parser.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="tensorstream-demo-")
    os.makedirs(out, exist_ok=True)
    try:
        rows = run(args.model, out, max(1, args.runs))
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    return 0 if all(ok is not False for *_, ok in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
