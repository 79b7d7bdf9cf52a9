"""The chain explorer: a read-only web page each node serves under ``/explorer/``.

``index.py`` folds committed blocks into per-round summaries (the updates, their verdicts and
reasons, what each aggregate included, the mean reported accuracy); ``routes.py`` serves the
page, its two static files, the read routes the page needs and the "verify this model" proof
download; ``static/`` holds the page itself (HTML, one script, one style sheet), shipped in the
wheel as package data so that nothing is loaded from anywhere but the node.
"""

from bcfl_cli.node.explorer.index import RoundIndex, RoundSummary, UpdateSummary
from bcfl_cli.node.explorer.routes import Explorer

__all__ = ["Explorer", "RoundIndex", "RoundSummary", "UpdateSummary"]
