"""bench/regression_pair.py: each tree runs its own copy of the command, alternating; medians."""

from __future__ import annotations

import json

import bench.regression_pair as regression_pair

FAKE_BENCH = """
import json, os, pathlib, sys
tree = pathlib.Path.cwd()
log = pathlib.Path(sys.argv[1])
log.write_text(log.read_text() + tree.name + " " + os.environ["PYTHONPATH"] + "\\n")
print(json.dumps({"rows": [{"arm": "x (1 of 20 rounds in time)", "round s (median)": SECONDS}]}))
"""


def test_runs_both_trees_alternating_and_prints_medians(tmp_path, capsys):
    log = tmp_path / "order.log"
    log.write_text("")
    trees = {}
    for name, seconds in (("before", 2.0), ("after", 1.0)):
        tree = tmp_path / name
        tree.mkdir()
        (tree / "fake.py").write_text(FAKE_BENCH.replace("SECONDS", str(seconds)))
        trees[name] = tree
    out = tmp_path / "runs.json"
    argv = ["--before", str(trees["before"]), "--after", str(trees["after"]), "--pairs", "3"]
    argv += ["--first", "after", "--out", str(out), "--", "fake.py", str(log)]
    assert regression_pair.main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    order = [line.split() for line in log.read_text().splitlines()]
    assert [name for name, _ in order] == ["after", "before", "before", "after", "after", "before"]
    assert all(path == str(trees[name]) for name, path in order)  # each tree's own code
    summary = document["summary"]
    assert summary["before"]["arms"]["x"]["round s (median)"]["median"] == 2.0
    assert summary["after"]["arms"]["x"]["round s (median)"]["values"] == [1.0, 1.0, 1.0]
    assert len(summary["after"]["loads_at_start"]) == 3
    assert len(json.loads(out.read_text())["runs"]["before"]) == 3


def test_rows_without_an_arm_are_named_by_their_first_column(tmp_path, capsys):
    """large_model.py's rows start with ``params``: no KeyError, and the runs are on disk."""
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "fake.py").write_text(
        "import json\nprint(json.dumps({'rows': [{'params': '110M', 'round s': 3.0}]}))\n"
    )
    out = tmp_path / "runs.json"
    argv = ["--before", str(tree), "--after", str(tree), "--pairs", "1", "--field", "round s"]
    assert regression_pair.main([*argv, "--out", str(out), "--", "fake.py"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["after"]["arms"]["110M"]["round s"]["median"] == 3.0
    assert len(json.loads(out.read_text())["runs"]["after"]) == 1
