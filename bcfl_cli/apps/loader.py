"""Finding and importing a model app by its entry point, after checking its source.

Order matters: the app's source is located without running any of it (``PathFinder`` on the
top-level name only), hashed, and compared with the genesis pin; only a match is imported. The
import compiles from the hashed source (``sys.pycache_prefix`` points at a fresh folder for its
duration), so a stale or planted ``__pycache__/*.pyc`` next to it is never run. A folder given
with ``--app`` goes on ``sys.path`` for that import only.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcfl_cli.apps.api import ModelApp
from bcfl_cli.apps.manifest import SourceManifest, differing_files, read_manifest
from bcfl_cli.errors import AppError, BcflError
from bcfl_cli.protocol.spec import ENTRY_POINT_RE, AppPin

#: Differing files named in a refusal; the rest are counted.
MAX_NAMED_DIFFERENCES = 10


@dataclass(frozen=True)
class LoadedApp:
    """An imported app and the manifest of the source it was imported from."""

    entry_point: str
    source: Path  #: the package folder or module file
    manifest: SourceManifest
    obj: Any

    def hook(self, name: str) -> Any:
        """The app's optional hook ``name``, or None (bcfl's default is then used)."""
        found = getattr(self.obj, name, None)
        return found if callable(found) else None


def parse_entry_point(entry_point: str) -> tuple[str, str]:
    if not ENTRY_POINT_RE.match(entry_point):
        raise AppError(f"entry point {entry_point!r}: expected module:object (Python names)")
    module, _, attr = entry_point.partition(":")
    return module, attr


def locate_source(entry_point: str, folder: Path | None = None) -> Path:
    """The package folder or module file the entry point's top-level name resolves to.

    Runs no code of the app. With ``folder``, only that folder is searched; without it, the
    interpreter's path (an installed package, a ``pip install -e`` checkout).
    """
    module, _ = parse_entry_point(entry_point)
    top = module.split(".")[0]
    if folder is not None and not folder.is_dir():
        raise AppError(f"--app {folder}: not a folder")
    search = [str(folder.resolve())] if folder is not None else sys.path
    spec = importlib.machinery.PathFinder.find_spec(top, search)
    where = f"in {folder}" if folder is not None else "among the installed packages"
    if spec is None:
        raise AppError(
            f"the model app {entry_point!r} is not installed: no module {top!r} {where}",
            hint="install the consortium's app from source you reviewed (pip install PATH), "
            "or give its folder with --app PATH",
        )
    locations = list(spec.submodule_search_locations or [])
    if len(locations) > 1:
        raise AppError(f"{top!r} is a namespace package spread over {len(locations)} folders")
    if locations:
        return Path(locations[0]).resolve()
    if spec.origin is None or not Path(spec.origin).is_file():
        raise AppError(f"{top!r} {where} is not a Python source file or package")
    return Path(spec.origin).resolve()


def check_pin(pin: AppPin, manifest: SourceManifest) -> None:
    """Refuse source that is not exactly what the genesis pins, naming the files."""
    if manifest.hash == pin.manifest:
        return
    differ = differing_files(pin.files, manifest.files)
    named = ", ".join(differ[:MAX_NAMED_DIFFERENCES])
    more = len(differ) - MAX_NAMED_DIFFERENCES
    raise AppError(
        f"the installed app {pin.entry_point!r} ({manifest.root}) does not match the genesis "
        f"pin: {named}" + (f" and {more} more" if more > 0 else ""),
        hint="install exactly the app the consortium pinned (manifest "
        f"{pin.manifest[:16]}...); bcfl never downloads code from peers",
    )


@contextmanager
def _import_context(folder: Path | None) -> Iterator[None]:
    saved_path, saved_prefix = list(sys.path), sys.pycache_prefix
    with tempfile.TemporaryDirectory(prefix="bcfl-app-pyc-") as fresh:
        if folder is not None:
            sys.path.insert(0, str(folder.resolve()))
        sys.pycache_prefix = fresh
        try:
            yield
        finally:
            sys.path[:] = saved_path
            sys.pycache_prefix = saved_prefix


#: Top-level names this process imported as apps: only those may be dropped and re-imported.
_APP_TOPS: set[str] = set()


def _forget(top: str, source: Path) -> None:
    """Drop an earlier import of the app (maybe another copy) so the checked one is imported.

    A module of that name that bcfl did not import as an app (the standard library, torch,
    bcfl itself) is never dropped: the app's name collides with it, and that is refused.
    """
    loaded = sys.modules.get(top)
    if loaded is not None and top not in _APP_TOPS:
        raise AppError(
            f"the app's package name {top!r} collides with the module {top!r} already loaded "
            f"from {getattr(loaded, '__file__', None) or 'the interpreter'}, not {source}"
        )
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]


def _inside(path: str | None, source: Path) -> bool:
    if path is None:
        return False
    resolved = Path(path).resolve()
    return resolved == source or source in resolved.parents


def load_app(entry_point: str, folder: Path | None = None, pin: AppPin | None = None) -> LoadedApp:
    """Locate, hash, check against ``pin`` (when given), then import the app's object."""
    source = locate_source(entry_point, folder)
    manifest = read_manifest(source)
    if pin is not None:
        check_pin(pin, manifest)
    module_name, attr = parse_entry_point(entry_point)
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names:
        raise AppError(f"the app's package name {top!r} is a standard library module")
    with _import_context(folder):
        _forget(top, source)
        _APP_TOPS.add(top)
        try:
            module = importlib.import_module(module_name)
        except BcflError:
            raise
        except Exception as exc:  # the app's own code failed: say so, with its message
            raise AppError(
                f"importing the model app {entry_point!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
    if not _inside(getattr(sys.modules.get(top), "__file__", None), source):
        raise AppError(f"{top!r} was imported from elsewhere than the checked source {source}")
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise AppError(f"entry point {entry_point!r}: {module_name} has no {attr!r}")
    if not isinstance(obj, ModelApp):
        raise AppError(f"entry point {entry_point!r} has no build_model(config)")
    return LoadedApp(entry_point, source, manifest, obj)
