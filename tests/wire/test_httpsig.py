"""RFC 9421 signatures: the RFC's own ed25519 vector, and interoperability both ways with the
independent ``http-message-signatures`` package."""

from __future__ import annotations

import base64
import datetime
import time
from dataclasses import dataclass, field

import nacl.signing
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, MappingKeyResolver
from http_message_signatures.algorithms import ED25519

from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.wire.httpsig import (
    STRICT,
    RequestView,
    SignatureError,
    VerifyPolicy,
    check_content_digest,
    content_digest,
    serialise_params,
    sign_request,
    signature_base,
    verify_request,
)

# RFC 9421 Appendix B.1.4 (test-key-ed25519, JWK "d" and "x") and B.2 / B.2.6.
RFC_D = "n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU"
RFC_X = "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs"
RFC_HEADERS = {
    "host": "example.com",
    "date": "Tue, 20 Apr 2021 02:07:55 GMT",
    "content-type": "application/json",
    "content-digest": (
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLv"
        "RwEmTHWXvJwew==:"
    ),
    "content-length": "18",
}
RFC_BODY = b'{"hello": "world"}'
RFC_INPUT = (
    'sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length")'
    ';created=1618884473;keyid="test-key-ed25519"'
)
RFC_SIGNATURE = (
    "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPp"
    "BKRCw==:"
)
RFC_BASE = (
    '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    '"@method": POST\n'
    '"@path": /foo\n'
    '"@authority": example.com\n'
    '"content-type": application/json\n'
    '"content-length": 18\n'
    '"@signature-params": ("date" "@method" "@path" "@authority" "content-type" '
    '"content-length");created=1618884473;keyid="test-key-ed25519"'
)
RFC_POLICY = VerifyPolicy(
    window_s=None, require_nonce=False, require_alg=False, require_bcfl_components=False
)


def _b64url(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _rfc_view(signature: str = RFC_SIGNATURE) -> RequestView:
    headers = {**RFC_HEADERS, "signature-input": RFC_INPUT, "signature": signature}
    return RequestView("POST", "example.com", "/foo", "param=Value&Pet=dog", headers, "https")


def test_rfc9421_b26_verifies() -> None:
    public = _b64url(RFC_X)
    result = verify_request(
        _rfc_view(), RFC_BODY, policy=RFC_POLICY, resolve_key=lambda keyid: public
    )
    assert result.keyid == "test-key-ed25519"
    assert result.created == 1618884473
    assert result.label == "sig-b26"


def test_rfc9421_b26_signing_reproduces_signature() -> None:
    key = nacl.signing.SigningKey(_b64url(RFC_D))
    assert bytes(key.verify_key) == _b64url(RFC_X)
    components = ["date", "@method", "@path", "@authority", "content-type", "content-length"]
    params_line = serialise_params(
        components, [("created", 1618884473), ("keyid", "test-key-ed25519")]
    )
    base = signature_base(_rfc_view(), components, params_line)
    assert base.decode() == RFC_BASE
    signature = base64.b64encode(key.sign(base).signature).decode()
    assert f"sig-b26=:{signature}:" == RFC_SIGNATURE
    assert f"sig-b26={params_line}" == RFC_INPUT


def test_rfc9421_b26_tampered_is_refused() -> None:
    public = _b64url(RFC_X)
    view = _rfc_view()
    tampered = RequestView(
        view.method, view.authority, "/bar", view.query, view.headers, view.scheme
    )
    with pytest.raises(SignatureError) as info:
        verify_request(tampered, RFC_BODY, policy=RFC_POLICY, resolve_key=lambda k: public)
    assert info.value.code == "bad_signature"


def test_rfc9530_digest_of_example_body() -> None:
    # RFC 9530 / RFC 9421 B.2: sha-256 of {"hello": "world"}
    assert content_digest(RFC_BODY) == "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    check_content_digest(RFC_HEADERS["content-digest"], RFC_BODY)  # the RFC's sha-512 too
    with pytest.raises(SignatureError) as info:
        check_content_digest(content_digest(RFC_BODY), RFC_BODY + b" ")
    assert info.value.code == "digest_mismatch"


# --- interoperability with http-message-signatures -------------------------------------------


@dataclass
class _Message:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


def _key() -> tuple[nacl.signing.SigningKey, str]:
    key = nacl.signing.SigningKey.generate()
    return key, did_from_public_key(bytes(key.verify_key))


def _view(message: _Message) -> RequestView:
    return RequestView.from_url(message.method, message.url, message.headers)


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("POST", "http://127.0.0.1:8111/tx", b'{"a":1}'),
        ("PUT", "http://127.0.0.1:8111/blobs/ab/chunks/3?size=10", b"\x00" * 10),
        ("POST", "http://node.example/members?x=1&y=%20", None),
        ("GET", "http://node.example:80/status", None),
    ],
)
def test_package_signed_verifies_with_ours(method: str, url: str, body: bytes | None) -> None:
    key, did = _key()
    private = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(key))
    signer = HTTPMessageSigner(
        signature_algorithm=ED25519,
        key_resolver=MappingKeyResolver(public_keys={}, private_keys={did: private}),
    )
    message = _Message(method, url, {"Host": url.split("/")[2]})
    view0 = _view(message)
    components = ["@method", "@authority", "@path"] + (["@query"] if view0.query else [])
    signer.sign(
        message,
        key_id=did,
        nonce="n-" + str(time.time_ns()),
        covered_component_ids=components,
        body=body,
    )
    result = verify_request(_view(message), body, policy=STRICT)
    assert result.keyid == did
    assert ("content-digest" in result.covered) == (body is not None)


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("POST", "http://127.0.0.1:8111/tx", b'{"a":1}'),
        ("PUT", "http://127.0.0.1:8111/blobs/ab/chunks/3?size=10", b""),
        ("GET", "http://node.example/blocks?from=3&to=9", None),
    ],
)
def test_ours_verifies_with_package(method: str, url: str, body: bytes | None) -> None:
    key, did = _key()
    message = _Message(method, url, {"Host": url.split("/")[2]})
    message.headers.update(sign_request(key, method, url, message.headers, body))
    verifier = HTTPMessageVerifier(
        signature_algorithm=ED25519,
        key_resolver=MappingKeyResolver(
            public_keys={did: ed25519.Ed25519PublicKey.from_public_bytes(bytes(key.verify_key))},
            private_keys={},
        ),
    )
    results = verifier.verify(
        message,
        require_components=("@method", "@authority", "@path"),
        body=body,
        max_age=datetime.timedelta(seconds=30),
    )
    assert results[0].parameters["keyid"] == did
    assert results[0].parameters["alg"] == "ed25519"
    assert results[0].nonce
    # and ours agrees
    assert verify_request(_view(message), body).keyid == did


# --- refusals --------------------------------------------------------------------------------


def _signed(
    body: bytes | None = b"{}", url: str = "http://n.example/tx", **kw: object
) -> tuple[dict[str, str], str]:
    key, did = _key()
    headers = {"host": "n.example"}
    headers.update(sign_request(key, "POST", url, headers, body, **kw))  # type: ignore[arg-type]
    return {k.lower(): v for k, v in headers.items()}, did


def _code(headers: dict[str, str], body: bytes | None, url: str = "http://n.example/tx") -> str:
    with pytest.raises(SignatureError) as info:
        verify_request(RequestView.from_url("POST", url, headers), body)
    return info.value.code


def test_refusals_name_their_reason() -> None:
    headers, _ = _signed()
    assert _code({k: v for k, v in headers.items() if k != "signature"}, b"{}") == (
        "missing_signature"
    )
    assert _code({**headers, "signature-input": "bcfl=(("}, b"{}") == "malformed_signature"
    assert _code({**headers, "signature": "bcfl=:AAAA:"}, b"{}") == "malformed_signature"
    assert _code({**headers, "signature-input": "x" * 5000}, b"{}") == "malformed_signature"
    assert _code(headers, b"{ }") == "digest_mismatch"
    tampered = dict(headers)
    tampered["content-digest"] = content_digest(b"{ }")
    assert _code(tampered, b"{ }") == "bad_signature"
    assert _code(headers, b"{}", url="http://n.example/tx2") == "bad_signature"
    stale, _ = _signed(created=int(time.time()) - 31)
    assert _code(stale, b"{}") == "stale"
    future, _ = _signed(created=int(time.time()) + 31)
    assert _code(future, b"{}") == "stale"
    # a query that the signature does not cover
    assert _code(headers, b"{}", url="http://n.example/tx?admin=1") == "uncovered_component"
    # a body smuggled onto a body-less signed request
    nobody, _ = _signed(body=None)
    assert _code(nobody, b"x") == "uncovered_component"
    two = {**headers, "signature-input": headers["signature-input"] + ', b=("@path")'}
    assert _code(two, b"{}") == "malformed_signature"
    dup = {
        **headers,
        "signature-input": headers["signature-input"] + ", " + headers["signature-input"],
    }
    assert _code(dup, b"{}") == "malformed_signature"
    not_did = {**headers}
    not_did["signature-input"] = headers["signature-input"].replace("did:key:z", "did:web:z")
    assert _code(not_did, b"{}") == "unknown_key"
