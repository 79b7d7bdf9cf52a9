"""The ``ca`` trust mode through real processes (issue 22): a consortium CA issues every node's
certificate, nodes verify each other against ``--ca-bundle``, a certificate from another CA or a
self-signed one is refused and named, and the member's commands reach a CA-mode node with the
bundle (``BCFL_CA_BUNDLE``)."""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from bcfl_cli.demo.launcher import LocalConsortium, Member, MemberPlan, bcfl_command
from bcfl_cli.identity.tls_cert import certificate_from_seed
from tests.network.cluster import DIGITS_4, GENESIS_TIME_MS, PASSPHRASE, network_plan, wait_for
from tests.network.relay import FakeServer
from tests.network.throwaway_ca import Ca

pytestmark = [pytest.mark.network, pytest.mark.timeout(600)]

NAMES = ("alice", "bob", "carol", "dave")


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
