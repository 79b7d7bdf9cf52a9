"""Encrypted transport between real nodes (issue 22): what an eavesdropper records, what a man
in the middle gets, and a certificate rotation that stops nothing."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import os
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bcfl_cli.demo.launcher import LocalConsortium, MemberPlan
from bcfl_cli.identity.tls_cert import certificate_from_seed, fingerprint_of, read_fingerprint
from bcfl_cli.node.tls import TlsRefused, TransportTrust
from bcfl_cli.store.blobs import BlobStore
from tests.network.cluster import DIGITS_4, GENESIS_TIME_MS, PASSPHRASE, network_plan, wait_for
from tests.network.relay import FakeServer, Recorder

pytestmark = [pytest.mark.network, pytest.mark.timeout(600)]

NAMES = ("alice", "bob", "carol", "dave")
#: What a recorder must never see: HTTP, our JSON, RFC 9421 headers, safetensors headers, dids.
CLEAR_MARKERS = (
    b"HTTP/1.1",
    b'{"tx":',
    b'"chain":"',
    b"Signature-Input",
    b'"__metadata__"',
    b'"dtype":"',
    b"did:key:z6Mk",
    b"/v1/status",
)


def tls_consortium(root: Path, names: Sequence[str] = NAMES, rounds: int = 3) -> LocalConsortium:
    """Four founders whose node certificates are pinned in the genesis (``consortium.tls``)."""
    plan = dataclasses.replace(network_plan(rounds=rounds, members=len(names)), tls="pinned")
    members = [
        MemberPlan(name, data=DIGITS_4 / f"member-{i % 4 + 1:02d}.csv")
        for i, name in enumerate(names)
    ]
    return LocalConsortium(
        root, members, plan, passphrase=PASSPHRASE, genesis_time_ms=GENESIS_TIME_MS
    )


def served_fingerprint(port: int) -> str | None:
    """The fingerprint of the certificate a node presents to a new connection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
            ctx.wrap_socket(sock) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    return fingerprint_of(der) if der else None


def _windows(data: bytes, size: int = 24, count: int = 12) -> list[bytes]:
    """Distinctive slices of a blob (no runs of a few byte values, which prove nothing)."""
    step = max(1, len(data) // (count + 1))
    out = [data[i : i + size] for i in range(step, len(data) - size, step)]
    return [w for w in out if len(set(w)) >= 12][:count]


def test_an_eavesdropper_records_no_json_no_header_no_model(tmp_path):
    with tls_consortium(tmp_path) as c:
        relays = {n: Recorder(c.members[n].port).start() for n in c.names}
        try:
            for name in c.names:
                # signed requests name the relay (RFC 9421 @authority): the node answers to it
                others = [relays[o].url for o in c.names if o != name]
                c.start(name, peers=others, extra=["--advertise", relays[name].url])
            for name in c.names:
                c.wait_ready(name, timeout=180)
            c.wait_round_closed(1, timeout=300)
            status = c.status("alice")
        finally:
            for relay in relays.values():
                relay.close()
        recorded = b"".join(bytes(r.recorded) for r in relays.values())
        # every node was called through its relay, and the rounds' traffic went that way
        assert all(r.connections > 0 for r in relays.values())
        assert len(recorded) > 50_000, len(recorded)
        for marker in CLEAR_MARKERS:
            assert marker not in recorded, marker
        blobs = BlobStore(c.members["alice"].home.blob_dir)
        models = [status["round"]["base_model"], status["round"]["model"]]
        round_one = c.blocks("alice", 1, 100)
        updates = [
            tx["tx"]["body"]["blob"]
            for block in round_one
            for tx in block["txs"]
            if tx["tx"]["kind"] == "update"
        ]
        assert updates, "round 1 carried no update"
        checked = 0
        for digest in [*models, *updates]:
            if not blobs.has(digest):
                continue
            data = blobs.get(digest)
            assert b'"dtype"' in data  # the blob is safetensors in clear on disk...
            for window in _windows(data):
                assert window not in recorded  # ...and none of it crossed the wire in clear
                checked += 1
        assert checked >= 24


def _ca_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 from a CA nobody in the consortium trusts."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Other CA")])
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert, key = tmp / "mitm-ca.crt", tmp / "mitm-ca.key"
    cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def test_a_man_in_the_middle_is_refused_and_named(tmp_path):
    self_signed = certificate_from_seed(os.urandom(32))
    with (
        tls_consortium(tmp_path / "c") as c,
        self_signed.pem_files() as (cert, key, password),
    ):
        mitm_self = FakeServer(cert, key, password).start()
        mitm_ca = FakeServer(*_ca_signed(tmp_path)).start()
        try:
            c.start("alice", train=False, peers=[mitm_self.url, mitm_ca.url])
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
            assert mitm.handshakes >= 1
            assert bytes(mitm.received) == b""  # not one byte of a request went to them
            reason = found[mitm.url]
            assert mitm.url in reason and "certificate_not_pinned" in reason
        peers = {p["url"]: p for p in c.status("alice")["peers"]}
        assert peers[mitm_self.url]["encrypted"] is False
        log = c.log("alice", 200_000)
        assert "peer refused" in log and "certificate_not_pinned" in log


def test_certificate_rotation_by_transaction_without_downtime(tmp_path):
    with tls_consortium(tmp_path) as c:
        c.start_all(train=False, timeout=180)
        c.wait_height(3, timeout=180)
        alice = c.members["alice"]
        assert alice.proc is not None
        pid, old = alice.proc.pid, read_fingerprint(alice.home)
        assert old is not None and served_fingerprint(alice.port) == old
        out = c.run_cli("tls", "rotate", "--home", str(alice.home.root), "--json", timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        rotated = json.loads(out.stdout)
        new = rotated["fingerprint"]
        assert rotated["committed"] and new != old
        # from the committing block on, new handshakes get the new certificate; same process
        wait_for(lambda: served_fingerprint(alice.port) == new, 60, "alice to serve the new one")
        assert alice.running and alice.proc.pid == pid
        assert read_fingerprint(alice.home) == new
        # every node keeps committing, alice included (a quorum of 3 of 4 needs her or all others)
        c.wait_height(rotated["height"] + 3, timeout=180)
        # the chain pins the new certificate: a caller holding the new pin gets in, the old is out
        pinned_new = TransportTrust("pinned")
        pinned_new.pins.update({alice.did: new})
        pinned_new.httpx_verify(alice.url, alice.did)
        pinned_old = TransportTrust("pinned")
        pinned_old.pins.update({alice.did: old})
        with pytest.raises(TlsRefused, match="certificate_not_pinned"):
            pinned_old.httpx_verify(alice.url, alice.did)
        # the member's own commands reach its TLS node (bcfl status reads node.json's https URL)
        shown = c.run_cli("status", "--home", str(alice.home.root), "--json", timeout=120)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert json.loads(shown.stdout)["tls"]["fingerprint"] == new
        # a peer that connects afresh (bob restarted) verifies alice by her new pin
        c.stop("bob")
        c.start("bob", train=False)
        c.wait_ready("bob", timeout=180)

        def bob_sees_alice() -> str | None:
            peers = {p["url"]: p for p in c.status("bob")["peers"]}
            link = peers.get(alice.url, {})
            return link.get("verified") if link.get("encrypted") else None

        assert wait_for(bob_sees_alice, 120, "bob's link to alice") == f"pinned:{alice.did}"
        c.wait_height(rotated["height"] + 5, timeout=180)
