"""Torch's CPU allocator asked for huge pages by the CLI (fl/allocator.py, issue 19)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bcfl_cli.cli import app as cli_app
from bcfl_cli.fl.allocator import HUGE_PAGES_ENV, prefer_huge_pages

#: whether a 16 MiB tensor's memory carries the kernel's huge-page advice (``hg`` in its
#: mapping's VmFlags, /proc/self/smaps): what torch's allocator adds under the variable
HUGE_ADVICE = """
import torch
tensor = torch.empty(4 << 20)  # held while its mapping is read
pointer = tensor.data_ptr()
inside, flags = False, []
for line in open("/proc/self/smaps"):
    head = line.split()[0]
    if "-" in head and ":" not in head:
        low, high = (int(x, 16) for x in head.split("-"))
        inside = low <= pointer < high
    elif inside and line.startswith("VmFlags:"):
        flags = line.split()[1:]
        break
print("hg" in flags)
"""


def _run(code: str, env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_ENV}
    if env_value is not None:
        env[HUGE_PAGES_ENV] = env_value
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_huge_pages_asked_for_unless_the_environment_says() -> None:
    env: dict[str, str] = {}
    assert prefer_huge_pages(env) == "1"
    assert env == {HUGE_PAGES_ENV: "1"}
    operator = {HUGE_PAGES_ENV: "0"}
    assert prefer_huge_pages(operator) == "0"
    assert operator == {HUGE_PAGES_ENV: "0"}


def test_the_cli_entry_point_asks_before_any_command_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(HUGE_PAGES_ENV, raising=False)
    monkeypatch.setattr(sys, "argv", ["bcfl", "--version"])
    with pytest.raises(SystemExit) as done:
        cli_app.main()
    assert done.value.code == 0
    assert os.environ[HUGE_PAGES_ENV] == "1"


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads Linux's smaps")
def test_torch_tensors_get_huge_page_advice_once_asked_before_import() -> None:
    asked = "from bcfl_cli.fl.allocator import prefer_huge_pages\nprefer_huge_pages()\n"
    assert _run(asked + HUGE_ADVICE, None) == "True"
    # the operator's 0 wins, and the check tells the two apart
    assert _run(asked + HUGE_ADVICE, "0") == "False"


def test_trained_weights_are_the_same_bytes_with_huge_pages() -> None:
    code = (
        "import hashlib, torch; torch.set_num_threads(1); "
        "from bcfl_cli.fl.data import Dataset; "
        "from bcfl_cli.fl.models import initial_state; "
        "from bcfl_cli.fl.tensors import encode_tensors; "
        "from bcfl_cli.fl.training import train_local; "
        "from bcfl_cli.protocol.spec import ModelSpec, TrainingPlan; "
        "spec = ModelSpec(architecture='mlp', input_shape=[16], num_classes=3, "
        "hidden=[1024, 1024], seed=0); "
        "g = torch.Generator().manual_seed(3); "
        "data = Dataset(torch.randn(96, 16, generator=g), "
        "torch.randint(0, 3, (96,), generator=g)); "
        "r = train_local(spec, TrainingPlan(local_epochs=1, batch_size=32, lr=0.05), "
        "initial_state(spec), data, seed=1); "
        "print(hashlib.sha256(encode_tensors(dict(r.delta))).hexdigest())"
    )
    assert _run(code, "1") == _run(code, "0")
