"""``bcfl init``: from a consortium file to a home holding the genesis block.

Order matters: the initial weights are built and hashed first (the document names them) and
stored before the ledger exists (``Ledger.create`` stores the document itself), so a failure
part-way leaves no store that claims a genesis whose blobs are missing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bcfl_cli.apps.runner import bind_app
from bcfl_cli.consortium.config import ConsortiumConfig, load_config
from bcfl_cli.consortium.genesis import make_genesis
from bcfl_cli.errors import AppError, IdentityError, StoreError, UsageError
from bcfl_cli.home import Home
from bcfl_cli.identity import read_public_identity
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.encoding import sha256_hex
from bcfl_cli.protocol.spec import AppModelSpec
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.store.ledger import Ledger, ledger_exists
from bcfl_cli.store.location import (
    home_store_url,
    is_sqlite,
    normalise_store_url,
    record_store_url,
    redact,
)


@dataclass(frozen=True)
class InitResult:
    config: ConsortiumConfig
    document: dict[str, Any]
    genesis: Block
    initial_model: str
    home: Home
    #: name of the member whose identity lives in this home, if it is a founder
    local_member: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def genesis_hash(self) -> str:
        return self.genesis.hash


def build_initial_model(config: ConsortiumConfig, app_folder: Path | None = None) -> bytes:
    """The initial global weights, built by the consortium's app.

    A pinned app must be installed (or given by ``app_folder``) and match its pin, and the
    weights it builds must hash to the pin's ``initial_model``: otherwise founders would sign
    different genesis documents. A model that cannot be built or is too large is refused.
    """
    app = bind_app(config.model, config.training, app_folder)
    try:
        data = app.initial_state_bytes()
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"model: cannot build this model: {exc}") from exc
    if isinstance(config.model, AppModelSpec):
        pinned = config.model.app.initial_model
        if sha256_hex(data) != pinned:
            raise AppError(
                f"model.app: the app builds initial weights {sha256_hex(data)[:16]}..., the "
                f"file pins {pinned[:16]}...",
                hint="build_model must be deterministic (seed it from its config); regenerate "
                "the pin with `bcfl consortium example --app PATH` if the app changed",
            )
    limit = config.contract.max_blob_bytes
    if len(data) > limit:
        raise UsageError(
            f"model: the initial weights take {len(data)} bytes, more than "
            f"contract.max_blob_bytes = {limit}"
        )
    return data


def init_consortium(
    home: Home,
    config_path: Path,
    time_ms: int | None = None,
    store_url: str | None = None,
    *,
    app_folder: Path | None = None,
) -> InitResult:
    """``store_url``: keep the ledger there (e.g. an empty PostgreSQL database), recorded in
    the home for later commands; default the home's own SQLite file. ``app_folder``: where the
    pinned model app is, if it is not installed."""
    config = load_config(config_path)
    current = home_store_url(home)
    url = current if store_url is None else normalise_store_url(store_url)
    if home.has_ledger and url != current:
        record_store_url(home, url)  # raises: the home keeps its ledger elsewhere
    if ledger_exists(url):
        where = home.root if is_sqlite(url) else f"the database {redact(url)}"
        raise StoreError(
            f"{where} already holds a ledger",
            hint="use another --home; a home holds one consortium"
            if is_sqlite(url)
            else "a database holds one ledger: give this home an empty database",
        )
    weights = build_initial_model(config, app_folder)
    initial_model = sha256_hex(weights)
    document = config.to_document(initial_model)
    genesis = make_genesis(
        document, time_ms=int(time.time() * 1000) if time_ms is None else time_ms
    )
    home.ensure()
    BlobStore(home.blob_dir).put(weights)
    if store_url is not None:
        record_store_url(home, url)
    Ledger.create(home, genesis, document).close()
    return InitResult(
        config=config,
        document=document,
        genesis=genesis,
        initial_model=initial_model,
        home=home,
        local_member=_local_member(home, config),
        warnings=config.warnings(),
    )


def _local_member(home: Home, config: ConsortiumConfig) -> str | None:
    try:
        did = read_public_identity(home).did
    except IdentityError:
        return None
    member = config.member(did)
    return member.name if member else None
