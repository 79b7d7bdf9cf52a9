"""The deployment arm's ServerApp and ClientApp: module-level, as Flower's deployment engine
loads them by reference, and thin, as the job itself lives in bench/flower_job.py (shared with
the simulation arm). The run config says where to write the result and the cache counters."""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from bench.flower_job import serve, train_reply

client_app = ClientApp()
server_app = ServerApp()


@client_app.train()  # type: ignore[misc]
def train(msg: Message, context: Context) -> Message:
    config = context.run_config
    return train_reply(
        msg,
        context,
        int(config["members"]),
        int(config["seed"]),
        Path(str(config["counters"])),
    )


@server_app.main()  # type: ignore[misc]
def main(grid: Grid, context: Context) -> None:
    from bcfl_cli.fl.training import evaluate
    from bench.common import DIGITS_MLP, load_test

    config = context.run_config
    stamps, state = serve(grid, int(config["members"]), int(config["rounds"]))
    done = time.time()
    accuracy = evaluate(DIGITS_MLP, state, load_test())[1]
    out = Path(str(config["out"]))
    partial = out.with_suffix(".tmp")
    partial.write_text(json.dumps({"stamps": stamps, "done": done, "accuracy": accuracy}))
    partial.replace(out)
