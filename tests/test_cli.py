"""The ``tensorstream`` command, run as users run it: ``python -m tensorstream`` in a subprocess."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys

import pytest
import torch

import tensorstream
from tensorstream import EncryptionParams, TensorSerializer

TIMEOUT = 120
SECRET = "s3cr3t/Value+That=Must-Never-Leak"


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "tensorstream", *map(str, args)], capture_output=True,
                          text=True, timeout=TIMEOUT, env=full_env)


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "embed.weight": torch.randn(256, 64, generator=g),
        "layer.0.bias": torch.randn(64, generator=g).half(),
        "layer.0.weight": torch.randn(64, 64, generator=g).bfloat16(),
        "step": torch.tensor(7, dtype=torch.int64),
    }


def nbytes(ts: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in ts.values())


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.tensors"
    tensorstream.save(tensors(), path)
    return path


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a failing command prints on stderr (and that there is no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in b:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------ usage, help


@pytest.mark.parametrize("command", ["info", "verify", "cp", "bench", "convert"])
def test_every_subcommand_has_help(command):
    result = cli(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: tensorstream {command}")


def test_usage_errors_exit_2():
    assert cli().returncode == 2
    assert cli("frobnicate").returncode == 2
    assert cli("info").returncode == 2  # URI missing


def test_console_script_is_declared():
    text = open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml")).read()
    assert 'tensorstream = "tensorstream.cli:main"' in text


# ------------------------------------------------------------------------------------ info


def test_info_json_describes_the_index(model):
    result = cli("info", model, "--json", "--tensors")
    assert result.returncode == 0, result.stderr
    d = json.loads(result.stdout)
    ts = tensors()
    assert d["format"] == "tensorizer" and d["tensor_count"] == 4 and not d["encrypted"]
    assert d["tensor_bytes"] == nbytes(ts) and d["file_bytes"] == model.stat().st_size
    assert d["dtypes"]["float32"] == {"count": 1, "bytes": 256 * 64 * 4}
    assert d["largest"][0]["name"] == "embed.weight"
    rows = {t["name"]: t for t in d["tensors"]}
    raw = model.read_bytes()
    for name, t in ts.items():
        row = rows[name]
        assert (row["dtype"], row["shape"], row["bytes"]) == (str(t.dtype)[6:], list(t.shape), t.numel() * t.element_size())
        # The offset is where the tensor's bytes are in the file.
        assert raw[row["offset"] : row["offset"] + row["bytes"]] == t.reshape(-1).view(torch.uint8).numpy().tobytes()


def test_info_lists_the_hashes_each_tensor_stores(model, tmp_path):
    d = json.loads(cli("info", model, "--json", "--tensors").stdout)
    assert d["hashes"] == {"read": True, "crc32": 4, "sha256": 4, "none": 0}
    assert all(t["hashes"] == ["crc32", "sha256"] for t in d["tensors"])
    assert "crc32 on 4, sha256 on 4, none on 0" in cli("info", model).stdout
    quick = json.loads(cli("info", model, "--json", "--no-hashes", "--tensors").stdout)
    assert quick["hashes"]["read"] is False and all(t["hashes"] is None for t in quick["tensors"])
    from safetensors.torch import save_file

    st = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(3)}, str(st))
    d = json.loads(cli("info", st, "--json").stdout)
    assert d["format"] == "safetensors" and d["hashes"] == {"read": False, "why": "safetensors stores no hashes"}


def test_info_text(model):
    result = cli("info", model)
    assert result.returncode == 0
    assert "tensorizer, data version" in result.stdout and "embed.weight" in result.stdout


def test_missing_file_is_one_line_exit_3(tmp_path):
    result = cli("info", tmp_path / "nope.tensors")
    assert result.returncode == 3
    assert "nope.tensors" in error_line(result)
    assert "Traceback" in cli("info", tmp_path / "nope.tensors", "--debug").stderr


def test_not_a_tensors_file_exits_1(tmp_path):
    bad = tmp_path / "bad.tensors"
    bad.write_bytes(b"not a tensors file at all" * 10)
    result = cli("info", bad)
    assert result.returncode == 1
    error_line(result)


# ---------------------------------------------------------------------------------- verify


def test_verify_ok(model):
    result = cli("verify", model, "--json")
    assert result.returncode == 0, result.stderr
    d = json.loads(result.stdout)
    assert d["ok"] and d["tensors"] == 4 and d["bytes"] == nbytes(tensors())


def test_verify_names_the_bad_tensor(model):
    info = json.loads(cli("info", model, "--json", "--tensors").stdout)
    row = next(t for t in info["tensors"] if t["name"] == "layer.0.weight")
    raw = bytearray(model.read_bytes())
    raw[row["offset"] + 5] ^= 0x40
    model.write_bytes(bytes(raw))
    result = cli("verify", model, "--json")
    assert result.returncode == 1
    d = json.loads(result.stdout)
    assert not d["ok"] and d["tensor"] == "layer.0.weight"
    text = cli("verify", model)
    assert text.returncode == 1 and "layer.0.weight" in text.stdout and "FAILED" in text.stdout


@pytest.fixture
def encrypted(tmp_path):
    key = EncryptionParams.random().key
    key_file = tmp_path / "key.bin"
    key_file.write_bytes(key)
    path = tmp_path / "enc.tensors"
    with TensorSerializer(path, encryption=EncryptionParams(key)) as s:
        s.write_state_dict(tensors())
    return path, key_file, key


def test_verify_encrypted(encrypted, tmp_path):
    path, key_file, key = encrypted
    no_key = cli("verify", path)
    assert no_key.returncode == 2 and "encrypted" in error_line(no_key)
    assert cli("verify", path, "--key-file", key_file).returncode == 0
    hex_file = tmp_path / "key.hex"
    hex_file.write_text(key.hex() + "\n")
    assert cli("verify", path, "--key-file", hex_file).returncode == 0
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(bytes(32))
    result = cli("verify", path, "--key-file", wrong, "--json")
    assert result.returncode == 1 and not json.loads(result.stdout)["ok"]
    assert key.hex() not in result.stdout + result.stderr


def test_verify_with_a_passphrase(tmp_path):
    path = tmp_path / "p.tensors"
    params = EncryptionParams.from_string(SECRET, opslimit=1, memlimit=EncryptionParams.MemLimit.MIN)
    with TensorSerializer(path, encryption=params) as s:
        s.write_state_dict(tensors())
    ok = cli("verify", path, "--passphrase-env", "TS_PASS", env={"TS_PASS": SECRET})
    assert ok.returncode == 0, ok.stderr
    assert SECRET not in ok.stdout + ok.stderr
    unset = cli("verify", path, "--passphrase-env", "TS_UNSET_VARIABLE")
    assert unset.returncode == 2 and "TS_UNSET_VARIABLE" in error_line(unset)


# -------------------------------------------------------------------------------------- cp


def test_cp_local_and_checks(model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = cli("cp", model, out, "--verify", "--json")
    assert result.returncode == 0, result.stderr
    d = json.loads(result.stdout)
    assert d["ok"] and d["verified"] and d["bytes"] == model.stat().st_size
    assert (out / model.name).read_bytes() == model.read_bytes()
    to_http = cli("cp", model, "http://127.0.0.1:1/x.tensors")
    assert to_http.returncode == 2 and "read-only" in error_line(to_http)
    same = cli("cp", model, model)
    assert same.returncode == 2


def test_cp_refuses_a_non_tensors_source(tmp_path):
    src = tmp_path / "notes.tensors"
    src.write_bytes(b"x" * 1000)
    result = cli("cp", src, tmp_path / "copy.tensors")
    assert result.returncode == 1 and not (tmp_path / "copy.tensors").exists()


@pytest.fixture
def s3_env(moto_s3, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TENSORSTREAM_S3_"))}
    env.update(HOME=str(home), AWS_ACCESS_KEY_ID=moto_s3.access_key, AWS_SECRET_ACCESS_KEY=moto_s3.secret_key,
               AWS_ENDPOINT_URL=moto_s3.endpoint, AWS_REGION=moto_s3.region, TENSORSTREAM_HTTP_RETRIES="2")
    return env


def cli_env(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tensorstream", *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)


def test_cp_http_to_s3_and_back(nginx, moto_s3, s3_env, model, tmp_path):
    served = nginx.root / "cli-model.tensors"
    served.write_bytes(model.read_bytes())
    bucket = moto_s3.create_bucket()
    up = cli_env(s3_env, "cp", nginx.url(served.name), f"s3://{bucket}/models/", "--json")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["dst"] == f"s3://{bucket}/models/cli-model.tensors"
    assert moto_s3.get_object(bucket, "models/cli-model.tensors") == model.read_bytes()
    info = cli_env(s3_env, "info", f"s3://{bucket}/models/cli-model.tensors", "--json")
    assert json.loads(info.stdout)["tensor_count"] == 4
    down = cli_env(s3_env, "cp", f"s3://{bucket}/models/cli-model.tensors", tmp_path / "back.tensors", "--verify")
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "back.tensors").read_bytes() == model.read_bytes()
    for result in (up, info, down):
        assert moto_s3.secret_key not in result.stdout + result.stderr
    missing = cli_env(s3_env, "info", f"s3://{bucket}/models/absent.tensors")
    assert missing.returncode == 3
    assert moto_s3.secret_key not in error_line(missing)


# --------------------------------------------------------------------------------- convert


def test_convert_between_formats(model, tmp_path):
    ref = tensors()
    st = tmp_path / "m.safetensors"
    assert cli("convert", model, st).returncode == 0
    from safetensors.torch import load_file

    assert_same(load_file(st), ref)
    back = tmp_path / "back.tensors"
    assert cli("convert", st, back).returncode == 0
    assert_same(tensorstream.load(back), ref)
    pt = tmp_path / "m.pt"
    torch.save(ref, pt)
    from_pt = tmp_path / "from_pt.tensors"
    result = cli("convert", pt, from_pt, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tensors"] == 4
    assert_same(tensorstream.load(from_pt), ref)
    bad = cli("convert", model, tmp_path / "m.weird")
    assert bad.returncode == 2 and "--to" in error_line(bad)


def test_convert_encrypts_and_decrypts(model, tmp_path):
    key_file = tmp_path / "new.key"
    enc = tmp_path / "enc.tensors"
    result = cli("convert", model, enc, "--encrypt-key-file", key_file)
    assert result.returncode == 0, result.stderr
    assert key_file.stat().st_mode & 0o077 == 0 and len(key_file.read_bytes()) == 32
    assert json.loads(cli("info", enc, "--json").stdout)["encrypted"]
    assert cli("verify", enc, "--key-file", key_file).returncode == 0
    plain = tmp_path / "plain.tensors"
    assert cli("convert", enc, plain, "--decrypt-key-file", key_file).returncode == 0
    assert_same(tensorstream.load(plain), tensors())
    assert cli("convert", enc, tmp_path / "x.tensors").returncode == 2  # no key for the source


# ----------------------------------------------------------------------------------- bench


def test_bench_json(model):
    result = cli("bench", model, "--runs", "2", "--verify", "--json")
    assert result.returncode == 0, result.stderr
    d = json.loads(result.stdout)
    assert len(d["runs"]) == 2 and d["tensor_bytes"] == nbytes(tensors())
    assert d["median_gbps"] > 0 and all(r["first_tensor_seconds"] <= r["seconds"] for r in d["runs"])
    assert d["stages"]["read"]["bytes"] == d["stages"]["hash"]["bytes"] == nbytes(tensors())
    assert d["ceilings"][0]["bytes"] == model.stat().st_size and "page-cache" in d["ceilings"][0]["what"]
    lazy = cli("bench", model, "--runs", "1", "--lazy")
    assert lazy.returncode == 0 and "lazy" in lazy.stdout and "ceiling" in lazy.stdout


def test_bench_over_http(nginx, model):
    served = nginx.root / "bench-model.tensors"
    served.write_bytes(model.read_bytes())
    result = cli("bench", nginx.url(served.name), "--runs", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert "range GETs" in json.loads(result.stdout)["ceilings"][0]["what"]


# -------------------------------------------------------------------------------- progress


def run_on_pty(*args: str, env: dict | None = None) -> tuple[int, str]:
    """Runs the command with stderr on a pseudo-terminal (stdout piped); its rc and what the terminal got."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "tensorstream", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=follower, env={**os.environ, **(env or {})})
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], TIMEOUT)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    proc.wait(TIMEOUT)
    proc.stdout.close()
    return proc.returncode, seen.decode(errors="replace")


@pytest.fixture
def big_model(tmp_path):
    path = tmp_path / "big.tensors"
    tensorstream.save({f"t{i}": torch.ones(1 << 20) for i in range(6)}, path)  # 24 MB
    return path


def test_progress_bar_on_a_terminal_only(big_model, tmp_path):
    rc, screen = run_on_pty("verify", big_model)
    assert rc == 0
    assert "verifying" in screen and "B/s" in screen
    rc, screen = run_on_pty("verify", big_model, "--no-progress")
    assert rc == 0 and screen == ""
    rc, screen = run_on_pty("verify", big_model, env={"TENSORSTREAM_PROGRESS": "0"})
    assert rc == 0 and screen == ""
    piped = cli("verify", big_model)
    assert piped.returncode == 0 and piped.stderr == ""


def test_library_progress_is_opt_in(big_model):
    code = (
        "import tensorstream, sys\n"
        f"d = tensorstream.TensorDeserializer({str(big_model)!r}, progress=bool(int(sys.argv[1])))\n"
        "assert len(d) == 6\n"
    )
    for flag, shown in (("1", True), ("0", False)):
        leader, follower = pty.openpty()
        proc = subprocess.run([sys.executable, "-c", code, flag], stderr=follower, stdout=subprocess.PIPE,
                              timeout=TIMEOUT)
        os.close(follower)
        out = b""
        while select.select([leader], [], [], 0.5)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        os.close(leader)
        assert proc.returncode == 0
        assert ("loading" in out.decode(errors="replace")) == shown, out


# ---------------------------------------------------------------------------------- stats


def test_stats_add_up(model, tmp_path):
    with tensorstream.TensorDeserializer(model, verify_hash=True) as d:
        s = d.stats
        assert s.loads == 1 and s.tensors == 4
        assert s.bytes == s.hashed_bytes == d.total_tensor_bytes == nbytes(tensors())
        assert s.decrypted_bytes == 0 and s.decrypt_seconds == 0
        assert s.read_seconds > 0 and s.hash_seconds > 0 and s.seconds >= s.read_seconds
    with tensorstream.TensorDeserializer(model, lazy_load=True) as d:
        d["step"], d["embed.weight"]
        assert d.stats.loads == 2 and d.stats.bytes == 8 + 256 * 64 * 4 and d.stats.hashed_bytes == 0
    from tensorstream._stats import prometheus

    text = prometheus(d.stats, labels={"model": 'a"b'})
    assert f'tensorstream_load_bytes_total{{model="a\\"b"}} {8 + 256 * 64 * 4}' in text
    assert "# TYPE tensorstream_load_read_seconds_total counter" in text


def test_stats_of_an_encrypted_load(encrypted):
    path, _, key = encrypted
    with tensorstream.TensorDeserializer(path, encryption=tensorstream.DecryptionParams.from_key(key)) as d:
        assert d.stats.decrypted_bytes == d.stats.bytes == nbytes(tensors())
        assert d.stats.decrypt_seconds > 0
