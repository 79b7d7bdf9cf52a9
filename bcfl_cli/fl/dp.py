"""DP-SGD for one member: per-example clipping, Gaussian noise, and an RDP privacy accountant.

Why our own rather than Opacus: Opacus 1.6 installs next to torch 2.13, but brings SciPy and
opt_einsum for what is here ~60 lines, and its ``GradSampleModule`` rewrites modules with hooks
while ``torch.func`` (``vmap`` over ``grad``) computes per-example gradients for our three fixed
architectures directly. The accountant below reproduces Opacus' RDP accountant at integer orders
(the test pins values computed with Opacus' ``analysis/rdp.py``).

Accounting (Mironov, Talwar and Zhang 2019, "Renyi Differential Privacy of the Sampled Gaussian
Mechanism", Sec. 3.3): for Poisson sampling rate q, noise multiplier sigma and integer order a,
one step is (a, eps_a)-RDP with

    eps_a = log( sum_{k=0..a} C(a,k) (1-q)^(a-k) q^k exp((k^2 - k) / (2 sigma^2)) ) / (a - 1),

RDP composes additively over steps, and the conversion to (epsilon, delta)-DP is the one of
Balle et al. 2020 ("Hypothesis testing interpretations and Renyi DP", Thm. 21), as in Opacus:

    epsilon = min_a  T eps_a + log((a - 1) / a) - (log(delta) + log(a)) / (a - 1).

The guarantee assumes Poisson sampling, which is why DP training samples each example
independently with probability q = batch_size / n at every step (see ``training``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

#: Integer Renyi orders searched for the best epsilon (Opacus' default set, integers only).
ORDERS: tuple[int, ...] = (*range(2, 64), 80, 96, 128, 192, 256)


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high))


def rdp_sampled_gaussian(q: float, noise_multiplier: float, order: int) -> float:
    """RDP epsilon of ONE step of the sampled Gaussian mechanism at integer ``order`` >= 2."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"sampling rate must be in [0, 1], got {q}")
    if order < 2:
        raise ValueError("integer orders start at 2")
    if q == 0.0:
        return 0.0
    if noise_multiplier == 0.0:
        return math.inf
    if q == 1.0:
        return order / (2.0 * noise_multiplier**2)
    log_a = -math.inf
    for k in range(order + 1):
        term = (
            math.lgamma(order + 1)
            - math.lgamma(k + 1)
            - math.lgamma(order - k + 1)
            + k * math.log(q)
            + (order - k) * math.log1p(-q)
            + (k * k - k) / (2.0 * noise_multiplier**2)
        )
        log_a = _logaddexp(log_a, term)
    return log_a / (order - 1)


def epsilon_spent(
    q: float,
    noise_multiplier: float,
    steps: int,
    delta: float,
    orders: Sequence[int] = ORDERS,
) -> tuple[float, int]:
    """(epsilon, best order) after ``steps`` sampled Gaussian steps, for the given ``delta``."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if steps == 0:
        return 0.0, orders[0]
    best, best_order = math.inf, orders[0]
    for order in orders:
        rdp = steps * rdp_sampled_gaussian(q, noise_multiplier, order)
        eps = rdp + math.log1p(-1.0 / order) - (math.log(delta) + math.log(order)) / (order - 1)
        if eps < best:
            best, best_order = eps, order
    return max(best, 0.0), best_order


def clipped_noisy_gradient(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch: float,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The DP-SGD gradient: sum of per-example gradients clipped to ``max_grad_norm``, plus
    N(0, (noise_multiplier * max_grad_norm)^2) noise, divided by the *expected* batch size
    (dividing by the realised size would leak it). Noise is drawn on CPU from ``generator`` so
    a seed gives the same noise on any device.
    """
    params = {k: v.detach() for k, v in model.named_parameters()}

    def example_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    summed: dict[str, torch.Tensor]
    if features.shape[0] > 0:
        per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, features, labels)
        squares = torch.stack([g.flatten(1).pow(2).sum(1) for g in per_example.values()])
        norms = squares.sum(0).sqrt()
        factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        summed = {k: torch.tensordot(factors, g, dims=([0], [0])) for k, g in per_example.items()}
    else:
        summed = {k: torch.zeros_like(v) for k, v in params.items()}
    std = noise_multiplier * max_grad_norm
    result: dict[str, torch.Tensor] = {}
    for k, total in summed.items():
        noise = torch.normal(0.0, std, size=tuple(total.shape), generator=generator)
        result[k] = (total + noise.to(total.device)) / expected_batch
    return result
