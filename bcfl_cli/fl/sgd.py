"""The built-in trainer's SGD on CPU, without ``torch.optim``'s one-time start.

The first ``torch.optim`` optimiser a process builds imports torch's compiler stack
(``torch._dynamo`` and about 830 modules: 71 MB of resident memory in a bare process, kept for
the process' life), even for plain SGD on CPU, which never compiles anything. A training node
paid it at start (``node/trainer.py``'s ``warm_up``), and at 10M parameters that fixed cost
put it over issue 19's bound of 5x its update above the idle of a node that does not train.

:class:`PlainSgd` is the arithmetic of ``torch.optim.SGD``'s single-tensor path, the one torch
takes for CPU tensors, operation for operation and in the same order, so the trained weights
are bit-identical (tests/fl/test_plain_sgd.py steps both side by side; tests/fl/test_training.py
pins the deltas). Only bcfl's own loop (``fl/training.py``) uses it; a model app with its own
``train`` hook keeps whatever optimiser it builds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class PlainSgd:
    """SGD with momentum and L2 weight decay (no dampening, no Nesterov), as torch steps it.

    The loop's interface to it is the one it uses of ``torch.optim.Optimizer``: ``param_groups``
    (one group; the loop sets ``lr`` before each step), ``zero_grad`` and ``step``.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        *,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        group: dict[str, Any] = {
            "params": list(params),
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
        }
        self.param_groups: list[dict[str, Any]] = [group]
        #: momentum buffers by parameter (made on a parameter's first step, as torch does)
        self._buffers: dict[nn.Parameter, torch.Tensor] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if set_to_none:
                    param.grad = None
                else:
                    param.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One step: ``torch.optim.sgd._single_tensor_sgd`` with ``maximize=False`` and
        ``dampening=0``; parameters without a gradient are skipped (their buffers untouched)."""
        for group in self.param_groups:
            lr = float(group["lr"])
            momentum = float(group["momentum"])
            decay = float(group["weight_decay"])
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                if decay != 0:
                    grad = grad.add(param, alpha=decay)
                if momentum != 0:
                    buffer = self._buffers.get(param)
                    if buffer is None:
                        buffer = grad.detach().clone()
                        self._buffers[param] = buffer
                    else:
                        buffer.mul_(momentum).add_(grad, alpha=1)
                    grad = buffer
                param.add_(grad, alpha=-lr)


__all__ = ["PlainSgd"]
