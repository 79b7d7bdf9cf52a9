"""An app folder as a founder holds it: its ``pyproject.toml`` names the entry point and config.

::

    [tool.bcfl.app]
    entry_point = "my_app.app:app"

    [tool.bcfl.app.config]        # what build_model(config) receives; no floats
    features = 64

This is where ``bcfl app check``, ``bcfl consortium example --app`` and ``bcfl demo --app``
read them; the genesis then pins them, and members never read this file again.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from bcfl_cli.errors import AppError, UsageError
from bcfl_cli.protocol.spec import AppPin, TrainingPlan

if TYPE_CHECKING:
    from bcfl_cli.apps.runner import BoundApp

MAX_PROJECT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class AppProject:
    folder: Path
    entry_point: str
    config: dict[str, Any]
    #: ``[tool.bcfl.demo.training]``: training plan keys ``bcfl demo --app`` uses (not pinned)
    demo_training: dict[str, Any] = field(default_factory=dict)


def read_project(folder: Path) -> AppProject:
    """The entry point and config of the app in ``folder`` (its ``pyproject.toml``)."""
    folder = Path(folder)
    path = folder / "pyproject.toml"
    if not folder.is_dir():
        raise UsageError(f"{folder}: not an app folder")
    try:
        raw = path.read_bytes()[: MAX_PROJECT_BYTES + 1]
    except OSError as exc:
        raise UsageError(
            f"{path}: cannot read it ({exc.strerror})",
            hint="an app folder has a pyproject.toml with [tool.bcfl.app] (see `bcfl app new`)",
        ) from exc
    if len(raw) > MAX_PROJECT_BYTES:
        raise UsageError(f"{path}: larger than {MAX_PROJECT_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from exc
    section = data.get("tool", {}).get("bcfl", {}).get("app")
    if not isinstance(section, dict) or not isinstance(section.get("entry_point"), str):
        raise UsageError(
            f"{path}: no [tool.bcfl.app] entry_point",
            hint='add [tool.bcfl.app] entry_point = "package.module:object"',
        )
    config = section.get("config", {})
    if not isinstance(config, dict) or set(section) - {"entry_point", "config"}:
        raise UsageError(f"{path}: [tool.bcfl.app] holds entry_point and a config table only")
    demo = data.get("tool", {}).get("bcfl", {}).get("demo", {})
    training = demo.get("training", {}) if isinstance(demo, dict) else None
    if not isinstance(training, dict):
        raise UsageError(f"{path}: [tool.bcfl.demo.training] must be a table")
    return AppProject(folder, section["entry_point"], config, training)


def pin_for(project: AppProject, app: BoundApp | None = None) -> AppPin:
    """What a genesis pins of this app: located, hashed, imported, its initial weights built."""
    from bcfl_cli.apps.runner import bind_unpinned  # torch, only when pinning

    if app is None:
        app = bind_unpinned(project.entry_point, project.config, TrainingPlan(), project.folder)
    assert app.manifest is not None
    try:
        return AppPin(
            entry_point=project.entry_point,
            manifest=app.manifest.hash,
            files=app.manifest.files,
            initial_model=app.initial_model_hash(),
            config=project.config,
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AppError(f"{project.folder}: cannot pin this app: {where}: {first['msg']}") from exc


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, the rest as
    it is (JSON's surrogate-pair escapes are not TOML)."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_string(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise AppError(f"app config value {value!r}: only strings, integers, booleans, lists, tables")


def pin_toml(pin: AppPin) -> str:
    """The ``[model.app]`` section of a consortium file that pins ``pin``."""
    lines = [
        "# The model app, pinned: every member installs this exact source (reviewed, from a",
        "# package, a path or a git checkout); a node whose copy differs refuses to train and",
        "# names the files. Code never travels between members. Regenerate with",
        "# `bcfl consortium example --app FOLDER` after changing the app.",
        "# manifest: SHA-256 of the manifest of the files below (PROTOCOL.md); initial_model:",
        "# SHA-256 of the initial weights build_model(config) builds.",
        "[model.app]",
        f"entry_point = {_toml_string(pin.entry_point)}",
        f"manifest = {_toml_string(pin.manifest)}",
        f"initial_model = {_toml_string(pin.initial_model)}",
        f"config = {_toml_value(pin.config)}",
        "",
        "[model.app.files]",
        *(f"{_toml_string(path)} = {_toml_string(d)}" for path, d in pin.files.items()),
        "",
    ]
    return "\n".join(lines)
