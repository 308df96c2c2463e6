"""Many small write calls: the file is valid after each one, and the same as one large write.

The writer keeps the index size as it goes and rewrites only the new index entries and the file
header after each call (the whole index once, when the first dimension of 2^32 or more changes
how entries are encoded), so a file of many ``write_tensor`` calls costs no more than one batch.
"""

from __future__ import annotations

import tensorizer
import torch

import tensorstream
from tensorstream import TensorSerializer, TensorType


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(8)
    out = {f"t{i}": torch.randn(i % 7 + 1, 3, generator=gen) for i in range(300)}
    out["t150"] = torch.empty(2**32 + 1, 0, dtype=torch.uint8)  # long shape: entries re-encoded
    return out


def test_one_call_per_tensor_matches_one_batch(tmp_path):
    tensors = _tensors()
    one_by_one, batch = tmp_path / "one.tensors", tmp_path / "batch.tensors"
    with TensorSerializer(one_by_one) as serializer:
        for name, tensor in tensors.items():
            serializer.write_tensor(0, name, TensorType.STATE_DICT, tensor)
    with TensorSerializer(batch) as serializer:
        serializer.write_state_dict(tensors)
    got = tensorstream.load(one_by_one, verify_hash=True)
    assert list(got) == list(tensors)
    for name, tensor in tensors.items():
        assert torch.equal(got[name], tensor), name
    assert one_by_one.read_bytes() == batch.read_bytes()


def test_valid_after_every_call(tmp_path):
    """Without close(), the file on disk already holds every tensor written so far."""
    tensors = _tensors()
    path = tmp_path / "open.tensors"
    serializer = TensorSerializer(path)
    names = list(tensors)
    for i, name in enumerate(names):
        serializer.write_tensor(0, name, TensorType.PARAM, tensors[name])
        if i in (0, 1, 149, 150, 151, len(names) - 1):
            with tensorizer.TensorDeserializer(str(path), device="cpu", verify_hash=True) as theirs:
                assert list(theirs.keys()) == names[: i + 1]
                assert torch.equal(theirs[name], tensors[name])
    serializer.close()
