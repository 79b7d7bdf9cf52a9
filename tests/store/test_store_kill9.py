"""SIGKILL during appends, on both backends: the store opens (SQLite: passes integrity_check)
and holds a valid prefix."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bcfl_cli.home import Home
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.verify import verify_chain
from tests.chain.factories import make_consortium

ROOT = Path(__file__).resolve().parents[2]
KILLS = 3


def test_kill_9_during_appends(tmp_path, store_backend):
    store_backend.use(Home.resolve(tmp_path))
    c = make_consortium(tmp_path)
    c.ledger.close()
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    last = 0
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "store" / "appender.py"), str(tmp_path)],
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            assert proc.stdout.readline().startswith(b"appended"), "appender did not start"
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        if not store_backend.is_postgres:
            conn = sqlite3.connect(c.home.store_file)
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            conn.close()
        with Ledger.open(c.home) as ledger:
            report = verify_chain(ledger, workers=1)
        assert report.ok, report.fault
        assert report.height > last
        last = report.height
