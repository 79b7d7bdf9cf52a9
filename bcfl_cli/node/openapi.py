"""The node's OpenAPI 3.1 description: every route, what it takes and answers, who may call it.

Served at ``/openapi.json`` and read by the fuzzing suite (``tests/faults``), so it must say
exactly what ``app.create_app`` serves (a test compares the two).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from bcfl_cli.node.peers import PEER_STREAM_PATH
from bcfl_cli.wire.schemas import (
    BlockResponse,
    BlocksResponse,
    ConsensusLog,
    ConsensusMessage,
    ErrorBody,
    GenesisResponse,
    RoundsResponse,
    StatusResponse,
    StreamUpdate,
    SubmitTx,
    SubmitUpdate,
    TxAccepted,
    TxStatus,
)


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")


def openapi_document(
    routes: list[tuple[str, str, str, type[BaseModel] | None, type[BaseModel] | None, bool]],
    parameters: Mapping[tuple[str, str], list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 description of ``routes``; ``parameters`` by (method, path)."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, request_model, response_model, signed in routes:
        op: dict[str, Any] = {"summary": summary, "responses": {}}
        declared = (parameters or {}).get((method, path))
        if declared:
            op["parameters"] = declared
        if request_model is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema(request_model)}},
            }
        ok = {"description": "OK"}
        if response_model is not None:
            ok["content"] = {"application/json": {"schema": _schema(response_model)}}  # type: ignore[assignment]
        op["responses"]["202" if method == "post" and response_model is TxAccepted else "200"] = ok
        error = {
            "description": "refused",
            "content": {"application/json": {"schema": _schema(ErrorBody)}},
        }
        refusals = ("400", "401", "403", "413", "422", "429", "503", "507")
        for status in ("400", "404") if not signed else refusals:
            op["responses"][status] = error
        if signed:
            op["security"] = [{"httpSignature": []}]
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "bcfl node", "version": "1"},
        "paths": paths,
        # OpenAPI has no words for a WebSocket: the stream is described beside the paths
        "x-websockets": {
            PEER_STREAM_PATH: {
                **STREAM_DESCRIPTION,
                "messages": [_schema(ConsensusMessage), _schema(StreamUpdate)],
            }
        },
        "components": {
            "securitySchemes": {
                "httpSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Signature",
                    "description": "RFC 9421 ed25519 signature (keyid = member did:key) over "
                    "@method, @authority, @path, @query, content-digest and bcfl-node-url (where "
                    "present); created and nonce. Checked on the head, before the body is read",
                }
            }
        },
    }


STREAM_DESCRIPTION = {
    "summary": "Proposals, votes and updates on one WebSocket (members)",
    "description": "Opened by a current member's signed GET (RFC 9421, as any route); each "
    "binary frame is one message (see 'messages'): a ConsensusMessage (validators only), "
    "as POST /v1/consensus takes it, or a StreamUpdate, an update with its blob as POST "
    "/v1/updates takes it and the members known to hold it; at most 8 MiB, uncompressed, each "
    "counted against the sender's rate. A bad frame closes the stream with 1007 (1003: a "
    "text frame; 1008: not a member or not a validator; 1009: too large; 1013: over the rate "
    "or too many updates at once) and a reason 'code: message'; an update the mempool "
    "refuses is logged, not answered.",
}

ROUTE_TABLE: list[tuple[str, str, str, type[BaseModel] | None, type[BaseModel] | None, bool]] = [
    ("get", "/v1/status", "Node status", None, StatusResponse, False),
    ("get", "/v1/genesis", "Genesis block and document", None, GenesisResponse, False),
    (
        "get",
        "/v1/blocks",
        "Blocks with commit certificates (start, limit <= 100)",
        None,
        BlocksResponse,
        False,
    ),
    (
        "get",
        "/v1/blocks/{height}",
        "One block with its transactions' hashes",
        None,
        BlockResponse,
        False,
    ),
    (
        "get",
        "/v1/rounds",
        "Rounds: updates, verdicts, reasons, aggregates (start, limit <= 100)",
        None,
        RoundsResponse,
        False,
    ),
    ("get", "/v1/txs/{hash}", "Transaction status", None, TxStatus, False),
    ("post", "/v1/txs", "Submit a signed transaction (members)", SubmitTx, TxAccepted, True),
    (
        "post",
        "/v1/updates",
        "Submit an update transaction with its blob, at most 1 MiB (members)",
        SubmitUpdate,
        TxAccepted,
        True,
    ),
    (
        "post",
        "/v1/join",
        "Ask for admission (signed join_request, non-members)",
        SubmitTx,
        TxAccepted,
        True,
    ),
    (
        "post",
        "/v1/consensus",
        "Push a proposal or a vote (validators)",
        ConsensusMessage,
        None,
        True,
    ),
    (
        "get",
        "/v1/consensus/{height}",
        "Consensus messages held for a height",
        None,
        ConsensusLog,
        False,
    ),
    ("get", "/v1/blobs/{hash}", "A blob, streamed (Range honoured)", None, None, False),
    (
        "get",
        "/v1/blobs/{hash}/manifest",
        "Blob size, chunk size and chunk hashes",
        None,
        None,
        False,
    ),
    (
        "get",
        "/v1/blobs/{hash}/upload",
        "Where an interrupted upload stands (?size=N)",
        None,
        None,
        False,
    ),
    ("put", "/v1/blobs/{hash}/chunks/{index}", "Upload one chunk (members)", None, None, True),
    ("put", "/v1/blobs/{hash}", "Finalise an upload (members)", None, None, True),
    ("get", "/openapi.json", "This description", None, None, False),
    ("get", "/explorer/", "The chain explorer (a read-only web page)", None, None, False),
    ("get", "/explorer/static/{name}", "The explorer's script or style sheet", None, None, False),
    (
        "get",
        "/explorer/proof/{round}",
        "A closed round's model proof bundle, gzip (bcfl model verify reads it)",
        None,
        None,
        False,
    ),
]
