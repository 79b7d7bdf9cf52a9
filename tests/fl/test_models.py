"""The initial model is a pure function of the spec: same bytes everywhere, every time."""

from __future__ import annotations

import hashlib

import pytest
import torch

from bcfl_cli.errors import ContractError
from bcfl_cli.fl import models
from bcfl_cli.fl.models import initial_shapes, initial_state, parameter_count
from bcfl_cli.fl.tensors import decode_tensors
from bcfl_cli.protocol.spec import ModelSpec

SPECS = [
    ModelSpec(architecture="logreg", input_shape=[64], num_classes=10),
    ModelSpec(architecture="mlp", input_shape=[30], num_classes=2, hidden=[32, 16], seed=7),
    ModelSpec(architecture="cnn", input_shape=[1, 8, 8], num_classes=10, hidden=[32]),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.architecture)
def test_initial_bytes_are_deterministic(spec: ModelSpec) -> None:
    first = models.initial_state_bytes(spec)
    assert models.initial_state_bytes(spec) == first
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert models.initial_state_bytes(spec) == first
    finally:
        torch.set_num_threads(threads)
    assert models.state_hash(models.initial_state(spec)) == hashlib.sha256(first).hexdigest()


def test_initial_state_does_not_touch_the_callers_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.initial_state(SPECS[0])
    assert torch.equal(torch.rand(3), expected)


def test_seed_changes_weights() -> None:
    other = SPECS[0].model_copy(update={"seed": 1})
    assert models.initial_state_bytes(other) != models.initial_state_bytes(SPECS[0])


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.architecture)
def test_forward_shapes_and_state_names(spec: ModelSpec) -> None:
    model = models.build_model(spec)
    out = model(torch.zeros(5, models.num_features(spec)))
    assert out.shape == (5, spec.num_classes)
    state = models.initial_state(spec)
    assert list(state) == list(model.state_dict())
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in state.values())
    decoded = decode_tensors(models.initial_state_bytes(spec), max_bytes=1 << 30)
    assert set(decoded) == set(state)
    assert all(torch.equal(decoded[k], state[k]) for k in state)


def test_architectures_differ_as_documented() -> None:
    assert set(models.initial_state(SPECS[0])) == {"out.weight", "out.bias"}
    assert {"fc0.weight", "fc1.weight", "out.weight"} <= set(models.initial_state(SPECS[1]))
    assert {"conv1.weight", "conv2.weight"} <= set(models.initial_state(SPECS[2]))
    assert models.parameter_count(SPECS[0]) == 64 * 10 + 10


def test_load_state_refuses_foreign_weights() -> None:
    model = models.build_model(SPECS[0])
    with pytest.raises(ContractError, match="wrong_shape"):
        models.load_state(model, models.initial_state(SPECS[2]))
    models.load_state(model, models.initial_state(SPECS[0]))


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(architecture="logreg", input_shape=[64], num_classes=3),
        ModelSpec(architecture="mlp", input_shape=[64], num_classes=10, hidden=[32, 16]),
        ModelSpec(architecture="cnn", input_shape=[1, 8, 8], num_classes=10),
    ],
)
def test_the_shapes_without_weights_are_those_of_the_weights(spec: ModelSpec) -> None:
    # the contract's expected layout comes from these (issue 19: building the weights to read
    # their shapes held the largest layer twice in every validator)
    state = initial_state(spec)
    assert initial_shapes(spec) == {k: tuple(v.shape) for k, v in state.items()}
    assert list(initial_shapes(spec)) == list(state)
    assert parameter_count(spec) == sum(v.numel() for v in state.values())
