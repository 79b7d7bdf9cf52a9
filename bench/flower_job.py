"""The one Flower job both Flower arms run: the ClientApp's training reply and the ServerApp's
FedAvg loop, shared by the simulation arm (bench/flower_compare.py) and the deployment arm
(bench/flower_app, started by bench/flower_deploy.py), so the two arms differ only in engine.

Imported only inside Flower's processes (the Ray actors, ``flwr-clientapp``, ``flwr-serverapp``):
it needs flwr, which the bench's own Python may lack.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from bcfl_cli.fl.models import initial_state
from bcfl_cli.fl.training import train_local
from bench.common import DIGITS_MLP, PLAN, round_seed


def train_reply(msg: Message, context: Context, members: int, seed: int, counters: Path) -> Message:
    """One member's local epoch on its partition (``partition-id`` in the node config), the
    partitions read through the per-process cache and the cache counted in ``counters``."""
    # Reach the cache through the imported module, whose globals live as long as the process
    # (a ClientApp closure is rebuilt for every message, so a dict it captures keeps nothing).
    import bench.flower_compare as bench_module

    started = time.time()
    torch.set_num_threads(1)
    data = bench_module.cached_members(members)
    bench_module.record_training(counters, started)
    pid = int(context.node_config["partition-id"])
    state = msg.content["arrays"].to_torch_state_dict()
    server_round = int(msg.content["config"]["server-round"])
    result = train_local(
        DIGITS_MLP, PLAN, state, data[pid], seed=round_seed(seed, pid, server_round)
    )
    new = {k: (state[k] + result.delta[k]).contiguous() for k in state}
    content = RecordDict(
        {
            "arrays": ArrayRecord(new),
            "metrics": MetricRecord({"num-examples": result.num_samples}),
        }
    )
    return Message(content=content, reply_to=msg)


def serve(grid: Grid, members: int, rounds: int) -> tuple[list[float], dict[str, Any]]:
    """FedAvg over all ``members`` for ``rounds`` rounds, no client evaluation; returns the wall
    clock of each server-side evaluate call (the initial model's, then one per round) and the
    final state dict."""
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=members,
        min_available_nodes=members,
    )
    stamps: list[float] = []

    def stamp(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        stamps.append(time.time())
        return None

    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial_state(DIGITS_MLP)),
        num_rounds=rounds,
        evaluate_fn=stamp,
    )
    return stamps, result.arrays.to_torch_state_dict()
