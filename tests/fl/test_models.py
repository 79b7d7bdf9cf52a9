"""The initial model is a pure function of the spec: same bytes everywhere, every time."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from bcfl_cli.errors import ContractError
from bcfl_cli.fl import models
from bcfl_cli.fl.models import initial_shapes, initial_state, parameter_count
from bcfl_cli.fl.tensorfile import TensorFile
from bcfl_cli.fl.tensors import decode_tensors, encode_tensors
from bcfl_cli.fl.update_file import BaseWeights
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


def _stored(tmp_path: Path, state: dict[str, torch.Tensor], dtype: torch.dtype) -> Path:
    path = tmp_path / "base.safetensors"
    path.write_bytes(encode_tensors({k: v.to(dtype) for k, v in state.items()}))
    return path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.architecture)
def test_a_state_loaded_from_its_file_is_the_state_loaded_from_memory(
    spec: ModelSpec, dtype: torch.dtype, tmp_path: Path
) -> None:
    """A base model's weights read from its file straight into the model's own (float32) or
    through a tensor of their own (other dtypes) are bit for bit those ``copy_`` puts there."""
    moved = {k: v * 1.5 + 0.25 for k, v in initial_state(spec).items()}
    expected = models.build_model(spec)
    models.load_state(expected, {k: v.to(dtype) for k, v in moved.items()})
    with TensorFile.open(_stored(tmp_path, moved, dtype), max_bytes=1 << 30) as file:
        model = models.build_model(spec)
        models.load_state(model, BaseWeights(file))
    got, want = model.state_dict(), expected.state_dict()
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == torch.float32
        assert got[name].view(torch.int32).equal(want[name].view(torch.int32)), name


def test_float32_weights_are_read_into_the_model_without_a_copy_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Red before: every weight of a round's base model (``BaseWeights``, the trainer's) was
    read into a buffer of its own (allocated, zeroed), then copied into the model; a float32
    one is now read into the model's memory itself."""
    spec = SPECS[1]
    state = initial_state(spec)

    def no_copy(self: TensorFile, name: str) -> torch.Tensor:
        raise AssertionError(f"{name} read into a tensor of its own")

    with TensorFile.open(_stored(tmp_path, state, torch.float32), max_bytes=1 << 30) as file:
        monkeypatch.setattr(TensorFile, "tensor", no_copy)
        model = models.build_model(spec)
        models.load_state(model, BaseWeights(file))
    assert all(model.state_dict()[k].equal(v) for k, v in state.items())


def test_a_file_of_foreign_weights_is_refused_before_any_is_read(tmp_path: Path) -> None:
    model = models.build_model(SPECS[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = _stored(tmp_path, initial_state(SPECS[2]), torch.float32)
    with TensorFile.open(path, max_bytes=1 << 30) as file, pytest.raises(ContractError):
        models.load_state(model, BaseWeights(file))
    assert all(model.state_dict()[k].equal(v) for k, v in before.items())
