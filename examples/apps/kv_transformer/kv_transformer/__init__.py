"""A bcfl model app: a transformer encoder on a synthetic key-value retrieval task (entry point
``kv_transformer:app``).

The task (``kv_transformer.task``): a sequence holds ``pairs`` slots, each a (key, value) pair
with distinct keys, then a query naming one of the keys; the label is the value stored under
that key. Keys and values are drawn uniformly, so without reading the sequence no rule beats
chance, ``1 / values`` (1/16 = 6.25% by default): accuracy above it is retrieval learned by
attention (the answer's slot is anywhere in the sequence, and only content says which).

The app keeps bcfl's default loop (cross-entropy, the genesis' optimizer and schedule) and its
``.npz`` loader: token ids travel as float32 features, which the model turns back into ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from kv_transformer.model import KVTransformer, config_of

__all__ = ["App", "KVTransformer", "app"]


class App:
    """``build_model``, ``load_data`` and ``demo_data`` (for ``bcfl demo --app``)."""

    @staticmethod
    def build_model(config: Mapping[str, Any]) -> nn.Module:
        return KVTransformer(config_of(config))

    @staticmethod
    def load_data(path: Path, config: Mapping[str, Any]) -> Any:
        """This member's ``.npz`` of sequences (``features`` ``[N, pairs + 1]`` token ids,
        ``labels`` ``[N]`` values); refused, naming the file and item, if a token is out of
        the vocabulary."""
        from bcfl_cli.errors import UsageError
        from bcfl_cli.fl.loaders import load_dataset

        settings = config_of(config)
        data = load_dataset(
            Path(path), num_classes=settings.values, input_shape=[settings.pairs + 1]
        )
        tokens = data.features
        bad = ((tokens < 0) | (tokens >= settings.vocab) | (tokens != tokens.round())).any(1)
        if bool(bad.any()):
            item = int(bad.nonzero()[0, 0])
            raise UsageError(f"{path}: item {item}: a token is not an id 0..{settings.vocab - 1}")
        return data

    @staticmethod
    def demo_data(
        members: int, out_dir: Path, *, seed: int, non_iid: float
    ) -> tuple[list[Path], Path]:
        """Each member's own sequences (drawn with its own seed) and a common test set."""
        from kv_transformer.task import DEMO_ROWS, TEST_ROWS, Task, write_npz

        del non_iid  # every member draws from the same task; only the draws differ
        task = Task()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        parts = [
            write_npz(out / f"member-{m:02d}.npz", task, DEMO_ROWS, seed=seed * 1000 + m)
            for m in range(1, members + 1)
        ]
        return parts, write_npz(out / "test.npz", task, TEST_ROWS, seed=seed * 1000 + 999)


app = App()
