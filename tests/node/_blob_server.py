"""A blob-only node for the real-process transfer test.

Usage: python _blob_server.py BLOB_DIR PORT MEMBER_DID MAX_BYTES DROP_AFTER
The first full ``GET /blobs/{hash}`` is cut after DROP_AFTER body bytes (0: never), as a peer
whose connection dies mid-transfer; a marker file ``dropped`` in BLOB_DIR records that it did.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bcfl_cli.node.blob_routes import blob_app
from bcfl_cli.store.blobs import BlobStore


class DropOnce:
    def __init__(self, app: ASGIApp, after: int, marker: Path) -> None:
        self.app, self.after, self.marker, self.used = app, after, marker, after <= 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if self.used or scope["type"] != "http" or scope["method"] != "GET" or path.count("/") != 2:
            await self.app(scope, receive, send)
            return
        self.used = True
        sent = 0

        async def cutting_send(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
                if sent > self.after:
                    self.marker.write_text(str(sent))
                    raise ConnectionAbortedError("test: connection dropped mid-blob")
            await send(message)

        await self.app(scope, receive, cutting_send)


def main() -> None:
    root, port, member, max_bytes, drop_after = sys.argv[1:6]
    store = BlobStore(Path(root))
    app = blob_app(store, is_member={member}.__contains__, max_blob_bytes=int(max_bytes))
    wrapped = DropOnce(app, int(drop_after), Path(root) / "dropped")
    uvicorn.run(wrapped, host="127.0.0.1", port=int(port), log_level="critical", access_log=False)


if __name__ == "__main__":
    main()
