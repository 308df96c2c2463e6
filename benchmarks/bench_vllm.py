#!/usr/bin/env python3
"""vLLM engine start with ``--load-format tensorstream`` against ``--load-format safetensors``.

Run with a Python that has vLLM (scripts/test_vllm.sh builds one). It writes a random LLaMA as an
HF checkpoint (config.json + model.safetensors) and the same weights as model.tensors, then starts
vLLM on the CPU in a fresh process per start (this script with --worker; formats alternate
round by round, files in the warm page cache). A start is timed from before ``LLM(...)`` to its
return (model build, weight load, profiling, KV cache), imports excluded, and so is vLLM's
model loading inside it (get_model: build, weights, processing). Each start then
generates greedy tokens; every format must give the same ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

FORMATS = ("safetensors", "tensorstream")
PROMPT = [1, 17, 42, 99, 250, 7]
ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def write_model(folder: str, hidden: int, layers: int, vocab: int) -> int:
    """A random LLaMA in ``folder`` (HF checkpoint + model.tensors); returns its bytes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import tensorstream

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64,
        num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 256),
        max_position_embeddings=512, tie_word_embeddings=False, torch_dtype=torch.float32,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    state = model.state_dict()
    tensorstream.save(state, os.path.join(folder, "model.tensors"))
    return sum(t.numel() * t.element_size() for t in state.values())


def _time_model_loading() -> dict:
    """Times vLLM's get_model in the CPU worker (model build, weights, processing)."""
    import vllm.v1.worker.cpu_model_runner as runner

    timing: dict = {}
    real = runner.get_model

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            timing["load_s"] = time.perf_counter() - start

    runner.get_model = timed
    return timing


def worker(load_format: str, folder: str) -> dict:
    from vllm import LLM, SamplingParams

    timing = _time_model_loading()
    start = time.perf_counter()
    llm = LLM(model=folder, load_format=load_format, skip_tokenizer_init=True, enforce_eager=True,
              max_model_len=256, dtype="float32", max_num_seqs=4, seed=0)
    seconds = time.perf_counter() - start
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    out = llm.generate([{"prompt_token_ids": PROMPT}], params, use_tqdm=False)
    return {"format": load_format, "seconds": seconds, "load_s": timing.get("load_s"),
            "tokens": list(out[0].outputs[0].token_ids)}


def run_worker(load_format: str, folder: str, timeout: float) -> dict:
    env = {**os.environ, **ENV}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", load_format, folder]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{load_format} start failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", help="where the model goes (default: a temporary folder)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--worker", nargs=2, metavar=("FORMAT", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return 0
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        nbytes = write_model(folder, args.hidden, args.layers, args.vocab)
        print(f"model: {nbytes / 1e6:.1f} MB float32, {args.layers} layers, hidden {args.hidden}", flush=True)
        runs: dict[str, list[dict]] = {f: [] for f in FORMATS}
        for r in range(args.rounds):
            for load_format in FORMATS if r % 2 == 0 else FORMATS[::-1]:
                result = run_worker(load_format, folder, args.timeout)
                runs[load_format].append(result)
                print(f"round {r}: {load_format:12s} start {result['seconds']:.2f} s, "
                      f"model loading {result['load_s']:.2f} s", flush=True)
    tokens = {f: {tuple(r["tokens"]) for r in rs} for f, rs in runs.items()}
    same = len(set().union(*tokens.values())) == 1
    report = {
        "model_bytes": nbytes,
        "median_start_s": {f: statistics.median(r["seconds"] for r in rs) for f, rs in runs.items()},
        "starts_s": {f: [r["seconds"] for r in rs] for f, rs in runs.items()},
        "median_model_loading_s": {f: statistics.median(r["load_s"] for r in rs) for f, rs in runs.items()},
        "same_tokens": same,
    }
    for f, median in report["median_start_s"].items():
        loading = report["median_model_loading_s"][f]
        print(f"median engine start, --load-format {f}: {median:.2f} s (model loading {loading:.2f} s)")
    print("greedy tokens: " + ("the same for every format" if same else f"DIFFER: {tokens}"))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
