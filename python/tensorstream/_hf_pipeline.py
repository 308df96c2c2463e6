"""diffusers pipelines for ``tensorstream.hf``: a ``model_index.json`` and one subfolder per component.

Saving writes each component as diffusers lays it out: a diffusers model (``ModelMixin``) as
``config.json`` and ``diffusion_pytorch_model.tensors`` / ``.safetensors`` (shards with
``diffusion_pytorch_model.safetensors.index.json``); a transformers model through
``hf.save_pretrained`` (``model.tensors`` / ``model.safetensors``); anything else (schedulers,
tokenizers, feature extractors) through its own ``save_pretrained``, whose files are copied
there. ``model_index.json`` comes last, so a folder with one is complete.

Loading reads the index, builds each model component from its config under
``no_init_or_tensor`` and fills it through tensorstream on the device, builds the other
components with their class's ``from_pretrained`` over their files (fetched into a temporary
folder when remote), and calls the pipeline class the index names. Classes are looked up in
diffusers, transformers and ``diffusers.pipelines``' own modules only: an index never makes
tensorstream import other code.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import tempfile
from typing import Any

import torch

from . import utils
from ._hf_io import fill, get, put, remote, save_files, save_weights
from ._safetensors_writer import join

INDEX = "model_index.json"
WEIGHTS = "diffusion_pytorch_model"
_WEIGHT_FILES = (f"{WEIGHTS}.safetensors.index.json", f"{WEIGHTS}.safetensors", f"{WEIGHTS}.tensors")
# Files a tokenizer, feature extractor or processor may have written; each is fetched if present.
_SIDE_FILES = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "added_tokens.json",
               "chat_template.jinja", "chat_template.json", "preprocessor_config.json", "processor_config.json",
               "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


def is_pipeline(obj: Any) -> bool:
    diffusers = sys.modules.get("diffusers")  # not imported: obj cannot be a pipeline
    return diffusers is not None and isinstance(obj, diffusers.DiffusionPipeline)


# Saving --------------------------------------------------------------------------------------


def save(pipeline: Any, dst: str, fmt: str, max_shard: int | None) -> list[str]:
    """Every component of ``pipeline`` in its subfolder of ``dst``, then ``model_index.json``."""
    diffusers = _need("diffusers", "for pipelines")
    modules, _ = _signature(type(pipeline))
    written: list[str] = []
    for name in sorted(modules):
        part = getattr(pipeline, name, None)
        if part is not None:
            written += _save_component(diffusers, name, part, join(dst, name), fmt, max_shard)
    index = json.loads(pipeline.to_json_string())
    index.pop("_name_or_path", None)  # where it was loaded from, not what it is
    text = json.dumps(index, indent=2, sort_keys=True) + "\n"
    written.append(put(join(dst, INDEX), text.encode()))
    return written


def _save_component(diffusers: Any, name: str, part: Any, dst: str, fmt: str, max_shard: int | None) -> list[str]:
    part = getattr(part, "_orig_mod", part)  # a torch.compile'd module: its original
    if isinstance(part, diffusers.ModelMixin):
        config = put(join(dst, part.config_name), part.to_json_string().encode())
        return [config, *save_weights(part, dst, fmt, max_shard, WEIGHTS)]
    if _is_transformers_model(part):
        from . import hf
        return hf.save_pretrained(part, dst, format=fmt, max_shard_bytes=max_shard)
    if isinstance(part, torch.nn.Module) or not callable(getattr(part, "save_pretrained", None)):
        raise ValueError(f"pipeline component {name!r} ({type(part).__name__}) is neither a diffusers or "
                         "transformers model nor has save_pretrained: tensorstream.hf cannot save it")
    return save_files(part, dst)


def _is_transformers_model(obj: Any) -> bool:
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(obj, transformers.PreTrainedModel)


# Loading -------------------------------------------------------------------------------------


def load(prefix: str, raw_index: bytes, pipeline_class: Any, target: torch.device, dtype: torch.dtype | None,
         kwargs: dict[str, Any]) -> Any:
    """The pipeline saved under ``prefix`` (whose ``model_index.json`` is ``raw_index``)."""
    diffusers = _need("diffusers", "for pipelines")
    index = _parse_index(prefix, raw_index)
    cls = _pipeline_class(diffusers, index, pipeline_class)
    modules, options = _signature(cls)
    init: dict[str, Any] = {name: index[name] for name in options if name in index}
    for name in sorted(modules):
        entry = index.get(name)
        if _absent(entry):
            if name not in getattr(cls, "_optional_components", []):
                raise ValueError(f"{join(prefix, INDEX)} gives no {name!r}, which {cls.__name__} needs")
            init[name] = None
            continue
        init[name] = _load_component(diffusers, join(prefix, name), entry, target, dtype, kwargs)
    return cls(**init)


def _parse_index(prefix: str, raw: bytes) -> dict[str, Any]:
    try:
        index = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{join(prefix, INDEX)} is not JSON ({exc})") from None
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise ValueError(f"{join(prefix, INDEX)} names no pipeline class ('_class_name')")
    return index


def _pipeline_class(diffusers: Any, index: dict[str, Any], given: Any) -> Any:
    if given is not None and given is not diffusers.DiffusionPipeline:
        if not (isinstance(given, type) and issubclass(given, diffusers.DiffusionPipeline)):
            raise ValueError(f"{getattr(given, '__name__', given)!r} is not a diffusers pipeline class: "
                             f"the folder holds a {index['_class_name']}")
        return given
    cls = getattr(diffusers, index["_class_name"], None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
        raise ValueError(f"diffusers {diffusers.__version__} has no pipeline class {index['_class_name']!r} "
                         "(custom pipelines are not built): give model_class")
    return cls


def _signature(cls: Any) -> tuple[set[str], set[str]]:
    """(component names, other keyword names) of a pipeline class's constructor, as diffusers
    tells them apart: required arguments and ``_optional_components`` are components."""
    params = inspect.signature(cls.__init__).parameters
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = {n for n, p in params.items() if n != "self" and p.kind in kinds}
    required = {n for n in names if params[n].default is inspect.Parameter.empty}
    modules = required | (names & set(getattr(cls, "_optional_components", [])))
    return modules, names - modules


def _absent(entry: Any) -> bool:
    return not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[0] is None or entry[1] is None


def _load_component(diffusers: Any, sub: str, entry: list[Any], target: torch.device, dtype: torch.dtype | None,
                    kwargs: dict[str, Any]) -> Any:
    cls = _component_class(diffusers, sub, entry)
    if issubclass(cls, diffusers.ModelMixin):
        return _load_diffusers_model(cls, sub, target, dtype, kwargs)
    transformers = sys.modules.get("transformers")
    if transformers is not None and issubclass(cls, transformers.PreTrainedModel):
        from . import hf
        return hf.from_pretrained(sub, model_class=cls, device=target, dtype=dtype, **kwargs)
    if issubclass(cls, torch.nn.Module) or not callable(getattr(cls, "from_pretrained", None)):
        raise ValueError(f"{sub}: {cls.__name__} is neither a diffusers or transformers model nor has "
                         "from_pretrained: tensorstream.hf cannot build it")
    return _load_from_files(cls, sub)


def _component_class(diffusers: Any, sub: str, entry: list[Any]) -> Any:
    """The class an index entry ``[library, class]`` names, from diffusers, transformers or a
    pipeline module of diffusers (``["stable_diffusion", "StableDiffusionSafetyChecker"]``)."""
    library, name = entry
    if library == "diffusers":
        module = diffusers
    elif library == "transformers":
        module = _need("transformers", "for this pipeline's components")
    elif isinstance(library, str) and library.isidentifier() and hasattr(diffusers.pipelines, library):
        module = importlib.import_module(f"diffusers.pipelines.{library}")
    else:
        raise ValueError(f"{sub}: the component's library {library!r} is not diffusers or transformers")
    cls = getattr(module, name, None) if isinstance(name, str) else None
    if not isinstance(cls, type):
        raise ValueError(f"{sub}: {library} has no class {name!r}")
    return cls


def _load_diffusers_model(cls: Any, sub: str, target: torch.device, dtype: torch.dtype | None,
                          kwargs: dict[str, Any]) -> torch.nn.Module:
    raw = get(join(sub, cls.config_name))
    if raw is None:
        raise FileNotFoundError(f"{join(sub, cls.config_name)} not found: the {cls.__name__} has no config")
    with utils.no_init_or_tensor():
        model = cls.from_config(json.loads(raw.decode("utf-8")))
    return fill(model, [join(sub, n) for n in _WEIGHT_FILES], sub, target, dtype, kwargs)


def _load_from_files(cls: Any, sub: str) -> Any:
    """A scheduler, tokenizer or processor from its files: a local folder as it is, a remote
    prefix's known file names fetched into a temporary folder (nothing from the hub)."""
    if not remote(sub):
        if not os.path.isdir(sub):
            raise FileNotFoundError(f"{sub} not found: the pipeline's {cls.__name__} has no folder")
        return cls.from_pretrained(sub)
    names = [getattr(cls, "config_name", None), *getattr(cls, "vocab_files_names", {}).values(), *_SIDE_FILES]
    with tempfile.TemporaryDirectory() as tmp:
        found = 0
        for name in dict.fromkeys(n for n in names if isinstance(n, str) and "/" not in n):
            data = get(join(sub, name))
            if data is not None:
                found += 1
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(data)
        if not found:
            raise FileNotFoundError(f"{sub} holds no file of the pipeline's {cls.__name__}")
        return cls.from_pretrained(tmp)


def _need(package: str, why: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ImportError(f"tensorstream.hf needs the {package!r} package {why} (pip install {package})") from None
