"""vLLM's ``--load-format tensorstream``, and a one-call way to write a model for it.

vLLM finds :func:`register` through the ``vllm.general_plugins`` entry point and calls it in each
of its processes. The format reads a ``.tensors`` file from a path, an ``http(s)://`` URL or an
``s3://`` URI given in ``--model-loader-extra-config`` (keys as in vLLM's ``TensorizerConfig``;
see README), straight onto the worker's device:

- a file with Hugging Face parameter names (e.g. ``tensorstream.save(hf_model.state_dict(), uri)``)
  goes through vLLM's usual flow: ``model.load_weights(...)``, then
  ``process_weights_after_loading``;
- a file written by vLLM's ``serialize_vllm_model`` or by :func:`save_vllm_model` (it holds the
  ``.vllm_tensorized_marker`` root parameter) holds weights vLLM already processed: the model is
  built without allocating weights and the file's tensors are put into it as they are.

A ``%03d``-style template in the URI is filled with the tensor-parallel rank of each worker.

Importing ``tensorstream`` does not import this module, nor this module vLLM until it is used.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import torch

from . import serialization
from ._vllm_config import MARKER, LoadSettings

__all__ = ["register", "save_vllm_model", "FORMAT"]

FORMAT = "tensorstream"
_registered = False
logger = logging.getLogger(__name__)


def register() -> None:
    """Register ``--load-format tensorstream`` with vLLM (safe to call more than once)."""
    global _registered
    if _registered:
        return
    from vllm.model_executor.model_loader import register_model_loader

    from . import _vllm_loader

    register_model_loader(FORMAT)(_vllm_loader.TensorstreamLoader)
    _registered = True


def save_vllm_model(llm_or_model: Any, uri: str, *, encryption: Any = None, **s3: Any) -> list[str]:
    """Write a vLLM model's weights, as processed for serving, for ``--load-format tensorstream``.

    ``llm_or_model`` is a ``vllm.LLM`` (each of its workers writes its own part: put a ``%03d``
    template in ``uri`` for tensor parallelism) or the ``torch.nn.Module`` of one worker. ``uri``
    is a path or an ``s3://`` URI (``s3`` takes ``open_stream``'s ``s3_*`` keyword arguments);
    ``encryption`` is an :class:`~tensorstream.EncryptionParams`. The file also loads through
    vLLM's own ``--load-format tensorizer``. Returns the URIs written.
    """
    if isinstance(llm_or_model, torch.nn.Module):
        return [_save_module(llm_or_model, uri=uri, encryption=encryption, s3=s3)]
    if not hasattr(llm_or_model, "apply_model"):
        raise TypeError(f"expected a vllm.LLM or a torch.nn.Module, not {type(llm_or_model).__name__}")
    return llm_or_model.apply_model(functools.partial(_save_module, uri=uri, encryption=encryption, s3=s3))


def _save_module(model: torch.nn.Module, *, uri: str, encryption: Any, s3: dict[str, Any]) -> str:
    target = LoadSettings(uri).uri_for_rank(_tp_rank())
    if hasattr(model, MARKER[1:]):
        raise ValueError(f"the model already has a {MARKER[1:]!r} attribute")
    start = time.perf_counter()
    # vLLM's own marker: a meta parameter at the root, so the file says its weights are processed.
    model.register_parameter(MARKER[1:], torch.nn.Parameter(torch.zeros(1, device="meta"), requires_grad=False))
    try:
        out = _open_for_writing(target, s3)
        with serialization.TensorSerializer(out, encryption=encryption) as serializer:
            serializer.write_module(model)
    finally:
        del model._parameters[MARKER[1:]]
    logger.info("wrote the vLLM model to %s in %.2f s", target, time.perf_counter() - start)
    return target


def _open_for_writing(uri: str, s3: dict[str, Any]) -> Any:
    if uri.lower().startswith("s3://"):
        from . import stream_io

        return stream_io.open_stream(uri, "wb", **s3)
    if s3:
        raise ValueError("s3_* arguments apply to s3:// URIs only")
    return uri


def _tp_rank() -> int:
    """The tensor-parallel rank of this process in a running vLLM, else 0."""
    try:
        from vllm.distributed import get_tensor_model_parallel_rank

        return get_tensor_model_parallel_rank()
    except (ImportError, AssertionError, AttributeError, RuntimeError):
        return 0
