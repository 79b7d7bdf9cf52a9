"""What the FL hooks read from the chain and the blob store, as structural types.

``fl`` imports neither ``chain`` nor ``store``: the chain asks through ``AppChecks`` and passes
its ``ChainState``, the node passes its ``BlobStore``; both satisfy these protocols without
knowing them (mypy checks it wherever an ``FLChecks`` is used as ``AppChecks``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from bcfl_cli.protocol.spec import AggregationSpec, AppModelSpec, ContractRules, ModelSpec


class Blobs(Protocol):
    """The content-addressed blob store, as far as the checks read and write it."""

    def has(self, digest: str) -> bool: ...

    def size(self, digest: str) -> int: ...

    def get(self, digest: str, *, max_bytes: int = ...) -> bytes: ...

    def path_for(self, digest: str) -> Path:
        """Where the blob's file is (or would be): the contract reads it a piece at a time."""
        ...

    def put(self, data: bytes) -> str: ...


class GenesisView(Protocol):
    """The FL parts of the genesis the checks need."""

    @property
    def model(self) -> ModelSpec | AppModelSpec: ...

    @property
    def contract(self) -> ContractRules: ...

    @property
    def aggregation(self) -> AggregationSpec: ...

    @property
    def initial_model(self) -> str: ...


class AcceptedView(Protocol):
    """One accepted update of the round: its transaction, blob and sample count."""

    @property
    def tx(self) -> str: ...

    @property
    def blob(self) -> str: ...

    @property
    def num_samples(self) -> int: ...


class RoundView(Protocol):
    """The latest round of the chain state."""

    @property
    def number(self) -> int: ...

    @property
    def open(self) -> bool: ...

    @property
    def base_model(self) -> str: ...

    @property
    def accepted(self) -> Sequence[AcceptedView]: ...

    @property
    def submitted(self) -> frozenset[str]: ...


class StateView(Protocol):
    """The chain state the hooks are called with."""

    @property
    def config(self) -> GenesisView: ...

    @property
    def round(self) -> RoundView: ...

    @property
    def trainers(self) -> frozenset[str]: ...
