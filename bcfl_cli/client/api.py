"""The node's /v1 API as typed calls: one signed, pooled client, answers as the wire models.

An answer that does not fit its model (``bcfl_cli/wire/schemas.py``, the same models the node
answers with) is a NodeError naming the route and the first field at fault, never a KeyError
further down. What gets hashed or signed (the genesis, blocks) is parsed strictly: no floats,
no duplicate keys.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import nacl.signing
from pydantic import BaseModel

from bcfl_cli.client.blobs import fetch_blob, upload_blob
from bcfl_cli.client.tls import command_verify
from bcfl_cli.client.transport import DEFAULT_TIMEOUT, SignedClient
from bcfl_cli.errors import EncodingError, NodeError
from bcfl_cli.home import Home
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.encoding import parse_json
from bcfl_cli.protocol.tx import Transaction
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.wire.schemas import (
    BlocksResponse,
    GenesisResponse,
    StatusResponse,
    TxAccepted,
    TxStatus,
    validate_body,
)
from bcfl_cli.wire.urls import API_PREFIX, normalise_url

DEFAULT_WAIT_S = 60.0
POLL_S = 0.25

Progress = Callable[[int, int], None]
M = TypeVar("M", bound=BaseModel)


class NodeApi:
    """The node's /v1 API through one signed, pooled client.

    Without a member key (``bcfl status``, ``bcfl model export`` need no passphrase) requests
    are signed with a throwaway key: public reads accept any valid signature, and one client
    keeps one way of handling refusals, retries and response limits.
    """

    def __init__(
        self,
        url: str,
        key: nacl.signing.SigningKey | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retries: int = 2,
        home: Home | None = None,
        tls_pin: str | None = None,
    ) -> None:
        self.url = normalise_url(url)
        self.client = SignedClient(
            key if key is not None else nacl.signing.SigningKey.generate(),
            self.url + API_PREFIX,
            transport=transport,
            timeout=timeout,
            retries=retries,
            # issue 22: this member's own node by its certificate, a founder's by the pin
            # given with the genesis hash, any other by the CAs
            verify=command_verify(home, self.url, pin=tls_pin),
        )

    def __enter__(self) -> NodeApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def _json(self, response: httpx.Response, *, strict: bool) -> Any:
        """Strict parsing (no floats, no duplicate keys) for what gets hashed or signed."""
        try:
            return parse_json(response.content) if strict else json.loads(response.content)
        except (EncodingError, ValueError, RecursionError) as exc:
            message = exc.message if isinstance(exc, EncodingError) else str(exc)
            raise NodeError(f"{response.request.url}: malformed JSON answer: {message}") from exc

    def _model(self, model: type[M], response: httpx.Response, *, strict: bool) -> M:
        try:
            return validate_body(model, self._json(response, strict=strict))
        except EncodingError as exc:
            raise NodeError(
                f"{response.request.url}: answer is not a {model.__name__}: {exc.message}"
            ) from exc

    def get(self, path: str, *, strict: bool = True, **params: str | int) -> Any:
        """A signed GET under /v1, its answer as parsed JSON (for routes without a model)."""
        return self._json(self.client.get(path, params=params or None), strict=strict)

    def status(self) -> StatusResponse:
        return self._model(StatusResponse, self.client.get("/status"), strict=False)

    def genesis(self) -> tuple[Block, dict[str, Any]]:
        answer = self._model(GenesisResponse, self.client.get("/genesis"), strict=True)
        try:
            block = Block.from_dict(answer.block)
        except EncodingError as exc:
            raise NodeError(f"{self.url} serves a malformed genesis block: {exc.message}") from exc
        return block, answer.document

    def blocks(self, start: int, limit: int) -> list[dict[str, Any]]:
        """Blocks from ``start`` on (at most ``limit``), as the node serves them: unchecked."""
        response = self.client.get("/blocks", params={"start": start, "limit": limit})
        return self._model(BlocksResponse, response, strict=True).blocks

    def block(self, height: int) -> Block | None:
        blocks = self.blocks(height, 1)
        if not blocks:
            return None
        try:
            block = Block.from_dict(blocks[0])
        except EncodingError as exc:
            raise NodeError(f"{self.url} serves a malformed block: {exc.message}") from exc
        if block.height != height:
            raise NodeError(f"{self.url}: asked for block {height}, got {block.height}")
        return block

    def submit_tx(self, tx: Transaction, *, path: str = "/txs") -> str:
        response = self.client.post(path, json_body={"tx": tx.to_dict()})
        accepted = self._model(TxAccepted, response, strict=False)
        if accepted.hash != tx.hash:
            raise NodeError(f"{self.url} acknowledged {accepted.hash} for transaction {tx.hash}")
        return tx.hash

    def tx_status(self, tx_hash: str) -> TxStatus:
        response = self.client.get(f"/txs/{tx_hash}", allow=(404,))
        if response.status_code == 404:
            return TxStatus(tx=None, height=None, status="unknown", reason="")
        return self._model(TxStatus, response, strict=False)

    def wait_for_tx(self, tx_hash: str, timeout_s: float = DEFAULT_WAIT_S) -> TxStatus:
        """Poll until the transaction is committed or refused, at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.tx_status(tx_hash)
            if status.status in ("committed", "rejected"):
                return status
            if time.monotonic() >= deadline:
                raise NodeError(
                    f"transaction {tx_hash[:16]} is still {status.status} after {timeout_s:g} s",
                    hint="it may still be committed; check with `bcfl status` or wait longer "
                    "(--timeout)",
                )
            time.sleep(POLL_S)

    def fetch_blob(
        self, digest: str, store: BlobStore, *, max_bytes: int, progress: Progress | None = None
    ) -> None:
        fetch_blob(self.client, digest, store, max_bytes=max_bytes, progress=progress)

    def upload_blob(self, digest: str, store: BlobStore, *, progress: Progress | None) -> None:
        upload_blob(self.client, digest, store, progress=progress)
