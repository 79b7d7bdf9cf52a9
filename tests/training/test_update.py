"""``training/update.py``: one round's update from the base model's blob to the update's blob,
in the genesis' update dtype, checked by the contract as a validator checks it."""

from __future__ import annotations

import ctypes
import hashlib
import platform
import sys

import pytest
import torch

from bcfl_cli.apps.runner import bind_app
from bcfl_cli.errors import BlobError, UsageError
from bcfl_cli.fl.contract import RoundContext, UpdateClaim, check_update
from bcfl_cli.fl.data import Dataset
from bcfl_cli.fl.models import initial_state_bytes
from bcfl_cli.fl.tensors import check_safetensors_layout
from bcfl_cli.protocol.spec import ContractRules, ModelSpec, TrainingPlan
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.training.update import return_freed_memory, train_update

SPEC = ModelSpec(architecture="mlp", input_shape=[8], num_classes=3, hidden=[6])
ALICE = "did:key:z6MkAlice"


def _data() -> Dataset:
    g = torch.Generator().manual_seed(1)
    return Dataset(torch.randn(40, 8, generator=g), torch.randint(0, 3, (40,), generator=g))


@pytest.mark.parametrize(("dtype", "code"), [("float32", "F32"), ("bfloat16", "BF16")])
def test_the_update_is_stored_in_the_genesis_dtype_and_accepted(tmp_path, dtype, code):
    blobs = BlobStore(tmp_path)
    base = blobs.put(initial_state_bytes(SPEC))
    app = bind_app(SPEC, TrainingPlan(local_steps=3, batch_size=8))
    rules = ContractRules(update_dtype=dtype, min_samples=1)
    update = train_update(app, blobs, base, _data(), rules, seed=5)
    data = blobs.get(update.blob)
    assert len(data) == update.blob_size
    assert {d for d, _ in check_safetensors_layout(data, max_bytes=1 << 20).values()} == {code}
    ctx = RoundContext(trainers=frozenset({ALICE}), round=1, round_open=True, base_model=base)
    claim = UpdateClaim(ALICE, 1, base, update.blob, update.blob_size, update.num_samples)
    verdict = check_update(rules, SPEC, claim, ctx, data)
    assert verdict.accept and verdict.detail == f"L2 norm {update.norm!r}"
    assert not list((tmp_path / "tmp").iterdir())  # the written file became the blob


def test_a_float16_overflow_leaves_no_blob_and_says_why(tmp_path):
    blobs = BlobStore(tmp_path)
    base = blobs.put(initial_state_bytes(SPEC))
    before = set(blobs.iter_hashes())
    app = bind_app(SPEC, TrainingPlan(local_steps=3, batch_size=8))
    rules = ContractRules(update_dtype="float16")

    def past_65504(base_weights, result):  # a delta float16 cannot hold
        return {k: v + 70_000.0 for k, v in dict(result.delta).items()}

    with pytest.raises(UsageError, match="beyond the largest float16"):
        train_update(app, blobs, base, _data(), rules, seed=5, rewrite=past_65504)
    assert set(blobs.iter_hashes()) == before
    assert not list((tmp_path / "tmp").iterdir())


def test_a_missing_or_corrupt_base_model_is_named(tmp_path):
    blobs = BlobStore(tmp_path)
    app = bind_app(SPEC, TrainingPlan(local_steps=1))
    missing = hashlib.sha256(b"nothing").hexdigest()
    with pytest.raises(BlobError, match="is missing"):
        train_update(app, blobs, missing, _data(), ContractRules(), seed=1)
    base = blobs.put(initial_state_bytes(SPEC))
    path = blobs.path_for(base)
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(BlobError, match="is corrupt"):
        train_update(app, blobs, base, _data(), ContractRules(), seed=1)


def test_freed_memory_is_given_back_to_the_system_where_the_c_library_can() -> None:
    """glibc's malloc_trim after a round (issue 19); on any other C library a no-op."""
    return_freed_memory()
    return_freed_memory()  # idempotent
    if sys.platform == "linux" and platform.libc_ver()[0] == "glibc":
        assert hasattr(ctypes.CDLL(None), "malloc_trim")
