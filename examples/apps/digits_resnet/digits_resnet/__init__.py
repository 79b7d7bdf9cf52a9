"""A bcfl model app: a small ResNet-style CNN on 8x8 handwritten digits (entry point
``digits_resnet:app``).

The model takes flat rows of 64 pixels in [0, 1] (what ``digits_resnet.data`` writes and bcfl's
``.npz`` loader reads) and classifies them into 10 digits. It keeps bcfl's default training
loop, so the genesis' training plan (optimizer, learning rate and schedule, steps, clipping,
precision, DP-SGD) applies as it is; the app brings the model, its data loader and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from digits_resnet.model import DigitsResNet, config_of

__all__ = ["App", "DigitsResNet", "app"]


class App:
    """The app object the entry point names: ``build_model``, ``load_data`` and, for
    ``bcfl demo --app``, ``demo_data``."""

    @staticmethod
    def build_model(config: Mapping[str, Any]) -> nn.Module:
        return DigitsResNet(config_of(config))

    @staticmethod
    def load_data(path: Path, config: Mapping[str, Any]) -> Any:
        """This member's ``.npz`` (``features`` ``[N, 64]`` in [0, 1], ``labels`` ``[N]``),
        read by bcfl's loader (no pickle) and checked against the model's input and classes."""
        from bcfl_cli.fl.loaders import load_dataset

        settings = config_of(config)
        return load_dataset(
            Path(path), num_classes=settings.classes, input_shape=[1, settings.side, settings.side]
        )

    @staticmethod
    def demo_data(
        members: int, out_dir: Path, *, seed: int, non_iid: float
    ) -> tuple[list[Path], Path]:
        """The demo's partitions: Dirichlet(``non_iid``) over the classes (0: an IID split)."""
        from digits_resnet.data import write_partitions

        alpha = non_iid if non_iid > 0 else IID_ALPHA
        return write_partitions(Path(out_dir), members, alpha=alpha, seed=seed)


#: A Dirichlet alpha so large that every member gets each class in proportion: an IID split.
IID_ALPHA = 1e6

app = App()
