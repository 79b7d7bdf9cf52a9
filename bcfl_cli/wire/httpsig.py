"""HTTP Message Signatures (RFC 9421, ``ed25519``) and Content-Digest (RFC 9530, ``sha-256``).

Every request between peers carries one signature, made with the sender's member key, whose
``keyid`` is the sender's ``did:key``. What bcfl signs (and, with :data:`STRICT`, requires):

- ``@method``, ``@authority``, ``@path`` always;
- ``@query`` when the request has a query string (RFC 9421 §2.2.7 gives an absent query the value
  ``?``; we leave it out then, and refuse an uncovered query, so nobody can append one);
- ``content-digest`` whenever a body is sent (RFC 9530, ``sha-256=:BASE64:``), and whenever a
  ``Content-Digest`` field is present;
- parameters ``created`` (checked against a window, ±30 s by default), ``keyid``, ``nonce``
  (random, for the receiver's replay cache) and ``alg="ed25519"``.

The verifier also accepts any other RFC 9421 signature over the derived components and plain
header fields listed in :data:`_DERIVED` (so that signatures from other implementations, and the
RFC's own example in Appendix B.2.6, verify), but the policy decides what must be covered.
Structured fields are parsed with ``http_sf`` (RFC 8941); the ``@signature-params`` line is
re-serialised from the parsed value, as §2.3 requires. Every header we read is bounded in size.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import http_sf
import nacl.exceptions
import nacl.signing

from bcfl_cli.errors import EncodingError, NodeError
from bcfl_cli.protocol.crypto import did_from_public_key, public_key_from_did

ALG = "ed25519"
LABEL = "bcfl"
DEFAULT_WINDOW_S = 30

MAX_SIGNATURE_INPUT_CHARS = 2048
MAX_SIGNATURE_CHARS = 512
MAX_CONTENT_DIGEST_CHARS = 512
MAX_COVERED_COMPONENTS = 16
MAX_COMPONENT_VALUE_CHARS = 8192
MAX_NONCE_CHARS = 64
MAX_KEYID_CHARS = 128

#: Headers a node acts on beyond the body: ``sign_request`` covers them whenever present, and a
#: receiver ignores one its signature does not cover. ``bcfl-node-url`` names where the
#: signer's node is reached and the receiver fetches that URL: uncovered, anyone on the path
#: could point it at any host.
COVERED_WHEN_PRESENT = ("bcfl-node-url",)
_METADATA_PARAMS = frozenset({"created", "expires", "keyid", "nonce", "alg", "tag"})
_DIGESTS: dict[str, Callable[[bytes], Any]] = {
    "sha-256": hashlib.sha256,
    "sha-512": hashlib.sha512,
}


class SignatureError(NodeError):
    """A request signature or body digest was refused; ``code`` names the reason for callers."""

    def __init__(self, code: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


@dataclass(frozen=True)
class RequestView:
    """The parts of a request a signature can cover, as the server sees them on the wire.

    ``path`` and ``query`` are the raw (still percent-encoded) strings; ``query`` has no ``?``
    and is empty when absent; ``headers`` maps lowercase names to the combined field value.
    """

    method: str
    authority: str
    path: str
    query: str
    headers: Mapping[str, str]
    scheme: str = "http"

    @classmethod
    def from_url(cls, method: str, url: str, headers: Mapping[str, str]) -> RequestView:
        parts = urlsplit(url)
        lowered = {k.lower(): v for k, v in headers.items()}
        authority = lowered.get("host") or parts.netloc
        return cls(
            method=method.upper(),
            authority=normalise_authority(authority, parts.scheme or "http"),
            path=parts.path or "/",
            query=parts.query,
            headers=lowered,
            scheme=(parts.scheme or "http").lower(),
        )


@dataclass(frozen=True)
class VerifyPolicy:
    """What a verifier insists on beyond a valid signature.

    ``window_s=None`` skips the ``created`` check (only for fixed test vectors).
    """

    window_s: int | None = DEFAULT_WINDOW_S
    require_nonce: bool = True
    require_alg: bool = True
    require_bcfl_components: bool = True


STRICT = VerifyPolicy()


@dataclass(frozen=True)
class VerifiedSignature:
    keyid: str
    created: int | None
    nonce: str | None
    label: str
    covered: tuple[str, ...]


def normalise_authority(authority: str, scheme: str = "http") -> str:
    """Lowercase host, default port dropped (RFC 9421 §2.2.3)."""
    value = authority.strip().lower()
    default = {"http": ":80", "https": ":443"}.get(scheme.lower())
    if default and value.endswith(default) and not value.endswith("]"):
        value = value[: -len(default)]
    return value


def content_digest(body: bytes) -> str:
    """RFC 9530 ``Content-Digest`` value for ``body``: ``sha-256=:BASE64:``."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


def parse_content_digest(field: str) -> dict[str, bytes]:
    """The known digests of a ``Content-Digest`` field, by algorithm; SignatureError
    (``malformed_signature``) when it is not a dictionary of byte sequences naming one."""
    if len(field) > MAX_CONTENT_DIGEST_CHARS:
        raise SignatureError("malformed_signature", "Content-Digest field too long")
    try:
        parsed = http_sf.parse(field.encode("latin-1"), tltype="dictionary")
    except (http_sf.StructuredFieldError, UnicodeEncodeError, ValueError) as exc:
        raise SignatureError(
            "malformed_signature", f"Content-Digest is not a structured dictionary: {exc}"
        ) from exc
    if not isinstance(parsed, dict):
        raise SignatureError("malformed_signature", "Content-Digest is not a dictionary")
    known: dict[str, bytes] = {}
    entries: dict[str, Any] = parsed
    for algorithm, (value, _params) in entries.items():
        if algorithm not in _DIGESTS:
            continue
        if not isinstance(value, bytes):
            raise SignatureError("malformed_signature", f"Content-Digest {algorithm} not bytes")
        known[algorithm] = value
    if not known:
        raise SignatureError("malformed_signature", "Content-Digest has no sha-256 or sha-512")
    return known


def check_content_digest(field: str, body: bytes) -> None:
    """Refuse a body that does not match every known digest in its ``Content-Digest``."""
    for algorithm, value in parse_content_digest(field).items():
        if not hmac.compare_digest(_DIGESTS[algorithm](body).digest(), value):
            raise SignatureError(
                "digest_mismatch",
                f"the body does not match its Content-Digest ({algorithm})",
                hint="the body changed in transit or was signed over other bytes; resend it",
            )


def _sf_string(value: str) -> str:
    if not value.isascii() or not value.isprintable():
        raise SignatureError("malformed_signature", "structured string has non-printable chars")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sf_param_value(value: object) -> str:
    if value is True:
        return ""
    if value is False:
        return "=?0"
    if isinstance(value, int):
        return f"={value}"
    if isinstance(value, http_sf.Token):
        return f"={value}"
    if isinstance(value, str):
        return "=" + _sf_string(value)
    if isinstance(value, bytes):
        return "=:" + base64.b64encode(value).decode("ascii") + ":"
    raise SignatureError("malformed_signature", f"unsupported parameter type {type(value)!r}")


def serialise_params(components: Sequence[str], params: Iterable[tuple[str, object]]) -> str:
    """Serialise an RFC 8941 inner list of component names with parameters (§2.3)."""
    inner = " ".join(_sf_string(c) for c in components)
    return f"({inner})" + "".join(f";{k}{_sf_param_value(v)}" for k, v in params)


def _component_value(view: RequestView, component: str) -> str:
    derived = _DERIVED.get(component)
    if derived is not None:
        return derived(view)
    if component.startswith("@"):
        raise SignatureError("unknown_component", f"unsupported derived component {component}")
    if component not in view.headers:
        raise SignatureError("missing_header", f"covered header {component!r} is absent")
    value = view.headers[component].strip(" \t")
    if len(value) > MAX_COMPONENT_VALUE_CHARS or "\n" in value or "\r" in value:
        raise SignatureError("malformed_signature", f"covered header {component!r} unusable")
    return value


_DERIVED: dict[str, Callable[[RequestView], str]] = {
    "@method": lambda v: v.method.upper(),
    "@authority": lambda v: normalise_authority(v.authority, v.scheme),
    "@scheme": lambda v: v.scheme.lower(),
    "@path": lambda v: v.path or "/",
    "@query": lambda v: "?" + v.query,
    "@request-target": lambda v: (v.path or "/") + ("?" + v.query if v.query else ""),
    "@target-uri": lambda v: (
        f"{v.scheme.lower()}://{normalise_authority(v.authority, v.scheme)}{v.path or '/'}"
        + ("?" + v.query if v.query else "")
    ),
}


def signature_base(view: RequestView, components: Sequence[str], params_line: str) -> bytes:
    """The exact bytes signed (RFC 9421 §2.5)."""
    lines = [f'"{c}": {_component_value(view, c)}' for c in components]
    lines.append(f'"@signature-params": {params_line}')
    base = "\n".join(lines)
    if not base.isascii():
        raise SignatureError("malformed_signature", "signature base is not ASCII")
    return base.encode("ascii")


def bcfl_components(view: RequestView, *, has_body: bool) -> list[str]:
    """What a bcfl signature covers: the target, the body's digest, and every header in
    :data:`COVERED_WHEN_PRESENT` the request carries (so none can be added or changed)."""
    components = ["@method", "@authority", "@path"]
    if view.query:
        components.append("@query")
    if has_body or "content-digest" in view.headers:
        components.append("content-digest")
    components += [name for name in COVERED_WHEN_PRESENT if name in view.headers]
    return components


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def sign_request(
    key: nacl.signing.SigningKey,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
    *,
    created: int | None = None,
    nonce: str | None = None,
    label: str = LABEL,
    digest: str | None = None,
) -> dict[str, str]:
    """Headers to add to a request so that it carries the sender's signature.

    ``body=None`` means no body (and no Content-Digest); ``b""`` still gets a digest.
    ``digest``: ``content_digest(body)`` already computed by the caller (one chunk pushed to
    three peers is hashed once, not three times); a wrong one only gets the request refused.
    """
    extra: dict[str, str] = {}
    if body is not None:
        extra["Content-Digest"] = content_digest(body) if digest is None else digest
    view = RequestView.from_url(method, url, {**headers, **extra})
    components = bcfl_components(view, has_body=body is not None)
    params: list[tuple[str, object]] = [
        ("created", int(time.time()) if created is None else created),
        ("keyid", did_from_public_key(bytes(key.verify_key))),
        ("nonce", new_nonce() if nonce is None else nonce),
        ("alg", ALG),
    ]
    params_line = serialise_params(components, params)
    signature = key.sign(signature_base(view, components, params_line)).signature
    extra["Signature-Input"] = f"{label}={params_line}"
    extra["Signature"] = f"{label}=:{base64.b64encode(signature).decode('ascii')}:"
    return extra


def _reject_duplicate(key: str, context: str) -> None:
    raise SignatureError("malformed_signature", f"duplicate {context} key {key!r}")


def _parse_dictionary(name: str, value: str | None, limit: int) -> dict[str, Any]:
    if value is None:
        raise SignatureError(
            "missing_signature",
            f"the request has no {name} header",
            hint="sign the request with the member key (bcfl's SignedClient does this)",
        )
    if len(value) > limit:
        raise SignatureError("malformed_signature", f"{name} is longer than {limit} characters")
    try:
        parsed = http_sf.parse(
            value.encode("latin-1"), tltype="dictionary", on_duplicate_key=_reject_duplicate
        )
    except (http_sf.StructuredFieldError, UnicodeEncodeError, ValueError) as exc:
        raise SignatureError(
            "malformed_signature", f"{name} is not an RFC 8941 dictionary: {exc}"
        ) from exc
    assert isinstance(parsed, dict)
    return parsed


def default_key_resolver(keyid: str) -> bytes:
    try:
        return public_key_from_did(keyid)
    except EncodingError as exc:
        raise SignatureError("unknown_key", f"keyid is not an Ed25519 did:key: {exc}") from exc


def verify_request(
    view: RequestView,
    body: bytes | None,
    *,
    policy: VerifyPolicy = STRICT,
    now: int | None = None,
    resolve_key: Callable[[str], bytes] = default_key_resolver,
) -> VerifiedSignature:
    """Verify the one signature on a request and its body; return it or raise SignatureError.

    ``verify_request_head`` then ``check_body``: a server that has not read the body yet calls
    them apart, so that a stranger's body is refused before it is read.
    """
    verified = verify_request_head(
        view, has_body=bool(body), policy=policy, now=now, resolve_key=resolve_key
    )
    check_body(view, verified, body, policy=policy)
    return verified


def check_body(
    view: RequestView,
    verified: VerifiedSignature,
    body: bytes | None,
    *,
    policy: VerifyPolicy = STRICT,
) -> None:
    """Step (4) of ``verify_request_head``, once the body is read: it must match the signed
    ``Content-Digest``; under :data:`STRICT`, a body whose digest is not covered is refused
    (a head announced none, and a body came anyway)."""
    digest_field = view.headers.get("content-digest")
    if "content-digest" in verified.covered and digest_field is not None:
        check_content_digest(digest_field, body or b"")
    elif body and policy.require_bcfl_components:
        raise SignatureError("uncovered_component", "a request body needs a signed Content-Digest")


def verify_request_head(
    view: RequestView,
    *,
    has_body: bool,
    policy: VerifyPolicy = STRICT,
    now: int | None = None,
    resolve_key: Callable[[str], bytes] = default_key_resolver,
) -> VerifiedSignature:
    """Verify the signature on a request's head alone; ``has_body``: a body follows.

    Steps: (1) parse both dictionaries, exactly one label; (2) parameter types and policy
    (alg, keyid, nonce, created window); (3) covered components: known, unique, and for
    :data:`STRICT` the bcfl set (a body needs a covered ``Content-Digest``, which binds it);
    (5) the Ed25519 signature. (4), the body against that digest, is ``check_body``'s.
    """
    # (1) structure
    inputs = _parse_dictionary(
        "Signature-Input", view.headers.get("signature-input"), MAX_SIGNATURE_INPUT_CHARS
    )
    signatures = _parse_dictionary("Signature", view.headers.get("signature"), MAX_SIGNATURE_CHARS)
    if len(inputs) != 1 or set(inputs) != set(signatures):
        raise SignatureError(
            "malformed_signature", "expected exactly one signature, same label in both headers"
        )
    label = next(iter(inputs))
    members, params = inputs[label]
    sig_value, _ = signatures[label]
    if not isinstance(members, list) or not isinstance(sig_value, bytes):
        raise SignatureError("malformed_signature", "Signature-Input must be an inner list")
    if len(sig_value) != 64:
        raise SignatureError("malformed_signature", "an ed25519 signature has 64 bytes")
    if len(members) > MAX_COVERED_COMPONENTS:
        raise SignatureError("malformed_signature", "too many covered components")
    components: list[str] = []
    for item, item_params in members:
        if not isinstance(item, str) or item_params:
            raise SignatureError(
                "unknown_component", "covered components must be plain strings without params"
            )
        if item in components or item != item.lower() or item == "@signature-params":
            raise SignatureError("malformed_signature", f"bad covered component {item!r}")
        components.append(item)

    # (2) parameters
    for name, value in params.items():
        if name not in _METADATA_PARAMS:
            raise SignatureError("malformed_signature", f"unknown signature parameter {name!r}")
        if name in {"created", "expires"} and (type(value) is not int):
            raise SignatureError("malformed_signature", f"{name} must be an integer")
        if name in {"keyid", "nonce", "alg", "tag"} and not isinstance(value, str):
            raise SignatureError("malformed_signature", f"{name} must be a string")
    keyid = params.get("keyid")
    if not isinstance(keyid, str) or len(keyid) > MAX_KEYID_CHARS:
        raise SignatureError("malformed_signature", "keyid missing or too long")
    alg = params.get("alg")
    if alg is not None and alg != ALG:
        raise SignatureError("unsupported_alg", f"alg {alg!r} is not supported, only {ALG!r}")
    if policy.require_alg and alg is None:
        raise SignatureError("malformed_signature", 'the signature must name alg="ed25519"')
    nonce = params.get("nonce")
    if nonce is not None and len(nonce) > MAX_NONCE_CHARS:
        raise SignatureError("malformed_signature", "nonce too long")
    if policy.require_nonce and not nonce:
        raise SignatureError("malformed_signature", "the signature has no nonce")
    created = params.get("created")
    if policy.window_s is not None:
        current = int(time.time()) if now is None else now
        if created is None:
            raise SignatureError("malformed_signature", "the signature has no created time")
        if abs(current - created) > policy.window_s:
            raise SignatureError(
                "stale",
                f"signature created {created - current:+d} s from now, "
                f"outside ±{policy.window_s} s",
                hint="check this machine's clock (NTP) and resend",
            )
        expires = params.get("expires")
        if expires is not None and expires < current:
            raise SignatureError("stale", "the signature has expired")

    # (3) covered components
    for component in components:
        if component.startswith("@") and component not in _DERIVED:
            raise SignatureError("unknown_component", f"unsupported component {component}")
    if policy.require_bcfl_components:
        # headers covered when present are not required: an uncovered one is not acted on
        # (``auth.py`` drops it), so that nodes signing without it still interoperate
        required = set(bcfl_components(view, has_body=has_body)) - set(COVERED_WHEN_PRESENT)
        missing = sorted(required - set(components))
        if missing:
            raise SignatureError(
                "uncovered_component", f"the signature does not cover {', '.join(missing)}"
            )
    # (4) a body, or a Content-Digest field, needs a covered digest (checked by check_body)
    digest_field = view.headers.get("content-digest")
    needs_digest = has_body or digest_field is not None
    if policy.require_bcfl_components and needs_digest and "content-digest" not in components:
        raise SignatureError("uncovered_component", "a request body needs a signed Content-Digest")
    if digest_field is not None and "content-digest" in components:
        parse_content_digest(digest_field)  # well formed now; matched against the body later

    # (5) signature
    params_line = serialise_params(components, params.items())
    base = signature_base(view, components, params_line)
    public_key = resolve_key(keyid)
    try:
        nacl.signing.VerifyKey(public_key).verify(base, sig_value)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as exc:
        raise SignatureError(
            "bad_signature",
            f"the signature does not verify for {keyid}",
            hint="the request was altered, or signed with another key",
        ) from exc
    return VerifiedSignature(
        keyid=keyid, created=created, nonce=nonce, label=label, covered=tuple(components)
    )
