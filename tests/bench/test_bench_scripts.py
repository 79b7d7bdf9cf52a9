"""The benchmarks run end to end in their tiny modes (the real runs are manual: bench/README.md).

Only what needs no node processes runs by default; the node-backed path is one slow test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import nacl.signing
import pytest

import bench.common as common
import bench.flower_compare as flower_compare
import bench.ledger_overhead as ledger_overhead
import bench.model_proof as model_proof
import bench.serve_bench as serve_bench
import bench.simulate as simulate_bench
import bench.sync_bench as sync_bench
import bench.verify_chain as verify_chain
from bcfl_cli.consortium.config import load_config
from bcfl_cli.demo.launcher import consortium_toml
from bcfl_cli.protocol.crypto import did_from_public_key


@pytest.fixture(autouse=True)
def results_in_tmp(tmp_path, monkeypatch):
    """Benches cache chains and write JSON under bench/results/: keep tests out of it."""
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(verify_chain, "RESULTS", tmp_path / "results")


def test_plain_baseline_trains_and_times_every_round():
    members = common.load_members(4)
    with common.torch_threads(1):
        run = common.plain_fedavg(
            common.DIGITS_MLP, common.PLAN, members, common.load_test(), rounds=2
        )
    assert len(run.round_s) == 2 and all(t > 0 for t in run.round_s)
    assert 0.0 <= run.accuracy <= 1.0
    assert run.extra["parameters"] == 4810
    assert run.to_dict()["median_round_s"] == run.median_round_s


def test_report_prints_a_table_and_json(capsys):
    report = common.Report("smoke", "Smoke", {"n": 1}, ["what", "seconds", "x base"])
    report.add(what="base", seconds=0.5, **{"x base": 1.0})
    report.add(what="thing", seconds=1.25, **{"x base": 2.5})
    common.emit(report, as_json=True)
    data = json.loads(capsys.readouterr().out)
    assert data["rows"][1]["x base"] == 2.5 and data["machine"]["cores"] >= 1
    assert (common.RESULTS / "smoke.json").exists()
    common.emit(report, as_json=False, save=False)
    out = capsys.readouterr().out
    assert "Smoke" in out and "thing" in out and "load" in out
    assert "| thing | 1.250 | 2.500 |" in common.render_text(report)


def test_verify_chain_bench_on_a_short_chain(capsys):
    report = verify_chain.run(24, workers=1, deep=True, cli=False, quiet=True)
    rows = {r["what"]: r for r in report.rows}
    chain = rows["bcfl verify-chain"]
    assert chain["blocks"] == 25 and chain["signatures"] > 24 * 7
    assert rows["bcfl verify-chain --deep"]["signatures"] == chain["signatures"]
    assert all(r["x raw limit"] > 0 for r in report.rows)
    # the second run reads the cached chain
    again = verify_chain.run(24, workers=1, deep=False, cli=True, quiet=True)
    assert any("cache" in note for note in again.notes)
    assert "bcfl verify-chain (CLI, whole process)" in [r["what"] for r in again.rows]


def test_verify_chain_bench_reports_cpu_and_medians_of_alternating_runs():
    report = verify_chain.run(24, workers=1, deep=False, cli=False, repeat=2, quiet=True)
    rows = {r["what"]: r for r in report.rows}
    assert set(rows) == {
        "raw PyNaCl verify, 1 process",
        "raw PyNaCl verify, 1 processes",
        "bcfl verify-chain",
    }
    assert all(r["CPU s"] > 0 and r["x raw CPU"] > 0 for r in report.rows)
    assert all(len(v) == 2 for v in report.settings["samples"].values())
    assert any("medians of 2 alternating runs" in note for note in report.notes)


def test_flower_compare_runs_the_baseline_without_flower():
    report = flower_compare.run(4, 1, flower="/nonexistent/python", nodes=False, quiet=True)
    assert [r["arm"] for r in report.rows] == ["plain FedAvg (no ledger)"]
    assert report.rows[0]["x plain"] == 1.0
    assert any("Flower skipped" in note for note in report.notes)


def test_flower_compare_reports_both_start_ups_and_data_loads():
    report = flower_compare.run(4, 2, flower="/nonexistent/python", nodes=False, quiet=True)
    plain = report.rows[0]
    assert 0 <= plain["to 1st training s"] <= plain["to 1st aggregate s"]
    assert plain["data loads"] == 1
    assert any("launch -> the first member starts" in note for note in report.notes)


@pytest.fixture
def fresh_flower_cache(monkeypatch):
    """The Flower arm's per-process cache, emptied for one test and restored after."""
    monkeypatch.setattr(flower_compare, "_MEMBER_CACHE", {})
    monkeypatch.setattr(
        flower_compare, "_CACHE_COUNTS", {"loads": 0, "hits": 0, "first_train": math.inf}
    )


def test_flower_cache_loads_the_partitions_once_per_process(fresh_flower_cache):
    """Issue 21: a dict captured by the ClientApp closure missed on 200 of 200 calls; the
    module-level cache loads once and counts every later call as a hit."""
    first = flower_compare.cached_members(4)
    for _ in range(9):
        assert flower_compare.cached_members(4) is first
    assert flower_compare._CACHE_COUNTS["loads"] == 1
    assert flower_compare._CACHE_COUNTS["hits"] == 9


def test_flower_cache_counters_are_summed_over_actor_processes(tmp_path):
    """Ray's actors are separate processes: each writes its own counters, the bench sums them
    (two processes, three calls each: two loads, four hits)."""
    code = (
        "import time; from pathlib import Path; import bench.flower_compare as f\n"
        "for _ in range(3):\n"
        f"    f.cached_members(4); f.record_training(Path({str(tmp_path)!r}), time.time())\n"
    )
    env = dict(os.environ, PYTHONPATH=str(common.ROOT))
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    counters = flower_compare.sum_counters(tmp_path)
    assert counters["processes"] == 2
    assert (counters["loads"], counters["hits"]) == (2, 4)
    assert counters["first_train"] is not None and counters["first_train"] <= time.time()
    assert flower_compare.sum_counters(tmp_path / "none") == {
        "processes": 0,
        "loads": 0,
        "hits": 0,
        "first_train": None,
    }


def test_raw_loopback_transfer_moves_every_byte():
    pages = [b'{"blocks":[]}' * 10, b"[]"]
    blobs = [bytes(range(256)) * 4096, b"x" * 10]
    seconds, cpu = sync_bench.raw_transfer(pages, blobs, repeats=1)
    assert 0 < seconds < 30 and cpu >= 0


def test_raw_durable_transfer_hashes_writes_and_leaves_nothing_behind(tmp_path):
    pages = [b'{"blocks":[]}']
    blobs = [bytes(range(256)) * 4096, b"x" * 10]
    seconds, cpu = sync_bench.raw_transfer(
        pages, blobs, repeats=1, apart=tmp_path / "raw", durable=tmp_path / "written"
    )
    assert 0 < seconds < 30 and cpu >= 0
    assert not (tmp_path / "written").exists()


def test_sync_bench_offers_a_10m_parameter_model_where_bytes_dominate():
    spec = sync_bench.MODELS["10m"]
    widths = [spec.input_shape[0], *spec.hidden, spec.num_classes]
    params = sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))
    assert 9_900_000 < params < 10_100_000


def test_serve_bench_downloads_every_blob_from_the_node_route_and_the_bare_app():
    runs = serve_bench.run(blobs=2, mb=0.3, repeats=1, before=None)
    assert set(runs) == {"raw", "node"}
    for ((wall, client_cpu, server_cpu),) in runs.values():
        assert 0 < wall < 60 and client_cpu >= 0 and server_cpu >= 0


def test_raw_loopback_transfer_from_a_server_process_of_its_own_moves_every_byte(tmp_path):
    pages = [b'{"blocks":[]}' * 10, b"[]"]
    blobs = [bytes(range(256)) * 4096, b"x" * 10]
    seconds, cpu = sync_bench.raw_transfer(pages, blobs, repeats=1, apart=tmp_path / "raw")
    assert 0 < seconds < 30 and cpu >= 0
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [
        "blob-0",
        "blob-1",
        "page-0",
        "page-1",
    ]


def test_the_split_of_a_catch_up_is_read_from_the_nodes_own_log_line(tmp_path):
    import logging

    from bcfl_cli.node.logging import TextFormatter
    from bcfl_cli.node.sync import PassTimes

    times = PassTimes(blocks=16, pages=1, blobs=20, blob_bytes=90_122_080, verify_s=4.5)
    times.landed(times.started + 2.25)
    record = logging.LogRecord("bcfl.node.sync", logging.INFO, __file__, 1, "caught up", (), None)
    record.fields = times.fields()["fields"]
    log = tmp_path / "stdout-1.log"
    log.write_text(TextFormatter().format(record) + "\nnot a log line\n", encoding="utf-8")
    (entry,) = sync_bench.caught_up(log)
    assert (entry["blocks"], entry["blob_bytes"]) == ("16", "90122080")
    assert float(entry["transport_s"]) == 2.25 and float(entry["verify_s"]) == 4.5
    assert sync_bench.caught_up(None) == []


def test_bench_consortium_file_is_a_valid_genesis_file(tmp_path):
    names = ["member-01", "member-02", "member-03", "member-04", "spare-01"]
    # real Ed25519 public keys: did:key refuses 32 arbitrary bytes that are not a prime-order point
    keys = [nacl.signing.SigningKey(bytes([i + 1]) * 32).verify_key for i in range(len(names))]
    dids = [did_from_public_key(bytes(k)) for k in keys]
    genesis = common.genesis_plan(
        common.MLP_1M, common.PLAN, rounds=3, min_updates=4, deadline_blocks=50
    )
    founders = common.member_plans(4, 1, [None])
    assert [f.name for f in founders] == names
    text = consortium_toml(genesis, list(zip(founders, dids, strict=True)))
    path = tmp_path / "consortium.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.model == common.MLP_1M
    assert config.training.rounds == 3 and config.training.holdout_fraction == 0.0
    assert [m.power for m in config.members] == [1, 1, 1, 1, 0]
    assert math.isclose(config.training.lr, common.PLAN.lr)


def test_bench_consortium_over_tls_pins_every_founder_and_serves_https(tmp_path):
    genesis = common.genesis_plan(
        common.DIGITS_MLP, common.PLAN, rounds=1, min_updates=4, deadline_blocks=50, tls=True
    )
    assert genesis.tls == "pinned"
    with common.BenchConsortium(
        tmp_path, common.DIGITS_MLP, common.PLAN, 4, 1, tls=True
    ) as consortium:
        config = load_config(consortium.config_file)
        assert config.tls == "pinned"
        assert all(node.url.startswith("https://127.0.0.1:") for node in consortium.nodes)


@pytest.mark.slow
@pytest.mark.network
def test_bcfl_nodes_over_tls_close_a_round_for_the_flower_comparison():
    run = common.run_nodes(common.DIGITS_MLP, common.PLAN, 4, 1, quiet=True, tls=True)
    assert run.name == "bcfl, 4 nodes (BFT, TLS)"
    assert len(run.round_s) == 1 and 0.0 <= run.accuracy <= 1.0


@pytest.mark.slow
@pytest.mark.network
def test_ledger_overhead_through_real_nodes():
    report = ledger_overhead.run(1, [4], ["digits"], quiet=True)
    (row,) = report.rows
    assert row["nodes round s"] > 0 and row["x plain"] > 0
    assert 0.0 <= row["nodes acc"] <= 1.0


def test_round_times_come_from_the_node_log(tmp_path):
    # A block that closes round r and opens r + 1 logs the state after it: round r + 1 open.
    log = tmp_path / "node.log"
    block = "block=ab txs=22 source=consensus"
    log.write_text(
        "2026-11-30 10:00:00,000 INFO bcfl.node: node opened height=0\n"
        f"2026-11-30 10:00:01,000 INFO bcfl.node: committed height=1 {block} round=1 "
        "round_state=open accepted=0\n"
        "2026-11-30 10:00:01,100 WARNING bcfl.node.api: refused POST /v1/txs: 409 x\n"
        f"2026-11-30 10:00:01,750 INFO bcfl.node: committed height=2 {block} round=2 "
        "round_state=open accepted=0\n"
        f"2026-11-30 10:00:02,250 INFO bcfl.node: committed height=3 {block} round=2 "
        "round_state=closed accepted=4\n",
        encoding="utf-8",
    )
    opened, closed = common.rounds_from_log(log, 2)
    assert [round(c - opened, 3) for c in closed] == [0.75, 1.25]
    assert common.rounds_from_log(log, 3) is None  # round 3 never closed
    assert common.rounds_from_log(tmp_path / "missing.log", 1) is None


def test_model_proof_bench_on_a_short_chain():
    report = model_proof.run(30, ((4, 10),))
    (row,) = report.rows
    assert row["rounds"] == 3 and 0 < row["proof KB (gzip)"] < row["proof KB (plain)"]
    assert row["verify s"] > 0 and row["verify-chain s"] > 0


def test_simulate_bench_quick_runs_every_arm(capsys):
    assert simulate_bench.main(["--quick", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    arms = [row["arm"] for row in data["rows"]]
    assert arms == ["plain FedAvg (no ledger)", "bcfl simulate", "bcfl simulate --share-checks"]
    heads = {row["head"] for row in data["rows"][1:]}
    assert len(heads) == 1 and "" not in heads  # shared checks change no answer


def test_update_check_cpu_compares_the_full_check_with_the_summary():
    """bench/update_check_cpu.py at 1M parameters: both checks give the same verdict."""
    bench = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "update_check_cpu.py")
    done = subprocess.run(
        [sys.executable, bench, "--params", "1M", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    row = json.loads(done.stdout)
    assert row["verdicts equal"] is True and row["verdict"].startswith("L2 norm ")
    assert row["digests x 3 (before) s"] >= row["digests x 1 (after) s"] >= 0
    # "verdicts equal" also says that the split sum of squares gave the bins' integer
    assert row["squares, exponent bins (before) s"] >= 0 and row["squares, split (after) s"] >= 0


def test_the_raw_arms_read_bodies_straight_from_the_socket_or_through_httpx(tmp_path):
    """Since session 9 the raw arms read as the node's downloads do (a baseline at its best);
    the raw app says each blob's length, which that read needs; httpx's own transport stays
    an arm of its own."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette 1.x nudges towards httpx2 for its TestClient
        from starlette.testclient import TestClient

    blob = bytes(range(256)) * 8192
    with TestClient(sync_bench.raw_app([b"[]"], [blob])) as client:
        response = client.get("/blobs/0")
    assert response.headers["content-length"] == str(len(blob)) and response.content == blob
    for httpx_transport in (False, True):
        seconds, cpu = sync_bench.raw_transfer(
            [b"[]"],
            [blob],
            repeats=1,
            apart=tmp_path / f"raw-{httpx_transport}",
            httpx_transport=httpx_transport,
        )
        assert 0 < seconds < 30 and cpu >= 0
