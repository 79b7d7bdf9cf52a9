"""The consortium's app bound to its genesis: what ``bcfl init``, ``bcfl train`` and the node
call, whichever app the genesis names.

:func:`bind_app` resolves the ``[model]`` section: the builtin app for a builtin architecture,
or the pinned app, located, checked against its pin and imported (``loader``). The methods
below wrap the app's hooks (or bcfl's defaults) and hold bcfl's side of the interface: load the
global weights, subtract them from the trained ones, check names, shapes and finiteness, turn
metrics into the decimal strings that go on chain, and report an app's own failure as an
``AppError`` naming the hook.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from torch import nn

from bcfl_cli.apps import builtin, defaults
from bcfl_cli.apps.api import AppConfig, Progress, TrainOutput
from bcfl_cli.apps.loader import load_app
from bcfl_cli.apps.manifest import SourceManifest
from bcfl_cli.errors import AppError, BcflError
from bcfl_cli.fl.models import load_state, state_bytes
from bcfl_cli.fl.training import TrainResult, decimal
from bcfl_cli.fl.update_file import DeltaView, shapes_of
from bcfl_cli.protocol.spec import AppModelSpec, ModelSpec, TrainingPlan

#: Metrics an app may report a round (the update transaction holds at most 32, and bcfl adds
#: its own, such as ``dp_epsilon_total``).
MAX_APP_METRICS = 24
_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")
_DECIMAL = re.compile(
    r"^-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?([eE][-+]?[0-9]{1,3})?\Z|^(nan|inf|-inf)\Z"
)

T = TypeVar("T")


@dataclass(frozen=True)
class BoundApp:
    """One app with the config and plan of one genesis."""

    entry_point: str
    obj: Any
    config: AppConfig
    plan: TrainingPlan
    #: the checked source (None for the builtin app, which is part of bcfl)
    manifest: SourceManifest | None = None

    @property
    def is_builtin(self) -> bool:
        return self.manifest is None

    @property
    def uses_bcfl_loop(self) -> bool:
        """Whether rounds run bcfl's training loop (``defaults.train``: the builtin app, or an
        app without its own ``train``), not the app's own."""
        return self.is_builtin or self._hook("train") is None

    def _call(self, hook: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except BcflError:
            raise
        except Exception as exc:  # the app's own code failed: name the hook and the reason
            raise AppError(
                f"the model app {self.entry_point!r} failed in {hook}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _hook(self, name: str) -> Any:
        found = getattr(self.obj, name, None)
        return found if callable(found) else None

    # --- the model ---------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The app's model with its initial weights; refused unless every weight is float32."""
        with torch.random.fork_rng(devices=[]):
            model = self._call("build_model", self.obj.build_model, self.config)
        return self._checked(model)

    def _checked(self, model: Any) -> nn.Module:
        if not isinstance(model, nn.Module):
            raise AppError(
                f"the model app {self.entry_point!r}: build_model returned a "
                f"{type(model).__name__}, not a torch.nn.Module"
            )
        state = model.state_dict()
        if not state:
            raise AppError(f"the model app {self.entry_point!r} built a model without weights")
        wrong = sorted(k for k, v in state.items() if v.dtype != torch.float32)
        if wrong:
            raise AppError(
                f"the model app {self.entry_point!r}: weights must be float32, "
                f"{wrong[:3]} are not",
                hint="integer buffers (BatchNorm's num_batches_tracked) cannot be averaged: "
                "use track_running_stats=False or GroupNorm",
            )
        return model

    def initial_state(self) -> dict[str, torch.Tensor]:
        return {
            k: v.detach().to(torch.float32).contiguous().clone()
            for k, v in self.build_model().state_dict().items()
        }

    def initial_state_bytes(self) -> bytes:
        """Canonical safetensors bytes of the initial weights (the genesis ``initial_model``)."""
        return state_bytes(self.initial_state())

    def initial_model_hash(self) -> str:
        return hashlib.sha256(self.initial_state_bytes()).hexdigest()

    # --- data, training, evaluation ------------------------------------------------------
    def load_data(self, path: Path) -> Any:
        hook = self._hook("load_data")
        if hook is None:
            return defaults.load_data(Path(path), self.config, self.plan)
        return self._call("load_data", hook, Path(path), self.config)

    def model_with(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        """The app's model holding ``state`` (read one tensor at a time: it may be lazy)."""
        model = self.build_model()
        load_state(model, state)
        return model

    def train_round(
        self,
        global_state: Mapping[str, torch.Tensor],
        data: Any,
        *,
        seed: int,
        device: str = "cpu",
        progress: Progress | Callable[[int, int], None] | None = None,
    ) -> TrainResult:
        """One local round from ``global_state``: the delta, sample count and chain metrics."""
        model = self.model_with(global_state)
        hook = self._hook("train") or defaults.train
        out = self._call(
            "train",
            hook,
            model,
            data,
            self.plan,
            seed=seed,
            device=device,
            progress=relay_progress(progress),
        )
        if not isinstance(out, tuple) or len(out) != 3:
            raise AppError(f"the model app {self.entry_point!r}: train must return a TrainOutput")
        weights, num_samples, metrics = TrainOutput(*out)
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise AppError(
                f"the model app {self.entry_point!r}: train returned {num_samples!r} samples, "
                "expected a positive integer"
            )
        for parameter in model.parameters():
            parameter.grad = None  # an app's loop may leave its last gradients behind
        delta = self._delta(global_state, weights)
        return TrainResult(delta, num_samples, self._chain_metrics(metrics))

    def _delta(self, global_state: Mapping[str, torch.Tensor], weights: Any) -> DeltaView:
        """``weights - global_state``, checked now and computed a tensor at a time later (by
        whoever writes the update), so the round's delta is never whole in memory."""
        if not isinstance(weights, Mapping):
            raise AppError(
                f"the model app {self.entry_point!r}: train must return the trained state_dict"
            )
        if set(weights) != set(global_state):
            raise AppError(
                f"the model app {self.entry_point!r}: trained weights have names "
                f"{sorted(set(weights) ^ set(global_state))[:5]} that differ from the model's"
            )
        shapes = shapes_of(global_state)
        for name, shape in shapes.items():
            value = weights[name]
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
                raise AppError(
                    f"the model app {self.entry_point!r}: trained weight {name!r} is not a "
                    f"tensor of shape {list(shape)}"
                )
        return DeltaView(weights, global_state, shapes)

    def _chain_metrics(self, metrics: Any) -> dict[str, str]:
        if not isinstance(metrics, Mapping) or len(metrics) > MAX_APP_METRICS:
            raise AppError(
                f"the model app {self.entry_point!r}: metrics must be a mapping of at most "
                f"{MAX_APP_METRICS} names"
            )
        out: dict[str, str] = {}
        for name, value in metrics.items():
            if not isinstance(name, str) or not _METRIC_NAME.match(name):
                raise AppError(f"metric name {name!r}: use a-z, 0-9 and _ (64 at most)")
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise AppError(f"metric {name!r}: {type(value).__name__} is not a number")
            text = value if isinstance(value, str) else _number(value)
            if not _DECIMAL.match(text):
                raise AppError(f"metric {name!r}: {text[:20]!r} is not a decimal number")
            out[name] = text
        return out

    def demo_data(
        self, members: int, out_dir: Path, *, seed: int, non_iid: float
    ) -> tuple[list[Path], Path] | None:
        """The app's ``demo_data`` hook (member partitions, test set), or None without one."""
        hook = self._hook("demo_data")
        if hook is None:
            return None
        found = self._call("demo_data", hook, members, Path(out_dir), seed=seed, non_iid=non_iid)
        try:
            parts, test = _paths(found)
        except (TypeError, ValueError) as exc:
            raise AppError(
                f"the model app {self.entry_point!r}: demo_data must return "
                "(member paths, test path)"
            ) from exc
        if len(parts) != members:
            raise AppError(
                f"the model app {self.entry_point!r}: demo_data gave {len(parts)} partitions "
                f"for {members} members"
            )
        return parts, test

    def evaluate(self, state: Mapping[str, torch.Tensor], data: Any) -> dict[str, float]:
        """The app's metrics of the model ``state`` on ``data`` (numbers only)."""
        model = self.model_with(state)
        hook = self._hook("evaluate")
        found = (
            self._call("evaluate", hook, model, data)
            if hook is not None
            else defaults.evaluate(model, data)
        )
        if not isinstance(found, Mapping):
            raise AppError(f"the model app {self.entry_point!r}: evaluate must return a mapping")
        return {
            str(k): float(v)
            for k, v in found.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }


def _paths(found: Any) -> tuple[list[Path], Path]:
    parts, test = found
    return [Path(p) for p in parts], Path(test)


def relay_progress(report: Progress | Callable[[int, int], None] | None) -> Progress | None:
    """``report`` as a :class:`Progress` an app may call with or without the loss."""
    if report is None:
        return None
    try:
        takes_loss = "loss" in inspect.signature(report).parameters
    except (TypeError, ValueError):
        takes_loss = False
    if takes_loss:
        return cast(Progress, report)
    plain = report

    def relay(step: int, total: int, /, loss: float | None = None) -> None:
        plain(step, total)

    return relay


def _number(value: int | float) -> str:
    return str(value) if isinstance(value, int) else decimal(float(value))


def bind_app(
    model: ModelSpec | AppModelSpec, plan: TrainingPlan, folder: Path | None = None
) -> BoundApp:
    """The genesis' app: builtin, or the pinned one (refused unless it matches its pin)."""
    if isinstance(model, ModelSpec):
        app = builtin.BuiltinApp(plan.label_column)
        return BoundApp(builtin.ENTRY_POINT, app, model.to_document(), plan)
    pin = model.app
    loaded = load_app(pin.entry_point, folder, pin)
    return BoundApp(pin.entry_point, loaded.obj, pin.config, plan, loaded.manifest)


def bind_unpinned(
    entry_point: str, config: AppConfig, plan: TrainingPlan, folder: Path | None = None
) -> BoundApp:
    """An app not yet pinned by any genesis (``bcfl app check``, ``consortium example``)."""
    loaded = load_app(entry_point, folder)
    return BoundApp(entry_point, loaded.obj, dict(config), plan, loaded.manifest)


__all__ = ["MAX_APP_METRICS", "BoundApp", "bind_app", "bind_unpinned"]
