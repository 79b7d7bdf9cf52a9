"""The one URL normaliser: the cases of both former callers (the client's ``--node`` and
``node.json``, the node's ``--peer``, ``--url`` and learned addresses), and its refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bcfl_cli.errors import UsageError
from bcfl_cli.wire.urls import normalise_url


@pytest.mark.parametrize(
    ("given_url", "expected"),
    [
        # the client's cases (operations._normalise_url)
        ("http://127.0.0.1:8700", "http://127.0.0.1:8700"),
        ("  http://127.0.0.1:8700/  ", "http://127.0.0.1:8700"),
        ("127.0.0.1:8700", "http://127.0.0.1:8700"),
        ("https://node.example.org/v1", "https://node.example.org"),
        ("https://node.example.org/v1/", "https://node.example.org"),
        ("https://proxy.example.org/bcfl", "https://proxy.example.org/bcfl"),
        ("https://proxy.example.org/bcfl/v1", "https://proxy.example.org/bcfl"),
        # the node's cases (peers.normalise_url)
        ("127.0.0.1:9001", "http://127.0.0.1:9001"),
        ("http://127.0.0.1:9002/v1", "http://127.0.0.1:9002"),
        ("http://me:1", "http://me:1"),
        ("http://[::1]:8700/", "http://[::1]:8700"),
        # a scheme in capitals names the same URL (it used to become http://HTTP://...)
        ("HTTP://node:8700", "http://node:8700"),
    ],
)
def test_one_form_on_both_sides(given_url: str, expected: str) -> None:
    assert normalise_url(given_url) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "ftp://node:21",  # the node used to keep it as http://ftp://node:21
        "ws://node:8700",
        "http://",
        "http:///v1",
        "http://user:secret@node:8700",
        "http://node:8700/?x=1",
        "http://node:8700/#top",
        "http://[::1:8700",
        "",
    ],
)
def test_anything_else_is_a_usage_error_with_the_same_message(bad: str) -> None:
    with pytest.raises(UsageError, match="expected http://HOST:PORT or https://HOST"):
        normalise_url(bad)


@given(st.text(max_size=60))
def test_any_text_is_a_url_or_a_usage_error(text: str) -> None:
    try:
        once = normalise_url(text)
    except UsageError:
        return
    assert once.startswith(("http://", "https://"))
    assert normalise_url(once) == once  # idempotent: both sides compare the same string
