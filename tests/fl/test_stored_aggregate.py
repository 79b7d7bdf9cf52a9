"""The aggregate from blob files into the blob store: same bytes, nothing left behind."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
import torch

from bcfl_cli.errors import BlobError
from bcfl_cli.fl import stored_aggregate
from bcfl_cli.fl.aggregation import UpdateInput, aggregate
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.fl.stored_aggregate import RoundBlobs, aggregate_file, keep_as_blob
from bcfl_cli.fl.tensors import decode_tensors, encode_tensors
from bcfl_cli.protocol.spec import AggregationSpec
from bcfl_cli.protocol.tx import TxKind
from bcfl_cli.store.blobs import BlobStore
from tests.fl.test_checks import Chain, delta

SHAPES = {"w": (300, 7), "b": (7,), "z": ()}
RULES = ["fedavg", "clipped", "median", "trimmed", "krum", "cosine", "cosine_trajectory"]


def _state(seed: int, scale: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * scale for k, s in SHAPES.items()}


def _round(store: BlobStore) -> tuple[RoundBlobs, dict, list[UpdateInput], dict]:
    base, initial = _state(1, 1.0), _state(2, 1.0)
    deltas = [_state(10 + i, 0.1 * (i + 1)) for i in range(5)]
    updates = [UpdateInput(f"{i:064x}", d, 3 + i) for i, d in enumerate(deltas)]
    inputs = RoundBlobs(
        store.put(encode_tensors(base)),
        [(u.hash, store.put(encode_tensors(dict(u.delta))), u.num_samples) for u in updates],
        store.put(encode_tensors(initial)),
    )
    return inputs, base, updates, initial


def _leftovers(store: BlobStore) -> list[Path]:
    return list((store.root / "tmp").iterdir())


@pytest.mark.parametrize("rule", RULES)
def test_the_stored_model_is_the_in_memory_aggregate(tmp_path: Path, rule: str) -> None:
    store = BlobStore(tmp_path / "blobs")
    inputs, base, updates, initial = _round(store)
    spec = AggregationSpec(rule=rule, krum_f=1, krum_m=2, clip_norm=1.0)
    expected = aggregate(spec, base, updates, initial_state=initial)
    with aggregate_file(store, spec, inputs, max_bytes=1 << 24) as (result, written):
        assert written.read_bytes() == expected.model_bytes
        keep_as_blob(store, written, result.model_hash)
    assert result.model_hash == expected.model_hash
    assert result.model_size == len(expected.model_bytes)
    assert result.included == expected.included
    assert store.get(result.model_hash) == expected.model_bytes
    assert _leftovers(store) == []


def test_a_corrupt_input_is_the_nodes_error_and_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    inputs, *_ = _round(store)
    path = store.path_for(inputs.updates[2][1])
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with (
        pytest.raises(BlobError, match="corrupt"),
        aggregate_file(store, AggregationSpec(), inputs, max_bytes=1 << 24),
    ):
        pass
    path.unlink()
    with (
        pytest.raises(BlobError, match="missing"),
        aggregate_file(store, AggregationSpec(), inputs, max_bytes=1 << 24),
    ):
        pass
    assert _leftovers(store) == []


def test_an_input_changed_while_read_is_the_nodes_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")
    inputs, *_ = _round(store)
    monkeypatch.setattr(stored_aggregate.FileTensors, "changed", lambda self: True)
    with (
        pytest.raises(BlobError, match="changed while the aggregate read it"),
        aggregate_file(store, AggregationSpec(), inputs, max_bytes=1 << 24),
    ):
        pass
    assert _leftovers(store) == []


def test_a_verifier_that_keeps_no_model_reads_the_next_base_from_its_own_file(
    tmp_path: Path,
) -> None:
    c = Chain(tmp_path)
    c.checks = FLChecks(c.blobs, keep_models=False)
    models: dict[str, bytes] = {}

    def aggregate_tx() -> object:
        rnd = c.state.round
        base_bytes = models.get(rnd.base_model) or c.blobs.get(rnd.base_model)
        base = decode_tensors(base_bytes, max_bytes=1 << 24)
        updates = [
            UpdateInput(u.tx, decode_tensors(c.blobs.get(u.blob), max_bytes=1 << 24), n)
            for u, n in ((u, u.num_samples) for u in rnd.accepted)
        ]
        result = aggregate(c.state.config.aggregation, base, updates)
        models[result.model_hash] = result.model_bytes
        body = {
            "round": rnd.number,
            "updates": rnd.accepted_hashes,
            "rule": result.rule,
            "params": result.params,
            "model": result.model_hash,
            "model_size": len(result.model_bytes),
        }
        return c.tx("alice", TxKind.AGGREGATE, body)

    for step in (0.01, 0.02):
        c.open_round()
        c.commit(
            c.validated(c.update("bob", delta(step))) + c.validated(c.update("carol", delta(step)))
        )
        agg = aggregate_tx()
        c.commit([agg])  # type: ignore[list-item]
        model = c.state.round.model
        assert not c.blobs.has(model)  # never stored: held as a file of the checks' own
        held = c.checks._models[model]
        assert hashlib.sha256(held.read_bytes()).hexdigest() == model
    assert len(c.checks._models) == 2


def _adopted(store: BlobStore, data: bytes) -> str:
    """``data`` stored as a download or an upload stores it: written to ``tmp/``, hashed as it
    was written, adopted with that digest (so the store remembers having hashed it)."""
    digest = hashlib.sha256(data).hexdigest()
    part = store.root / "tmp" / f"part-{digest[:8]}"
    part.write_bytes(data)
    store.adopt(part, expected=digest, max_bytes=len(data), known_digest=digest)
    return digest


def _adopted_round(store: BlobStore) -> RoundBlobs:
    inputs, base, updates, _ = _round(store)
    return RoundBlobs(
        _adopted(store, encode_tensors(base)),
        [(u.hash, _adopted(store, encode_tensors(dict(u.delta))), u.num_samples) for u in updates],
    )


def test_inputs_this_process_hashed_as_it_stored_them_are_not_hashed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verifying node aggregates the blobs it just downloaded (hashed as they streamed) and
    its own last aggregate: the same model, without reading each input a second time."""
    store = BlobStore(tmp_path / "blobs")
    inputs = _adopted_round(store)
    hashed: list[int] = []
    real = stored_aggregate.sha256_of
    monkeypatch.setattr(stored_aggregate, "sha256_of", lambda s: hashed.append(1) or real(s))
    with aggregate_file(store, AggregationSpec(), inputs, max_bytes=1 << 24) as (result, _):
        pass
    assert hashed == []
    fresh = BlobStore(tmp_path / "blobs")  # another process: nothing remembered, all hashed
    with aggregate_file(fresh, AggregationSpec(), inputs, max_bytes=1 << 24) as (again, _):
        pass
    assert len(hashed) == 1 + len(inputs.updates) and again == result


@pytest.mark.parametrize("how", ["in place", "same times", "replaced"])
def test_a_remembered_input_changed_on_disk_is_hashed_again_and_refused(
    tmp_path: Path, how: str
) -> None:
    """Whatever rewrites a remembered blob (in place, then its times set back; or another file
    renamed over it) changes its stamp: it is hashed again, and found corrupt."""
    store = BlobStore(tmp_path / "blobs")
    inputs = _adopted_round(store)
    digest = inputs.updates[2][1]
    path = store.path_for(digest)
    time.sleep(0.05)  # past the file system's clock tick (a few ms on coarse clocks)
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    if how == "replaced":
        other = tmp_path / "other"
        other.write_bytes(bytes(data))
        os.replace(other, path)
    else:
        with open(path, "r+b") as f:
            f.seek(len(data) - 1)
            f.write(bytes(data[-1:]))
        if how == "same times":
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with open(path, "rb") as f:
        assert not store.hashed(digest, f.fileno())
    with (
        pytest.raises(BlobError, match="corrupt"),
        aggregate_file(store, AggregationSpec(), inputs, max_bytes=1 << 24),
    ):
        pass
    assert _leftovers(store) == []
