"""Torch's CPU allocator asked for transparent huge pages, before torch is imported.

A training step allocates its gradients afresh (tens of MB at 10M parameters, every step) and
frees them; glibc serves blocks that large with ``mmap`` and returns them with ``munmap``, so
each step faults every 4 KiB page in again. With ``THP_MEM_ALLOC_ENABLE=1`` torch advises the
kernel (``madvise(MADV_HUGEPAGE)``) to back each allocation of 2 MiB or more with transparent
huge pages: one fault a 2 MiB page instead of 512. A 10M-parameter MLP's 12 local steps fault
~135,000 pages without it, ~7,000 with it, and cost 0.9-1.0 CPU-s instead of 1.3-1.5 on the
development machine (bench/README.md, "Session 10"); the trained weights are the same bytes
(tests/fl/test_allocator.py).

torch reads the variable once, at its first CPU allocation (while ``import torch`` runs), so
the CLI sets it before any command module is imported. An operator's own value wins, and
``THP_MEM_ALLOC_ENABLE=0`` turns it off (docs/OPERATIONS.md, "Sizing a node for a model").
This module imports nothing of torch.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: the variable torch's CPU allocator reads (c10 ``alloc_cpu``): "1" asks for huge pages
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def prefer_huge_pages(environ: MutableMapping[str, str] | None = None) -> str:
    """Ask torch for huge-page tensors unless ``environ`` already says; the value in force.

    Effective only before ``import torch`` in this process (and in every process started with
    this environment after it)."""
    env = os.environ if environ is None else environ
    return env.setdefault(HUGE_PAGES_ENV, "1")


__all__ = ["HUGE_PAGES_ENV", "prefer_huge_pages"]
