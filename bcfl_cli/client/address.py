"""Where the member's node is: ``--node URL``, else the address ``bcfl node`` recorded."""

from __future__ import annotations

import json

from bcfl_cli.errors import (
    NodeError,
)
from bcfl_cli.home import Home
from bcfl_cli.wire.urls import normalise_url

NODE_FILE = "node.json"


def node_url(home: Home, explicit: str | None = None) -> str:
    """The node to talk to: ``--node URL``, else the one ``bcfl node`` recorded in the home.

    ``bcfl node`` writes ``HOME/node/node.json`` with its ``listen`` address (HOST:PORT) and its
    ``url``. The listen address comes first: commands run on the node's machine, and going
    straight to it avoids a round trip through a TLS proxy; a wildcard is reached on loopback.
    """
    if explicit:
        return normalise_url(explicit)
    path = home.node_dir / NODE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NodeError(
            f"no node recorded in {path}",
            hint="start this member's node with `bcfl node`, or pass --node URL",
        ) from None
    except (OSError, ValueError) as exc:
        raise NodeError(f"{path} is unreadable: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("listen"), str):
        host, _, port = data["listen"].rpartition(":")
        if host in ("", "0.0.0.0", "::", "[::]"):  # noqa: S104 - reading, not binding
            host = "127.0.0.1"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 literal, bracketed as a URL needs it
        scheme = "https" if data.get("tls") is True else "http"  # bcfl node --tls
        return normalise_url(f"{scheme}://{host}:{port}")
    if isinstance(data, dict) and isinstance(data.get("url"), str):
        return normalise_url(data["url"])
    raise NodeError(f"{path} names no url or listen address", hint="restart `bcfl node`")
