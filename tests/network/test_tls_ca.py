"""The ``ca`` trust mode through real processes (issue 22): a consortium CA issues every node's
certificate, nodes verify each other against ``--ca-bundle``, a certificate from another CA or a
self-signed one is refused and named, and the member's commands reach a CA-mode node with the
bundle (``BCFL_CA_BUNDLE``)."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import os
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bcfl_cli.demo.launcher import LocalConsortium, Member, MemberPlan, bcfl_command
from bcfl_cli.identity.tls_cert import certificate_from_seed
from tests.network.cluster import DIGITS_4, GENESIS_TIME_MS, PASSPHRASE, network_plan, wait_for
from tests.network.relay import FakeServer

pytestmark = [pytest.mark.network, pytest.mark.timeout(600)]

NAMES = ("alice", "bob", "carol", "dave")
_KEY_PEM = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8)


@dataclasses.dataclass(frozen=True)
class Ca:
    """A throwaway certificate authority (what a consortium runs with openssl or step-ca)."""

    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
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
        return cls(name, key, cert)

    def bundle(self, directory: Path) -> Path:
        """The CA certificate alone: what every node's ``--ca-bundle`` names."""
        path = directory / f"{self.name}.pem"
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(self, directory: Path, stem: str, ip: str = "127.0.0.1") -> tuple[Path, Path]:
        """A node certificate for ``ip`` (IP SAN: hostnames are checked in CA mode) and its key."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(*_KEY_PEM, serialization.NoEncryption()))
        key_file.chmod(0o600)
        return cert_file, key_file


class CaConsortium(LocalConsortium):
    """A local consortium whose genesis says ``tls = "ca"``; every node serves the certificate
    the consortium CA issued it, and everyone (nodes, observer) trusts the CA bundle only."""

    def __init__(self, root: Path, ca: Ca, rounds: int = 2) -> None:
        plan = dataclasses.replace(network_plan(rounds=rounds, members=len(NAMES)), tls="ca")
        members = [
            MemberPlan(name, data=DIGITS_4 / f"member-{i % 4 + 1:02d}.csv")
            for i, name in enumerate(NAMES)
        ]
        super().__init__(
            root, members, plan, passphrase=PASSPHRASE, genesis_time_ms=GENESIS_TIME_MS
        )
        self.pki = root / "pki"
        self.pki.mkdir()
        self.ca_bundle = ca.bundle(self.pki)
        self.extra_env["BCFL_CA_BUNDLE"] = str(self.ca_bundle)  # the member's commands
        self.issued: dict[str, tuple[Path, Path]] = {}
        for member in self.members.values():
            member.tls = True  # https:// URLs, and `bcfl node --tls`
            self.issued[member.name] = ca.issue(self.pki, member.name)
        self._observer = httpx.Client(
            timeout=5.0, verify=ssl.create_default_context(cafile=str(self.ca_bundle))
        )

    def tls_args(self, name: str) -> list[str]:
        cert, key = self.issued[name]
        return ["--tls-cert", str(cert), "--tls-key", str(key), "--ca-bundle", str(self.ca_bundle)]

    def client_for(self, member: Member) -> httpx.Client:
        return self._observer  # verifies against the CA bundle, hostname (IP SAN) included

    def close(self) -> None:
        super().close()
        self._observer.close()


def test_a_ca_mode_consortium_commits_and_closes_a_round_over_tls(tmp_path):
    with CaConsortium(tmp_path, Ca.create("Consortium CA")) as c:
        for name in c.names:
            c.start(name, extra=c.tls_args(name))
        for name in c.names:
            c.wait_ready(name, timeout=180)
        c.wait_round_closed(1, timeout=400)
        status = c.status("alice")
        assert status["tls"]["mode"] == "ca" and status["tls"]["serving"] is True
        links = {p["url"]: p for p in status["peers"]}
        for name in ("bob", "carol", "dave"):
            link = links[c.members[name].url]
            assert link["encrypted"] is True and link["verified"] == "ca", link
            assert not link["tls_refused"]
        # the member's own command reaches its CA-mode node with the bundle (BCFL_CA_BUNDLE)...
        home = str(c.members["alice"].home.root)
        shown = c.run_cli("status", "--home", home, "--json", timeout=120)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        live = json.loads(shown.stdout)
        assert not live.get("offline") and live["tls"]["mode"] == "ca", live
        assert len(live["peers"]) == 3
        # ...and without it the system's CAs do not vouch for the consortium's node
        bare = {k: v for k, v in c.env().items() if k != "BCFL_CA_BUNDLE"}
        refused = subprocess.run(
            [*bcfl_command(), "status", "--home", home, "--json"],
            env=bare,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        # (status then falls back to the home's ledger, and says why)
        assert json.loads(refused.stdout)["offline"] is True
        assert "certificate verify failed" in refused.stderr, refused.stderr


def test_a_ca_mode_man_in_the_middle_is_refused_and_named(tmp_path):
    other = Ca.create("Other CA")
    self_signed = certificate_from_seed(os.urandom(32))
    with (
        CaConsortium(tmp_path / "c", Ca.create("Consortium CA")) as c,
        self_signed.pem_files() as (cert, key, password),
    ):
        mitm_self = FakeServer(cert, key, password).start()
        mitm_ca = FakeServer(*other.issue(tmp_path, "mitm")).start()
        try:
            c.start(
                "alice", train=False, peers=[mitm_self.url, mitm_ca.url], extra=c.tls_args("alice")
            )
            c.wait_ready("alice", timeout=180)

            def refusals() -> dict[str, str] | None:
                peers = c.status("alice")["peers"]
                found = {p["url"]: p["tls_refused"] for p in peers if p.get("tls_refused")}
                return found if len(found) == 2 else None

            found = wait_for(refusals, 120, "alice to refuse both men in the middle")
        finally:
            mitm_self.close()
            mitm_ca.close()
        for mitm in (mitm_self, mitm_ca):
            assert bytes(mitm.received) == b""  # not one byte of a request went to them
            reason = found[mitm.url]
            assert mitm.url in reason and "ca_verify_failed" in reason
        peers = {p["url"]: p for p in c.status("alice")["peers"]}
        assert peers[mitm_ca.url]["encrypted"] is False
        log = c.log("alice", 200_000)
        assert "peer refused" in log and "ca_verify_failed" in log
