"""The vLLM load format's settings and save_vllm_model, without vLLM installed (tests_vllm/
runs the format inside vLLM)."""

from __future__ import annotations

import pytest
import torch

import tensorstream
from tensorstream import _vllm_config
from tensorstream import vllm as ts_vllm


def test_flat_and_nested_configs_read_the_same():
    flat = {"tensorizer_uri": "s3://b/m-%03d.tensors", "verify_hash": True, "num_readers": 4}
    assert _vllm_config.settings(flat) == _vllm_config.settings({"tensorizer_config": flat})
    got = _vllm_config.settings(flat)
    assert (got.uri, got.verify_hash, got.num_readers) == ("s3://b/m-%03d.tensors", True, 4)


def test_rank_template():
    config = _vllm_config.settings({"tensorizer_uri": "/m/model-rank-%03d.tensors"})
    assert config.sharded
    assert [config.uri_for_rank(r) for r in (0, 1, 12)] == [
        "/m/model-rank-000.tensors", "/m/model-rank-001.tensors", "/m/model-rank-012.tensors"]
    plain = _vllm_config.settings({"tensorizer_uri": "/m/model.tensors"})
    assert not plain.sharded and plain.uri_for_rank(3) == "/m/model.tensors"


def test_where_the_file_is_when_no_uri_is_given(tmp_path):
    assert _vllm_config.settings({"tensorizer_dir": "s3://b/dir/"}).uri == "s3://b/dir/model.tensors"
    assert _vllm_config.settings({}, str(tmp_path)).uri == str(tmp_path / "model.tensors")
    with pytest.raises(ValueError, match="set tensorizer_uri"):
        _vllm_config.settings({}, "org/hub-name")


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"tensorizer_url": "x"}, "unknown key.*'tensorizer_url'"),
        ({"tensorizer_uri": "x", "verify_hash": "yes"}, "verify_hash must be true or false"),
        ({"tensorizer_uri": "x", "num_readers": 1.5}, "num_readers must be an int"),
        ({"tensorizer_config": {"tensorizer_uri": "x"}, "other": 1}, "the only key"),
        (["tensorizer_uri"], "must be a dict"),
    ],
)
def test_bad_settings_are_value_errors(extra, match):
    with pytest.raises(ValueError, match=match):
        _vllm_config.settings(extra)


def test_credentials_stay_out_of_the_repr(monkeypatch):
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9")
    config = _vllm_config.settings(
        {"tensorizer_uri": "s3://b/k", "s3_access_key_id": "AKIDEXAMPLE", "s3_secret_access_key": "sEcReT-value"}
    )
    assert config.s3 == {"s3_access_key_id": "AKIDEXAMPLE", "s3_secret_access_key": "sEcReT-value",
                         "s3_endpoint": "http://127.0.0.1:9"}  # the endpoint from vLLM's variable
    assert "sEcReT" not in repr(config) and "AKIDEXAMPLE" not in repr(config)


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)
        self.register_buffer("scale", torch.tensor([2.0]))


def test_save_vllm_model_writes_the_marker_and_leaves_the_module_as_it_was(tmp_path):
    model = _Tiny()
    path = str(tmp_path / "m.tensors")
    assert ts_vllm.save_vllm_model(model, path) == [path]
    assert not hasattr(model, "vllm_tensorized_marker")
    with tensorstream.TensorDeserializer(path) as file:
        assert set(file) == {".vllm_tensorized_marker", "proj.weight", "proj.bias", ".scale"}
        fresh = tensorstream.utils.no_init_or_tensor(_Tiny)
        file.load_into_module(fresh)  # as the format does it for a model built on the meta device
    assert isinstance(fresh.vllm_tensorized_marker, torch.nn.Parameter)
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


def test_save_vllm_model_rejects_other_objects(tmp_path):
    with pytest.raises(TypeError, match="vllm.LLM or a torch.nn.Module"):
        ts_vllm.save_vllm_model(object(), str(tmp_path / "m.tensors"))
    with pytest.raises(ValueError, match="s3:// URIs only"):
        ts_vllm.save_vllm_model(_Tiny(), str(tmp_path / "m.tensors"), s3_endpoint="http://x")


def test_an_encrypted_file_and_its_key_from_s3_with_the_configs_credentials(moto_s3):
    """The keys vLLM users set (credentials, endpoint, key file) reach the S3 reads."""
    import io

    state = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(3)}
    params = tensorstream.EncryptionParams.random()
    buf = io.BytesIO()
    with tensorstream.TensorSerializer(buf, encryption=params) as serializer:
        serializer.write_state_dict(state)
    bucket = moto_s3.create_bucket()
    moto_s3.put_object(bucket, "m/model-rank-001.tensors", buf.getvalue())
    moto_s3.put_object(bucket, "m/key.bin", params.key)
    config = _vllm_config.settings({
        "tensorizer_uri": f"s3://{bucket}/m/model-rank-%03d.tensors", "encryption_keyfile": f"s3://{bucket}/m/key.bin",
        "verify_hash": True, "s3_access_key_id": moto_s3.access_key, "s3_secret_access_key": moto_s3.secret_key,
        "s3_endpoint": moto_s3.endpoint, "s3_region_name": moto_s3.region,
    })
    with config.open(config.uri_for_rank(1)) as file:
        assert {k: file[k] for k in file}.keys() == state.keys()
        for name, tensor in state.items():
            assert torch.equal(file[name], tensor)
    without_key = _vllm_config.settings({**config.s3, "tensorizer_uri": config.uri})
    with pytest.raises(tensorstream.KeyRequiredError):
        without_key.open(config.uri_for_rank(1))
