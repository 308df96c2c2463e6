"""Settings of vLLM's ``--load-format tensorstream``, read from ``--model-loader-extra-config``.

Keys are named as vLLM's ``TensorizerConfig`` names them; this module imports nothing of vLLM,
so the settings are checked (and tested) without it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import serialization, stream_io
from .encryption import DecryptionParams

MARKER = ".vllm_tensorized_marker"  # root parameter vLLM's serialize_vllm_model writes
DEFAULT_FILE = "model.tensors"

# Keys of vLLM's TensorizerConfig that this format reads, then its own.
_S3_KEYS = ("s3_access_key_id", "s3_secret_access_key", "s3_endpoint")
_S3_ENV = {"s3_access_key_id": "S3_ACCESS_KEY_ID", "s3_secret_access_key": "S3_SECRET_ACCESS_KEY",
           "s3_endpoint": "S3_ENDPOINT_URL"}  # vLLM's fallbacks for the three keys
_KEYS = frozenset(
    ("tensorizer_uri", "tensorizer_dir", "verify_hash", "num_readers", "encryption_keyfile", "vllm_tensorized",
     "s3_region_name", *_S3_KEYS)
)
_RANK_TEMPLATE = re.compile(r"%0\d+d")


@dataclass(frozen=True)
class LoadSettings:
    """Where the file is and how to read it. Credentials never show in the repr."""

    uri: str
    verify_hash: bool = False
    num_readers: int | None = None
    encryption_keyfile: str | None = None
    s3: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def sharded(self) -> bool:
        """Whether ``uri`` holds a ``%03d``-style template for the tensor-parallel rank."""
        return _RANK_TEMPLATE.search(self.uri) is not None

    def uri_for_rank(self, rank: int) -> str:
        """``uri`` with a rank template filled in (as vLLM does, ``uri % rank``); else ``uri``."""
        return self.uri % rank if self.sharded else self.uri

    def open(self, uri: str, device: Any = None, *, lazy_load: bool = False, dtype: Any = None) -> Any:
        """A :class:`~tensorstream.TensorDeserializer` of ``uri`` with these settings."""
        return serialization.TensorDeserializer(
            self._source(uri), device=device, dtype=dtype, lazy_load=lazy_load, verify_hash=self.verify_hash,
            num_readers=self.num_readers, encryption=self._decryption(),
        )

    def _source(self, uri: str) -> Any:
        if uri.lower().startswith("s3://"):
            return stream_io.open_stream(uri, "rb", **self.s3)
        return uri

    def _decryption(self) -> DecryptionParams | None:
        if self.encryption_keyfile is None:
            return None
        with stream_io.open_stream(self.encryption_keyfile, "rb", **self.s3) as stream:
            return DecryptionParams.from_key(stream.read())


def settings(extra: Any, model_path: str | None = None) -> LoadSettings:
    """:class:`LoadSettings` from vLLM's ``model_loader_extra_config``.

    ``extra`` is a dict (flat, or nested under ``"tensorizer_config"`` as vLLM's tensorizer format
    takes it) or a vLLM ``TensorizerConfig``. Without ``tensorizer_uri`` the file is
    ``tensorizer_dir/model.tensors``, else ``model.tensors`` in the model's folder.
    """
    config = checked(extra)
    num_readers = config.get("num_readers")
    if num_readers is not None and (not isinstance(num_readers, int) or isinstance(num_readers, bool)):
        raise ValueError(f"num_readers must be an int, not {num_readers!r}")
    return LoadSettings(
        uri=_uri(config, model_path),
        verify_hash=_flag(config, "verify_hash"),
        num_readers=num_readers,
        encryption_keyfile=config.get("encryption_keyfile"),
        s3=_s3_kwargs(config),
    )


def checked(extra: Any) -> dict[str, Any]:
    """``extra`` as a flat dict of the keys that apply; ValueError naming any unknown key."""
    config = _as_dict(extra)
    unknown = sorted(set(config) - _KEYS)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in --model-loader-extra-config for "
            f"--load-format tensorstream; known: {', '.join(sorted(_KEYS))}"
        )
    return config


def _as_dict(extra: Any) -> dict[str, Any]:
    if extra is None:
        return {}
    if hasattr(extra, "to_serializable"):  # vLLM's TensorizerConfig: its fields that apply here
        return {k: v for k, v in extra.to_serializable().items() if k in _KEYS and v is not None}
    if not isinstance(extra, Mapping):
        raise ValueError(f"--model-loader-extra-config must be a dict, not {type(extra).__name__}")
    if "tensorizer_config" in extra:
        if len(extra) != 1 or not isinstance(extra["tensorizer_config"], Mapping):
            raise ValueError("'tensorizer_config' must be the only key, and hold a dict")
        extra = extra["tensorizer_config"]
    return {str(k): v for k, v in extra.items() if v is not None}


def _uri(config: Mapping[str, Any], model_path: str | None) -> str:
    uri = config.get("tensorizer_uri")
    if uri is None and config.get("tensorizer_dir") is not None:
        uri = f"{str(config['tensorizer_dir']).rstrip('/')}/{DEFAULT_FILE}"
    if uri is None and model_path is not None and os.path.isdir(model_path):
        uri = os.path.join(model_path, DEFAULT_FILE)
    if uri is None:
        raise ValueError(
            "--load-format tensorstream needs the file: set tensorizer_uri (a path, http(s):// URL or "
            "s3:// URI) or tensorizer_dir in --model-loader-extra-config, or give a model folder "
            f"that holds {DEFAULT_FILE}"
        )
    if not isinstance(uri, (str, os.PathLike)):
        raise ValueError(f"tensorizer_uri must be a string, not {type(uri).__name__}")
    return os.fspath(uri)


def _flag(config: Mapping[str, Any], key: str) -> bool:
    value = config.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, not {value!r}")
    return value


def _s3_kwargs(config: Mapping[str, Any]) -> dict[str, str]:
    """``open_stream`` keyword arguments: the config's keys, else vLLM's environment variables."""
    found = {k: config.get(k) or os.environ.get(_S3_ENV[k]) for k in _S3_KEYS}
    if config.get("s3_region_name"):
        found["s3_region_name"] = config["s3_region_name"]
    return {k: str(v) for k, v in found.items() if v}
