"""The node certificate at rest and its pin (issue 22)."""

from __future__ import annotations

import os
import stat
import tomllib

import nacl.signing
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bcfl_cli.consortium.config import parse_config
from bcfl_cli.consortium.example import filled_example
from bcfl_cli.errors import IdentityError, UsageError
from bcfl_cli.home import Home
from bcfl_cli.identity.tls_cert import (
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    certificate_from_seed,
    fingerprint_of,
    generate_certificate,
    load_certificate,
    pin_signature_valid,
    promote_next,
    read_fingerprint,
    sign_pin,
)
from bcfl_cli.protocol.crypto import did_from_public_key


@pytest.fixture
def home(tmp_path) -> Home:
    return Home.resolve(tmp_path / "home").ensure()


@pytest.fixture
def key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(b"\x07" * 32)


def test_generate_then_load(home, key):
    cert = generate_certificate(home, key)
    assert read_fingerprint(home) == cert.fingerprint == fingerprint_of(cert.der)
    loaded = load_certificate(home, key)
    assert loaded is not None and loaded.der == cert.der
    assert stat.S_IMODE(os.stat(home.root / TLS_KEY_FILE).st_mode) == 0o600
    assert cert.seed.hex() not in (home.root / TLS_KEY_FILE).read_text()  # encrypted at rest
    pem = (home.root / TLS_CERT_FILE).read_bytes()
    assert x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER) == cert.der
    assert "seed" not in repr(cert) and cert.seed.hex() not in repr(cert)


def test_certificate_is_a_pure_function_of_the_key():
    a, b = certificate_from_seed(b"\x01" * 32), certificate_from_seed(b"\x01" * 32)
    assert a.der == b.der
    parsed = x509.load_der_x509_certificate(a.der)
    assert parsed.not_valid_after_utc.year == 9999  # no expiry surprises
    assert certificate_from_seed(b"\x02" * 32).fingerprint != a.fingerprint


def test_another_identity_cannot_open_the_key(home, key):
    generate_certificate(home, key)
    with pytest.raises(IdentityError, match="does not open"):
        load_certificate(home, nacl.signing.SigningKey(b"\x08" * 32))


def test_a_tampered_fingerprint_is_refused(home, key):
    generate_certificate(home, key)
    path = home.root / TLS_KEY_FILE
    text = path.read_text()
    real = read_fingerprint(home)
    assert real is not None
    path.write_text(text.replace(real, "0" * 64))
    with pytest.raises(IdentityError, match="fingerprint does not match"):
        load_certificate(home, key)


@pytest.mark.parametrize("content", [b"", b"{}", b"[[[[", b"x" * 10_000])
def test_a_corrupt_key_file_is_an_error_not_a_traceback(home, key, content):
    (home.root / TLS_KEY_FILE).write_bytes(content)
    with pytest.raises(IdentityError, match="corrupt"):
        load_certificate(home, key)


def test_rotation_files(home, key):
    first = generate_certificate(home, key)
    nxt = generate_certificate(home, key, next_key=True)
    assert read_fingerprint(home) == first.fingerprint
    assert read_fingerprint(home, next_key=True) == nxt.fingerprint
    promoted = promote_next(home, key)
    assert promoted is not None and promoted.fingerprint == nxt.fingerprint
    assert read_fingerprint(home) == nxt.fingerprint
    assert read_fingerprint(home, next_key=True) is None


def test_pin_signature(key):
    fp = certificate_from_seed(b"\x03" * 32).fingerprint
    sig = sign_pin(key, fp)
    assert pin_signature_valid(bytes(key.verify_key), fp, sig)
    assert not pin_signature_valid(bytes(key.verify_key), "0" * 64, sig)
    other = nacl.signing.SigningKey(b"\x09" * 32)
    assert not pin_signature_valid(bytes(other.verify_key), fp, sig)


def _config_with_pin(pin: str) -> str:
    key = nacl.signing.SigningKey(b"\x07" * 32)
    dids = [
        (n, did_from_public_key(bytes(nacl.signing.SigningKey(bytes([i + 1]) * 32).verify_key)))
        for i, n in enumerate(["bob", "carol", "dave"])
    ]
    text = filled_example([("alice", did_from_public_key(bytes(key.verify_key))), *dids])
    text = text.replace("[consortium]\n", '[consortium]\ntls = "pinned"\n', 1)
    return text.replace('name = "alice"\n', f'name = "alice"\n{pin}\n', 1)


def test_consortium_file_takes_the_printed_pin(key):
    from bcfl_cli.node.tls_rotation import CertificatePin

    fp = certificate_from_seed(b"\x04" * 32).fingerprint
    line = CertificatePin(fp, sign_pin(key, fp), True).toml()
    config = parse_config(tomllib.loads(_config_with_pin(line)), "c.toml")
    assert config.tls == "pinned"
    document = config.to_document("ab" * 32)
    assert document["consortium"]["tls"] == "pinned"
    assert document["members"][0]["tls"] == {"fingerprint": fp, "sig": sign_pin(key, fp)}
    assert any("no certificate is pinned for" in w for w in config.warnings())


def test_consortium_file_refuses_a_pin_signed_by_someone_else(key):
    fp = certificate_from_seed(b"\x04" * 32).fingerprint
    forged = sign_pin(nacl.signing.SigningKey(b"\x05" * 32), fp)
    line = f'tls = {{ fingerprint = "{fp}", sig = "{forged}" }}'
    with pytest.raises(UsageError, match="tls.sig"):
        parse_config(tomllib.loads(_config_with_pin(line)), "c.toml")
