"""bench/large_timeline.py: a round's stages from the nodes' own log lines."""

# ruff: noqa: E501  (log lines as the nodes write them)
from __future__ import annotations

from pathlib import Path

from bench.large_timeline import timeline

TRAINER = """\
2026-12-05 10:00:00,000 INFO bcfl.node.trainer: round 1: training
2026-12-05 10:00:12,000 INFO bcfl.node.trainer: round 1: update written into the blob store in 2.00 s
2026-12-05 10:00:12,100 INFO bcfl.node.trainer: round 1: trained and stored in 12.10 s; pushing
2026-12-05 10:00:17,100 INFO bcfl.node.trainer: round 1: pushed in 5.00 s
2026-12-05 10:00:17,100 INFO bcfl.node.trainer: round 1: submitted update abcd
"""
VALIDATOR = """\
2026-12-05 10:00:16,000 INFO bcfl.node: blob uploaded blob=ab size=4 hashed_again=False by=x
2026-12-05 10:00:19,100 INFO bcfl.node: update checked update=ab accept=True reason=ok seconds=2.0
2026-12-05 10:00:22,100 INFO bcfl.node: aggregate prepared round=1 model=cd updates=1 seconds=3.0
2026-12-05 10:00:22,200 INFO bcfl.node: committed height=9 block=e txs=1 source=consensus round=1 round_state=closed accepted=1
2026-12-05 10:00:22,300 INFO bcfl.node: committed height=10 block=f txs=0 source=consensus round=1 round_state=closed accepted=1
"""


def test_stages_start_and_end_from_the_first_training_line(tmp_path: Path) -> None:
    (tmp_path / "member-01.log").write_text(TRAINER)
    (tmp_path / "member-02.log").write_text(VALIDATOR)
    rows = {row["stage"]: row for row in timeline(tmp_path)}
    assert rows["update written"]["first start s"] == 10.0
    assert rows["pushed to every peer"]["longest s"] == 5.0
    assert rows["update checked (contract)"]["first start s"] == 17.1
    assert rows["aggregate recomputed"]["last end s"] == 22.1
    closed = rows["round closed (commit)"]
    assert (closed["lines"], closed["last end s"]) == (1, 22.2)  # the first closing commit only
