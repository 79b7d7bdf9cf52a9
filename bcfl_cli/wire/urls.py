"""A node's base URL, written one way on both sides of the wire.

The client (``--node URL``, ``HOME/node/node.json``) and the node (``--peer``, ``--url``, the
addresses members announce) compare URLs as strings, so they must agree on one form:
``scheme://host[:port][/path]`` with a lower-case scheme, no trailing ``/`` and no ``/v1``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from bcfl_cli.errors import UsageError

API_PREFIX = "/v1"


def normalise_url(url: str) -> str:
    """``url`` in its one form; UsageError for anything but an http(s) URL naming a host.

    A bare ``HOST:PORT`` means ``http://HOST:PORT``. A scheme other than http or https,
    credentials, a query or a fragment are refused rather than silently kept in the string
    (``ftp://x`` used to become ``http://ftp://x`` on the node's side).
    """
    text = url.strip()
    if "://" not in text:
        text = f"http://{text}"
    shown = text.rstrip("/")
    scheme, _, rest = text.partition("://")
    text = f"{scheme.lower()}://{rest}"
    try:
        parts = urlsplit(text)
    except ValueError:  # a broken IPv6 host
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.query
        or parts.fragment
    ):
        raise UsageError(f"node URL {shown!r}: expected http://HOST:PORT or https://HOST")
    return text.rstrip("/").removesuffix(API_PREFIX).rstrip("/")
