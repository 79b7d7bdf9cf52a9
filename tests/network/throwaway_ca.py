"""A throwaway certificate authority for tests and benchmarks (what a consortium runs with
openssl or step-ca): ECDSA P-256 keys, a CA certificate, and leaf certificates it signs for
loopback addresses, written as PEM files (keys 0600).

One helper for both of its users: ``tests/network/test_tls_ca.py`` (the ``ca`` trust mode
through real nodes) and ``bench/flower_deploy.py`` (Flower's deployment engine over TLS, as
Flower's guide sets it up). Benchmarks import test helpers the same way elsewhere
(``tests.chain.factories``, ``tests.provenance.long_chain``).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: How long the certificates are valid by default (and valid from a day before: clock skew).
DEFAULT_LIFETIME = datetime.timedelta(days=30)
_BACKDATE = datetime.timedelta(days=1)
_KEY_PEM = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8)


@dataclasses.dataclass(frozen=True)
class Ca:
    """A throwaway certificate authority: its key, its self-signed certificate, and how long
    the certificates it issues live."""

    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    lifetime: datetime.timedelta = DEFAULT_LIFETIME

    @classmethod
    def create(cls, name: str, lifetime: datetime.timedelta = DEFAULT_LIFETIME) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(name, key, cert, lifetime)

    def bundle(self, directory: Path, filename: str | None = None) -> Path:
        """The CA certificate alone (``--ca-bundle``, Flower's ``ca.crt``), as
        ``directory/filename`` (``NAME.pem`` unless named)."""
        path = directory / (filename or f"{self.name}.pem")
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(
        self,
        directory: Path,
        stem: str,
        ip: str = "127.0.0.1",
        *,
        dns_names: Sequence[str] = (),
        client_auth: bool = True,
        suffixes: tuple[str, str] = (".crt", ".key"),
    ) -> tuple[Path, Path]:
        """A leaf certificate for ``ip`` (an IP SAN: hostnames are checked in CA mode) and
        ``dns_names``, and its key, as ``directory/STEM.crt`` and ``directory/STEM.key``
        (``suffixes``); server authentication, and client authentication with ``client_auth``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        usages = [ExtendedKeyUsageOID.SERVER_AUTH]
        if client_auth:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + self.lifetime)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_file = directory / f"{stem}{suffixes[0]}"
        key_file = directory / f"{stem}{suffixes[1]}"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(*_KEY_PEM, serialization.NoEncryption()))
        key_file.chmod(0o600)
        return cert_file, key_file


__all__ = ["DEFAULT_LIFETIME", "Ca"]
