"""bcfl's SGD on CPU (fl/sgd.py): torch.optim.SGD's arithmetic bit for bit, without its start.

The trained deltas below were pinned with ``torch.optim.SGD`` in the loop (main `62e5384`,
torch 2.13 CPU), before ``PlainSgd`` replaced it: the same seed gives the same update after the
change, with momentum, weight decay, FedProx, clipping, a cosine schedule and DP-SGD.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.fl import models
from bcfl_cli.fl.data import Dataset
from bcfl_cli.fl.sgd import PlainSgd
from bcfl_cli.fl.training import starts_torch_optim, train_local
from bcfl_cli.protocol.spec import DPSpec, ModelSpec, TrainingPlan

SPEC = ModelSpec(architecture="mlp", input_shape=[8], num_classes=3, hidden=[16], seed=3)


def _plan(**kw: object) -> TrainingPlan:
    return TrainingPlan.model_validate({"lr": 0.3, "batch_size": 16, "local_epochs": 1, **kw})


def _toy(n: int = 240, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    features = torch.eye(3, 8)[labels] * 3.0 + 0.5 * torch.randn(n, 8, generator=g)
    return Dataset(features.to(torch.float32), labels.to(torch.int64))


#: sha256 of the delta's canonical bytes, with torch.optim.SGD stepping (before PlainSgd)
PINNED = {
    "sgd": ("6088a0b16061bb5f3856f75161d980efde65469c9f54d1e1c95b56b0ad8f156a", {}),
    "momentum_decay": (
        "05cf2c3a140161eb40797d5d1725aee0c05fd559647b0b6eea28fee3fc5cfee1",
        {"momentum": 0.9, "weight_decay": 0.01, "local_epochs": 2},
    ),
    "fedprox_clip_cosine": (
        "c4c8b6f0afca9b8b02aa3de25e98d47da8436990838b212b49da241cba7713a5",
        {"fedprox_mu": 0.5, "grad_clip_norm": 0.5, "lr_schedule": "cosine", "momentum": 0.5},
    ),
    "dp": (
        "0862790f598dcc01215007ac306c89b57e94eea801fc3f3b05ab44d340706f13",
        {"dp": DPSpec(enabled=True, max_grad_norm=1.0, noise_multiplier=1.0, delta=1e-5)},
    ),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_the_loop_trains_the_deltas_torch_optim_trained(name: str) -> None:
    digest, options = PINNED[name]
    result = train_local(
        SPEC, _plan(**options), models.initial_state(SPEC), _toy(), seed=7, device="cpu"
    )
    assert hashlib.sha256(models.state_bytes(result.delta)).hexdigest() == digest


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    lr=st.sampled_from([1e-3, 0.05, 0.3, 1.7]),
    momentum=st.sampled_from([0.0, 0.5, 0.9, 0.99]),
    decay=st.sampled_from([0.0, 1e-4, 0.01, 2.5]),
    steps=st.integers(1, 6),
)
def test_each_step_is_torch_sgds_bit_for_bit(
    seed: int, lr: float, momentum: float, decay: float, steps: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    start = [
        torch.randn(7, 5, generator=g),
        torch.randn(5, generator=g),
        torch.randn(3, generator=g),
    ]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    theirs = [torch.nn.Parameter(t.clone()) for t in start]
    plain = PlainSgd(ours, lr=lr, momentum=momentum, weight_decay=decay)
    torch_sgd = torch.optim.SGD(theirs, lr=lr, momentum=momentum, weight_decay=decay)
    for step in range(steps):
        rate = lr / (step + 1)  # the loop sets each step's rate on the group, as here
        plain.param_groups[0]["lr"] = torch_sgd.param_groups[0]["lr"] = rate
        for group in (ours, theirs):
            group[2].grad = None  # a parameter without a gradient is skipped by both
        grads = [torch.randn(t.shape, generator=g) * 10 for t in start[:2]]
        for p, q, grad in zip(ours, theirs, grads, strict=False):
            p.grad, q.grad = grad.clone(), grad.clone()
        plain.step()
        torch_sgd.step()
        for p, q in zip(ours, theirs, strict=True):
            assert (
                torch.equal(p, q) and p.detach().numpy().tobytes() == q.detach().numpy().tobytes()
            )
        plain.zero_grad()
        assert all(p.grad is None for p in ours)


def test_which_loops_start_torchs_compiler_stack() -> None:
    assert not starts_torch_optim(_plan(), "cpu")
    assert not starts_torch_optim(_plan(momentum=0.9, weight_decay=0.1), torch.device("cpu"))
    assert starts_torch_optim(_plan(optimizer="adam"), "cpu")
    assert starts_torch_optim(_plan(optimizer="adamw"), "cpu")
    assert starts_torch_optim(_plan(dp=DPSpec(enabled=True)), "cpu")
    assert starts_torch_optim(_plan(), "cuda")


PROBE = textwrap.dedent(
    """
    import json, sys
    import torch
    from bcfl_cli.apps.runner import bind_app
    from bcfl_cli.node.trainer import warm_up
    from bcfl_cli.protocol.spec import ModelSpec, TrainingPlan

    spec = ModelSpec(architecture="mlp", input_shape=[8], num_classes=3, hidden=[16])
    plan = TrainingPlan.model_validate(json.loads(sys.argv[1]))
    warm_up(bind_app(spec, plan))
    from bcfl_cli.fl.training import train_local
    from bcfl_cli.fl import models
    from bcfl_cli.fl.data import Dataset
    data = Dataset(torch.randn(64, 8), torch.arange(64) % 3)
    train_local(spec, plan, models.initial_state(spec), data, seed=1, device="cpu")
    print(json.dumps("torch._dynamo" in sys.modules))
    """
)


@pytest.mark.parametrize(("plan", "imported"), [({}, False), ({"optimizer": "adam"}, True)])
def test_a_node_training_with_sgd_never_imports_torch_dynamo(
    plan: dict[str, object], imported: bool
) -> None:
    """The ~70 MB a training node no longer keeps: its warm-up and rounds with the builtin
    app and SGD import no ``torch._dynamo``; with Adam the warm-up still pays it at start."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps({"lr": 0.1, "batch_size": 16, **plan})],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) is imported
