"""The model app interface: what a consortium's own model and training code provides.

A *model app* is an installable package or a plain folder of Python files, named by an entry
point ``"module:object"`` (``object`` may be dotted: ``"my_app.app:App"``). The object is
anything with the attributes below: a module, an instance, or a class with static methods.
Only :meth:`ModelApp.build_model` is required; for each optional hook the app leaves out, bcfl
uses its default (:mod:`bcfl_cli.apps.defaults`: today's CSV loader and SGD/Adam loop).

What bcfl does around the app, so that the app never has to:

- it builds the model from the genesis' app config and loads the round's global weights into
  it (safetensors only; no code, pickle or module ever travels between members);
- it turns the trained weights into the update (``trained - global`` in float32), checks the
  contract (names, shapes, dtypes, finiteness, norm bound) and writes the blob;
- it converts the metrics to the decimal strings that go on chain.

Aggregation, the contract and ``verify-chain --deep`` never call the app: they read tensors.

The genesis pins the app (PROTOCOL.md, "The model app pin"): its entry point, the SHA-256 of
its source manifest, its config and the hash of the initial weights it builds. A member runs
the app only from source it installed and reviewed itself; a node or ``bcfl train`` whose
installed app does not match the pin refuses to train and names the files that differ.

A minimal app (``my_app/__init__.py``, entry point ``my_app:app``)::

    from torch import nn

    class App:
        @staticmethod
        def build_model(config):
            return nn.Sequential(nn.Flatten(), nn.Linear(config["features"], config["classes"]))

    app = App()

An app folder names its entry point and config in ``pyproject.toml`` (``[tool.bcfl.app]``
``entry_point`` and ``[tool.bcfl.app.config]``); ``bcfl app new NAME`` writes one that works,
``bcfl app check FOLDER --data SAMPLE`` tries it, ``bcfl consortium example --app FOLDER``
pins it, and ``--app FOLDER`` (or ``BCFL_APP``) makes ``init``, ``train`` and ``node`` import it
from there rather than from the installed packages.

Determinism: ``build_model`` must build the same initial weights on every member from the same
config (seed your RNG from the config, as the builtin app does with a forked RNG), or founders
derive different genesis hashes. ``train`` receives a seed; use it for every random choice so a
member can re-run a round.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:  # the interface stays importable without torch (bcfl --help loads no torch)
    import torch
    from torch import nn

    from bcfl_cli.protocol.spec import TrainingPlan

#: The app's config as the genesis pins it (``[model.app.config]`` in the consortium file),
#: read-only: strings, integers, booleans, lists and tables. No floats (the genesis is signed and
#: hashed, and a float has no single spelling): write ``lr = "0.05"`` and parse it in the app.
#: For the builtin app it is the ``[model]`` table itself (architecture, input_shape, ...).
AppConfig = Mapping[str, Any]

#: Metrics an app reports for a round: names of at most 64 characters, values numbers or short
#: strings. bcfl writes numbers as fixed-point decimal strings on chain (no floats in signed
#: objects); ``steps``, ``train_loss``, ``eval_loss``, ``eval_accuracy`` are the names bcfl's
#: own tools display.
Metrics = Mapping[str, float | int | str]


class Progress(Protocol):
    """Called after each training step: ``progress(step, total)`` or with the batch loss.

    ``total`` is the number of steps the round will take (0 when unknown). bcfl renders it in
    ``bcfl train`` and in the node's log; an app may call it as often as it likes.
    """

    def __call__(self, step: int, total: int, /, loss: float | None = None) -> None: ...


class TrainOutput(NamedTuple):
    """What :meth:`ModelApp.train` returns (a plain 3-tuple in the same order also works).

    ``weights``: the trained model's full ``state_dict`` (not a delta; bcfl subtracts the global
    weights itself, in float32, so every app's update is computed the same way), with exactly
    the names and shapes of the model ``build_model`` built. ``num_samples``: examples trained
    on, the FedAvg weight (checked against the contract's bounds). ``metrics``: see
    :data:`Metrics`.
    """

    weights: Mapping[str, torch.Tensor]
    num_samples: int
    metrics: Metrics


@runtime_checkable
class ModelApp(Protocol):
    """The one required hook. The optional ones are documented on :class:`FullModelApp`."""

    def build_model(self, config: AppConfig) -> nn.Module:
        """The model, with its deterministic initial weights (float32 parameters, on CPU).

        Called by ``bcfl init`` (the initial weights' hash goes into the genesis), by
        ``bcfl app check`` and before every local round (the round's global weights are then
        loaded into it). Buffers count as weights: everything in ``state_dict()`` travels.
        """
        ...


class FullModelApp(ModelApp, Protocol):
    """A model app that replaces every default. Each method below is optional on its own."""

    def load_data(self, path: Path, config: AppConfig) -> Any:
        """This member's data from ``path`` (a file or a folder), in whatever form ``train``
        and ``evaluate`` take. Never leaves the member.

        Raise :class:`bcfl_cli.errors.UsageError` naming the file and the row or item for bad
        data; any other exception is reported as the app's fault, with its message. The
        default (no ``load_data``) reads the file by its kind with bcfl's loaders and returns a
        :class:`bcfl_cli.fl.data.Dataset` (``features``, ``labels`` tensors).
        """
        ...

    def train(
        self,
        model: nn.Module,
        data: Any,
        plan: TrainingPlan,
        *,
        seed: int,
        device: str,
        progress: Progress | None,
    ) -> TrainOutput:
        """Train one round from the global weights already loaded into ``model`` (on CPU).

        ``plan`` is the genesis' training plan (optimizer, lr, epochs, batch size, DP, ...);
        ``device`` is ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (move the model there yourself);
        ``seed`` drives every random choice. The default (no ``train``) is bcfl's loop over a
        ``Dataset`` with cross-entropy, the plan's optimizer, FedProx and DP-SGD.
        """
        ...

    def evaluate(self, model: nn.Module, data: Any) -> Metrics:
        """Metrics of ``model`` on ``data`` (``loss``, ``accuracy`` by convention), used by
        ``bcfl app check``, the demo and the benches. The default computes cross-entropy and
        accuracy over a ``Dataset``."""
        ...

    def demo_data(
        self, members: int, out_dir: Path, *, seed: int, non_iid: float
    ) -> tuple[list[Path], Path]:
        """For ``bcfl demo --app`` only: write one data partition per member under ``out_dir``
        (a Dirichlet(``non_iid``) label split; 0 means IID) and return (their paths, the test
        set's path), each something ``load_data`` reads. Without it the demo splits the
        sample CSV of ``--dataset``. Never called on a member's node."""
        ...


#: The optional hooks, in the order bcfl looks them up on the app object.
OPTIONAL_HOOKS = ("load_data", "train", "evaluate", "demo_data")
