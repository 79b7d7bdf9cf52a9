"""Structured logs: one JSON object a line (``--log-json``) or a short human line.

Every refusal, commit and alarm goes through the standard ``logging`` module under the
``bcfl`` logger; extra fields passed with ``extra={"fields": {...}}`` become JSON keys, so an
operator can filter on ``height`` or ``peer`` without parsing prose.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if k not in entry})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text


def setup_logging(
    *, json_lines: bool, log_file: Path | None = None, level: int = logging.INFO
) -> None:
    """Send ``bcfl`` and uvicorn logs to stderr (and ``log_file``) in one format."""
    formatter: logging.Formatter = JsonFormatter() if json_lines else TextFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
    for name in ("bcfl", "uvicorn", "uvicorn.error", "asyncio"):
        logger = logging.getLogger(name)
        logger.handlers = list(handlers)
        logger.setLevel(level)
        logger.propagate = False
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    access.setLevel(logging.WARNING)


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` argument carrying structured fields: ``log.info("...", extra=fields(h=1))``."""
    return {"fields": values}


def resident_mb() -> int | None:
    """This process's resident memory in MiB (Linux ``VmRSS``); None where it cannot be read.

    Logged when the node starts listening: by then a trainer has paid torch's one-time start
    (``warm_up``), so an operator sizing a machine reads the idle size of the node as run.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
