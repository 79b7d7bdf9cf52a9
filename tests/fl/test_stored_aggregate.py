"""The aggregate from blob files into the blob store: same bytes, nothing left behind."""

from __future__ import annotations

import hashlib
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
