"""Canonical bytes for everything hashed or signed (docs/PROTOCOL.md §1).

RFC 8785 (JCS) through the ``rfc8785`` package; parsing refuses duplicate keys and floats so
that two parsers can never read different values out of the same signed bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any

import msgspec
import rfc8785

from bcfl_cli.errors import EncodingError
from bcfl_cli.primitives import is_hash_hex as is_hash_hex  # one definition, shared with helpers

HASH_HEX_LEN = 64
_HEX128 = re.compile(r"^[0-9a-f]{128}\Z")

#: Upper bound on any JSON document we parse (a block with its transactions included).
MAX_JSON_BYTES = 8 * 1024 * 1024
MAX_JSON_DEPTH = 32
#: I-JSON's safe integers: -(2^53 - 1) .. 2^53 - 1.
MAX_SAFE_INT = 2**53 - 1


def canonical(obj: Any) -> bytes:
    """RFC 8785 canonical JSON of ``obj``. Floats are refused: signed objects carry none.

    Objects made only of printable-ASCII strings and keys, safe integers, booleans and null
    (every protocol object in practice) take a fast path through :func:`json.dumps`: for them
    sorted keys, no whitespace and the two escapes ``\\"`` and ``\\\\`` *are* RFC 8785, and
    a property test keeps the two paths equal. Anything else goes through ``rfc8785``.
    """
    if _check(obj, 0):
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    try:
        return bytes(rfc8785.dumps(obj))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise EncodingError(f"cannot canonicalise object: {exc}") from exc


def _simple_text(text: str) -> bool:
    """True when the fast path writes ``text`` exactly; refuses lone surrogates.

    A lone surrogate (``\\ud800`` escaped, or its three bytes in CESU-style input, which
    ``json.loads`` decodes with ``surrogatepass``) is not Unicode text: RFC 8785 cannot encode
    it, so a document holding one is refused where it is parsed, like a duplicate key, not
    later when someone first hashes it.
    """
    if text.isascii():
        return text.isprintable()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodingError(f"string holds a lone surrogate at index {exc.start}") from None
    return False


def _check(obj: Any, depth: int) -> bool:
    """Refuse what signed objects may not hold; True when the fast path is exact."""
    if depth > MAX_JSON_DEPTH:
        raise EncodingError(f"object nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(obj, bool) or obj is None:
        return True
    if isinstance(obj, str):
        return _simple_text(obj)
    if isinstance(obj, int):
        if abs(obj) > MAX_SAFE_INT:
            raise EncodingError(f"integer {obj} outside the I-JSON safe range")
        return True
    if isinstance(obj, float):
        raise EncodingError("floats are not allowed in signed objects; use a decimal string")
    if isinstance(obj, dict):
        simple = True
        for key, value in obj.items():
            if not isinstance(key, str):
                raise EncodingError(f"object key {key!r} is not a string")
            key_simple = _simple_text(key)  # always called: it refuses lone surrogates
            simple = _check(value, depth + 1) and simple and key_simple
        return simple
    if isinstance(obj, list | tuple):
        simple = True
        for value in obj:
            simple = _check(value, depth + 1) and simple
        return simple
    raise EncodingError(f"type {type(obj).__name__} cannot be encoded")


#: A JSON string token, unterminated ones included (they run to the end of the text), so that
#: stripping strings is one linear pass: a pattern that needs the closing quote retries from
#: every later quote and is quadratic on ``"\\"\\"\\"...``.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_INNERMOST = re.compile(rb"\[\]|\{\}")


def nesting_within(data: bytes, limit: int) -> bool:
    """Whether the JSON text ``data`` nests at most ``limit`` arrays/objects deep.

    Checked before parsing, without recursion: ``json.loads`` on ``[[[[...`` raises
    ``RecursionError`` at a depth that depends on the caller's stack, so a parser's verdict on
    such text could differ between two peers (a worker thread and verify-chain's main thread).
    Strings are stripped, then each pass removes the innermost ``[]``/``{}`` pairs; text still
    holding brackets after ``limit`` passes nests deeper, or its brackets do not balance (then
    it is not JSON either). Linear per pass, at most ``limit`` passes.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return True
    skeleton = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", data))
    for _ in range(limit):
        if not skeleton:
            return True
        skeleton = _INNERMOST.sub(b"", skeleton)
    return not skeleton


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise EncodingError(f"duplicate JSON key {key!r}")
        result[key] = value
    return result


def _no_float(text: str) -> Any:
    raise EncodingError(f"float {text} not allowed; use a decimal string")


def _no_constant(text: str) -> Any:
    raise EncodingError(f"non-standard JSON constant {text}")


def parse_json(data: bytes | str, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse untrusted JSON: size-bounded, depth-bounded, no duplicate keys, no floats."""
    if len(data) > max_bytes:
        raise EncodingError(f"JSON document of {len(data)} bytes exceeds the {max_bytes} limit")
    try:
        value = json.loads(
            data,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_constant,
        )
    except EncodingError:
        raise
    except (ValueError, RecursionError) as exc:
        raise EncodingError(f"malformed JSON: {exc}") from exc
    _check(value, 0)
    return value


class NotCanonicalError(EncodingError):
    """Well-formed JSON whose bytes are not the canonical encoding of its value."""


#: Arrays and objects the fast path's typed decoder follows (a transaction nests 5 deep: its
#: signed form, UNSIGNED, the body, a misbehaviour's votes, a vote); deeper text is legal but
#: takes the exact path.
_FAST_DEPTH = 8


def _fast_value_type() -> Any:
    """The values the fast path may decode: ASCII text decodes to them or fails in C.

    Integers are bounded to the safe range and floats are not in the union, so ``1.0``,
    ``1e2`` and ``2**53`` fail the decode and take the exact path, which refuses them.
    """
    scalar: Any = (
        Annotated[int, msgspec.Meta(ge=-MAX_SAFE_INT, le=MAX_SAFE_INT)] | str | bool | None
    )
    value: Any = scalar
    for _ in range(_FAST_DEPTH):
        value = scalar | list[value] | dict[str, value]
    return value


_FAST_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder(_fast_value_type())
#: For values of ASCII strings and keys, safe integers, booleans, null, arrays and objects,
#: msgspec's compact output with keys sorted is RFC 8785: code point order is UTF-16 order
#: for ASCII keys, integers print as themselves, and its escapes (``\"``, ``\\``, ``\b``
#: ``\t`` ``\n`` ``\f`` ``\r``, ``\u00xx`` for the other controls) are RFC 8785's. A
#: property test pins this to ``canonical`` over that space.
_FAST_ENCODER = msgspec.json.Encoder(order="sorted")


def parse_canonical(data: bytes | str, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The value ``data`` encodes, provided ``data`` is exactly its canonical form (§1).

    Same outcome as ``parse_json`` followed by ``canonical(value) == data``, which is the exact
    path; a property test keeps the two equal on canonical and on mutated text. The fast path
    takes ASCII text, decodes it in C into the values above (no floats, safe integers, at most
    ``_FAST_DEPTH`` levels), and re-encodes it in C with sorted keys: when that gives back
    ``data`` byte for byte, ``data`` is the RFC 8785 form of the value (the encoder equals RFC
    8785 on such values; a decoded non-ASCII character would re-encode as non-ASCII bytes, a
    duplicate key as one member, an escape or ``-0`` or whitespace differently). Anything else
    takes the exact path, so errors and their messages are the exact path's.
    """
    if len(data) > max_bytes:
        raise EncodingError(f"JSON document of {len(data)} bytes exceeds the {max_bytes} limit")
    if data.isascii():
        raw = data.encode("ascii") if isinstance(data, str) else data
        try:
            value = _FAST_DECODER.decode(raw)
            if _FAST_ENCODER.encode(value) == raw:
                return value
        except (msgspec.MsgspecError, ValueError, TypeError, RecursionError):
            pass
    return _parse_canonical_exact(data, max_bytes)


def _parse_canonical_exact(data: bytes | str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    value = parse_json(data, max_bytes=max_bytes)
    encoded = data.encode("utf-8") if isinstance(data, str) else data
    if canonical(value) != encoded:
        raise NotCanonicalError("JSON is not in canonical form")
    return value


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_object(obj: Any) -> str:
    """SHA-256 (lowercase hex) of the canonical form of ``obj``."""
    return sha256_hex(canonical(obj))


_HEX_DIGITS = b"0123456789abcdef"


def only_lower_hex(text: str) -> bool:
    """Every character of ``text`` is a lowercase hex digit (``""`` too): for checking several
    fixed-length hex fields joined, in one C call instead of one regex a field."""
    try:
        return not text.encode("ascii").translate(None, _HEX_DIGITS)
    except UnicodeEncodeError:
        return False


def is_version(value: object, expected: int) -> bool:
    """``value`` is the integer ``expected``: ``True == 1`` and ``1.0 == 1`` in Python, but
    ``true`` is not the version ``1`` on the wire, and a spelling the checks let through only
    to normalise it away is one more form a signer can be made to disagree on."""
    return type(value) is int and value == expected


def is_signature_hex(value: object) -> bool:
    return isinstance(value, str) and _HEX128.match(value) is not None
