"""The json.dumps fast path of ``canonical`` must equal RFC 8785 (the rfc8785 package)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.errors import EncodingError
from bcfl_cli.protocol.encoding import canonical

SAFE = 2**53 - 1
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-SAFE, max_value=SAFE)
    | st.text(max_size=12)  # any unicode: the slow path must agree too
    | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
)
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(documents)
def test_canonical_equals_rfc8785(doc: Any) -> None:
    try:
        expected = bytes(rfc8785.dumps(doc))
    except rfc8785.CanonicalizationError:
        with pytest.raises(EncodingError):
            canonical(doc)
        return
    assert canonical(doc) == expected
    assert json.loads(canonical(doc)) == doc


def test_escapes_and_unicode_keys_take_the_exact_path() -> None:
    doc = {"\u00e9": 'a"b\\c', "z": "\n\t\u2028", "\U0001f600": 1, "\ufb33": 2}
    assert canonical(doc) == bytes(rfc8785.dumps(doc))


def test_unsafe_integer_and_float_refused() -> None:
    with pytest.raises(EncodingError):
        canonical({"a": 2**53})
    with pytest.raises(EncodingError):
        canonical({"a": 1.5})
