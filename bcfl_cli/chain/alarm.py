"""The safety alarm file: evidence of two certified blocks at one height, kept in the home.

A node that sees a second block with a valid commit certificate at a height it already holds
writes both blocks to ``HOME/node/alarm.json`` and stops following the chain; ``bcfl status``
reports the file even while the node is down, since an alarm is often why it is down. Written
and read here only, so the node and the status command cannot disagree on its shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bcfl_cli.errors import BcflError
from bcfl_cli.protocol.block import Block

ALARM_FILE = "alarm.json"


def alarm_document(height: int, ours: Block, theirs: Block, source: str, message: str) -> str:
    """The file's text: both blocks in full, so the evidence survives either store."""
    return json.dumps(
        {
            "height": height,
            "message": message,
            "source": source,
            "blocks": [ours.to_dict(), theirs.to_dict()],
        },
        indent=1,
    )


def read_alarm(path: Path) -> dict[str, Any] | None:
    """The recorded alarm (height, block hashes, message), None without a file.

    A file that cannot be read or parsed is still an alarm: its presence is the signal, and an
    operator must look at it before the node follows the chain again.
    """
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {
            "height": int(data["height"]),
            "blocks": [Block.from_dict(b).hash for b in data["blocks"]],
            "message": str(data["message"]),
        }
    except (OSError, ValueError, KeyError, TypeError, RecursionError, BcflError):
        return {"height": -1, "blocks": [], "message": f"unreadable alarm file {path}"}
