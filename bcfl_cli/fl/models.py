"""The architectures a genesis may name, built from its ``ModelSpec`` and nothing else.

A peer never loads code or pickled modules from another member: the architecture is one of the
few below, its sizes come from the signed spec, and weights travel as safetensors. The initial
global model is a pure function of the spec (``spec.seed``), so every founding member derives
the same bytes and the same hash for the genesis ``initial_model``.

Every model begins with a parameter-free input squash, ``asinh(x)``. It is fixed and the same on
every member, so members need no shared feature statistics (which would leak data) and raw CSV
values of any scale (pixel counts 0..16, cell areas near 1000) train without a per-dataset
normalisation step that one member could forget or apply differently. asinh is close to the
identity near 0 and logarithmic for large values.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from bcfl_cli.errors import ContractError
from bcfl_cli.fl.tensorfile import LazyTensors
from bcfl_cli.fl.tensors import encode_tensors
from bcfl_cli.fl.update_file import shapes_of
from bcfl_cli.protocol.spec import ModelSpec

#: Channels of the two 3x3 convolutions of the ``cnn`` architecture.
CNN_CHANNELS = (16, 32)


class InputSquash(nn.Module):
    """asinh on every feature: data-independent scaling shared by all members (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.asinh(x)


def num_features(spec: ModelSpec) -> int:
    """Columns a data row must have (besides its label) to feed this model."""
    return math.prod(spec.input_shape)


def _layers(spec: ModelSpec) -> OrderedDict[str, nn.Module]:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["squash"] = InputSquash()
    layers["unflatten"] = nn.Unflatten(1, tuple(spec.input_shape))
    width = num_features(spec)
    if spec.architecture == "cnn":
        channels, height, breadth = spec.input_shape
        c1, c2 = CNN_CHANNELS
        layers["conv1"] = nn.Conv2d(channels, c1, kernel_size=3, padding=1)
        layers["relu_c1"] = nn.ReLU()
        layers["conv2"] = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        layers["relu_c2"] = nn.ReLU()
        width = c2 * height * breadth
    layers["flatten"] = nn.Flatten()
    if spec.architecture in ("mlp", "cnn"):
        for i, size in enumerate(spec.hidden):
            layers[f"fc{i}"] = nn.Linear(width, size)
            layers[f"relu{i}"] = nn.ReLU()
            width = size
    layers["out"] = nn.Linear(width, spec.num_classes)
    return layers


def build_model(spec: ModelSpec) -> nn.Sequential:
    """The model of ``spec`` with its deterministic initial weights (float32, CPU).

    It takes flat feature rows ``[N, D]`` (as loaded from CSV) and reshapes them itself.

    ``logreg`` is one Linear layer; ``mlp`` adds ``spec.hidden`` fully connected ReLU layers;
    ``cnn`` puts two 3x3 convolutions (16 and 32 channels, padding 1) in front of the same head.
    Initialisation runs in a forked RNG seeded with ``spec.seed``, so it neither depends on nor
    disturbs the caller's random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = nn.Sequential(_layers(spec))
    return model.to(torch.float32)


def initial_state(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Initial weights by state_dict name: float32, contiguous, detached CPU copies."""
    return {
        name: tensor.detach().to(torch.float32).contiguous().clone()
        for name, tensor in build_model(spec).state_dict().items()
    }


def initial_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The initial state's names and shapes, without allocating a weight.

    The model is built on torch's ``meta`` device (shapes, no storage): a validator needs the
    layout an update must have, and building the weights for it once held the largest layer
    twice (a 63 MB transient at a 16M-parameter MLP, issue 19's memory bound).
    """
    with torch.device("meta"):
        model = nn.Sequential(_layers(spec))
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def initial_state_bytes(spec: ModelSpec) -> bytes:
    """Canonical safetensors bytes of the initial weights: the genesis ``initial_model`` blob."""
    return encode_tensors(initial_state(spec))


def state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """Canonical safetensors bytes of a float32 state (what goes into the blob store)."""
    return encode_tensors(
        {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    )


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 hex of :func:`state_bytes`: equal to the blob-store hash of the stored state."""
    return hashlib.sha256(state_bytes(state)).hexdigest()


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``model``, refusing missing or extra names and shape mismatches.

    One tensor at a time: ``state`` may be a lazy mapping over a file (the trainer's base
    model), and ``load_state_dict`` would first copy every value of it into a dict.
    """
    targets = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in targets.items()}
    if set(expected) != set(state):
        _wrong_weights(expected, {k: expected.get(k, ()) for k in state})
    wrong = sorted(
        k for k, shape in shapes_of(state).items() if k in expected and expected[k] != shape
    )
    if wrong:
        _wrong_weights(expected, shapes_of(state))
    lazy = state if isinstance(state, LazyTensors) else None
    with torch.no_grad():
        for name, target in targets.items():
            # from a file, read into the weight itself where it can be (the same bytes)
            if lazy is None or not lazy.read_into(name, target):
                target.copy_(state[name])


def _wrong_weights(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    raise ContractError(
        "wrong_shape",
        f"weights do not fit the genesis model (missing {missing}, extra {extra}, "
        f"wrong shape {wrong})",
    )


def parameter_count(spec: ModelSpec) -> int:
    """Number of trainable scalars: sizes blobs and benchmark tables."""
    return sum(math.prod(shape) for shape in initial_shapes(spec).values())
