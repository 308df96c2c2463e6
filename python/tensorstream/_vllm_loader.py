"""The vLLM model loader behind ``--load-format tensorstream`` (imports vLLM; see :mod:`tensorstream.vllm`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch
from vllm.config import ModelConfig, VllmConfig, set_current_vllm_config
from vllm.config.load import LoadConfig
from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
from vllm.logger import init_logger
from vllm.model_executor.model_loader.base_loader import BaseModelLoader
from vllm.model_executor.model_loader.tensorizer import meta_tensor_mode
from vllm.model_executor.model_loader.utils import get_model_architecture
from vllm.utils.torch_utils import set_default_torch_dtype

from . import _device
from ._vllm_config import MARKER, LoadSettings, checked, settings

logger = init_logger("vllm.tensorstream")  # under vLLM's logger, so its handlers show it


class TensorstreamLoader(BaseModelLoader):
    """Loads a ``.tensors`` file: HF-named weights through ``model.load_weights``, or a
    vLLM-serialized model (processed weights, ``.vllm_tensorized_marker``) as it is."""

    def __init__(self, load_config: LoadConfig) -> None:
        super().__init__(load_config)
        checked(load_config.model_loader_extra_config)  # unknown keys fail here, before any work
        self._extra = load_config.model_loader_extra_config
        self._kind: dict[str, bool] = {}  # uri -> vLLM-serialized, found by load_model for load_weights

    def download_model(self, model_config: ModelConfig) -> None:
        """Nothing to download: checks that the file (rank 0's) opens."""
        config = self._settings(model_config)
        with config.open(config.uri_for_rank(0), "cpu", lazy_load=True):
            pass

    def load_model(self, vllm_config: VllmConfig, model_config: ModelConfig, prefix: str = "") -> torch.nn.Module:
        config = self._settings(model_config)
        uri = _rank_uri(config)
        if not _is_vllm_serialized(config, uri):
            self._kind[uri] = False  # so that load_weights need not open the file to find out again
            return super().load_model(vllm_config, model_config, prefix)  # build, load_weights, process
        _check_sharded(config)
        device = _target_device(vllm_config)
        with set_default_torch_dtype(model_config.dtype), torch.device(device):
            model_class = get_model_architecture(model_config)[0]
            with meta_tensor_mode(), set_current_vllm_config(vllm_config, check_compile=True):
                model = model_class(vllm_config=vllm_config, prefix=prefix)
        _fill_processed(model, config, uri, device)
        return model.eval()

    def load_weights(self, model: torch.nn.Module, model_config: ModelConfig) -> None:
        """Loads the file into ``model`` on its device (also used by vLLM to reload weights)."""
        config = self._settings(model_config)
        uri = _rank_uri(config)
        device = _device_of(model)
        serialized = self._kind.pop(uri, None)
        if serialized is None:
            serialized = _is_vllm_serialized(config, uri)
        if serialized:
            _check_sharded(config)
            _fill_processed(model, config, uri, device)
            return
        needed = {name for name, _ in model.named_parameters()}
        loaded = model.load_weights(_drain(_load_all(config, uri, device)))
        if model_config.quantization is None and loaded is not None:  # vLLM's default loader's check
            _check_complete(needed - set(loaded), uri, model)

    def _settings(self, model_config: ModelConfig) -> LoadSettings:
        return settings(self._extra, model_config.model)


def _rank_uri(config: LoadSettings) -> str:
    return config.uri_for_rank(get_tensor_model_parallel_rank())


def _check_sharded(config: LoadSettings) -> None:
    """A vLLM-serialized file holds one rank's shards: several ranks need one file each."""
    if get_tensor_model_parallel_world_size() > 1 and not config.sharded:
        raise ValueError(
            f"tensor parallelism needs one vLLM-serialized file per rank: put a rank template such as "
            f"'%03d' in tensorizer_uri (now {config.uri!r})"
        )


def _is_vllm_serialized(config: LoadSettings, uri: str) -> bool:
    with config.open(uri, "cpu", lazy_load=True) as deserializer:  # reads the index only
        return MARKER in deserializer


def _target_device(vllm_config: VllmConfig) -> torch.device:
    load_device = vllm_config.load_config.device or vllm_config.device_config.device
    return _device.resolve(load_device)


def _device_of(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        if not tensor.is_meta:
            return _device.resolve(tensor.device)
    return torch.device("cpu")


def _load_all(config: LoadSettings, uri: str, device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of an HF-named file on ``device``, in file order, with one load."""
    start = time.perf_counter()
    with config.open(uri, device=device) as deserializer:
        tensors = {name: deserializer[name] for name in deserializer}
        nbytes = deserializer.total_tensor_bytes
    _log_load(nbytes, start, uri, device)
    return tensors


def _drain(tensors: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """Hands each tensor over and forgets it, so it can be freed once the model has copied it."""
    for name in list(tensors):
        yield name, tensors.pop(name)


def _fill_processed(model: torch.nn.Module, config: LoadSettings, uri: str, device: torch.device) -> None:
    """Put a vLLM-serialized file's tensors into ``model`` as they are (already processed)."""
    start = time.perf_counter()
    with config.open(uri, device=device) as deserializer:
        deserializer.load_into_module(model)
        nbytes = deserializer.total_tensor_bytes
    model._parameters.pop(MARKER[1:], None)
    _check_complete({name for name, t in model.state_dict().items() if t.is_meta}, uri, model)
    _log_load(nbytes, start, uri, device)


def _check_complete(missing: set[str], uri: str, model: torch.nn.Module) -> None:
    """A weight the file did not fill is an error, not a silently uninitialised tensor."""
    if missing:
        names = sorted(missing)
        raise ValueError(
            f"{uri.split('?')[0]} lacks {len(names)} weight(s) of {type(model).__name__} "
            f"({', '.join(names[:8])}): was it written for this model, quantization and parallel layout?"
        )


def _log_load(nbytes: int, start: float, uri: str, device: Any) -> None:
    seconds = time.perf_counter() - start
    logger.info(
        "tensorstream: loaded %.1f MB from %s to %s in %.2f s (%.2f GB/s)",
        nbytes / 1e6, uri.split("?")[0], device, seconds, nbytes / max(seconds, 1e-9) / 1e9,
    )
