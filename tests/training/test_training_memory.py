"""A trainer's peak memory (issue 19): at most 5x the update above the idle size of a node
that does not train.

What the node's trainer and ``bcfl train`` run (``training/update.py``) trains a 64 MB model in
a fresh process, which reports its idle resident size (torch imported, data loaded; the kernel's
high-water mark reset there), then pays the node's start-up warm-up (``warm_up(app)``) and
reports the high-water mark once the update is in the blob store. The old path (the base
decoded from its bytes, a dict of deltas, ``encode_tensors``' bytes) peaked at 6.3x; then
weights + gradients + a read buffer, about 2.4-2.5x above an idle taken after torch.optim's
lazy imports (~70 MB more, 3.6x, above the idle taken before them); now, SGD stepped without
torch.optim (``fl/sgd.py``), 2.5x above the idle taken before the warm-up. About 10 s of CPU,
most of it torch's import; more wall time on a loaded machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from bcfl_cli.fl.update_file import write_update
from bcfl_cli.store.blobs import BlobStore

#: hidden width: 64 x 4000 + 4000 x 4000 + 4000 x 10 parameters, a 65 MB float32 update
WIDTH = 4000
#: issue 19 asks for 5x; measured 2.60-2.63x (2026-12-05, load 7), and 3.69x with torch.optim's
#: SGD (its ~70 MB compiler-stack import at warm-up): this bound catches that coming back
BOUND = 3.4

PROBE = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    import torch
    from bcfl_cli.apps.runner import bind_app
    from bcfl_cli.fl.data import Dataset
    from bcfl_cli.node.trainer import warm_up
    from bcfl_cli.protocol.spec import ContractRules, ModelSpec, TrainingPlan
    from bcfl_cli.store.blobs import BlobStore
    from bcfl_cli.training.update import train_update

    def status(field: str) -> int:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def reset_high_water() -> int:
        # the resident size now, the kernel's high-water mark reset to it (so that torch's
        # import peak is not taken for the idle size); ru_maxrss where /proc cannot
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")
            return status("VmRSS")
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def high_water() -> int:
        try:
            return status("VmHWM")
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    root, base, width = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    spec = ModelSpec(architecture="mlp", input_shape=[64], num_classes=10, hidden=[width] * 2)
    app = bind_app(spec, TrainingPlan(local_steps=2, batch_size=16))
    g = torch.Generator().manual_seed(0)
    data = Dataset(torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g))
    # the idle size of a node that does not train: the warm-up a training node pays before it
    # serves is counted above it (with SGD on CPU a first backward pass, torch._dynamo never
    # imported; ~70 MB more with torch.optim, issue 19)
    idle = reset_high_water()
    warm_up(app)
    rules = ContractRules(max_blob_bytes=2**30)
    update = train_update(app, BlobStore(root), base, data, rules, seed=1, with_norm=False)
    print(json.dumps({"idle": idle, "peak": high_water(), "size": update.blob_size}))
    """
)


def test_a_trainer_peaks_well_below_five_updates_above_a_non_training_idle(tmp_path: Path) -> None:
    shapes = {
        "fc0.weight": (WIDTH, 64),
        "fc0.bias": (WIDTH,),
        "fc1.weight": (WIDTH, WIDTH),
        "fc1.bias": (WIDTH,),
        "out.weight": (10, WIDTH),
        "out.bias": (10,),
    }
    blobs = BlobStore(tmp_path / "blobs")
    base_file = tmp_path / "base.safetensors"
    with open(base_file, "wb") as out:  # a base model written without holding it whole
        write_update(_Filled(shapes), out, with_norm=False)
    base = blobs.put_file(base_file)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(blobs.root), base, str(WIDTH)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    above = (found["peak"] - found["idle"]) / found["size"]
    assert found["size"] > 64_000_000
    print(f"trainer peak {above:.2f}x the update above idle ({found})")
    assert above < BOUND, f"peak {above:.2f}x the update above idle ({found})"


class _Filled(dict[str, torch.Tensor]):
    """Tensors of 0.01 made one at a time, on lookup."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        super().__init__()
        self.shapes = shapes

    def __getitem__(self, name: str) -> torch.Tensor:
        return torch.full(self.shapes[name], 0.01)
