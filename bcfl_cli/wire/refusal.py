"""The one shape of "no" on the wire: a request refused by a node, or one nobody answered.

A node answers a refusal as ``{"error": CODE, "message": ONE LINE}`` with an HTTP status; a
client raises it back as the same :class:`Refusal`, so both sides name a refusal by the same
stable ``code``. ``status`` 0 means no answer came at all (refused connection, timeouts, the
retries spent): ``kind`` tells the cases apart where a caller acts on them (a refusal says
something about the request and is not retried; an unreachable peer may be tried again).
"""

from __future__ import annotations

from typing import Literal

from bcfl_cli.errors import NodeError

#: The code of a request that got no answer.
UNREACHABLE = "unreachable"

RefusalKind = Literal["unreachable", "refused", "failed"]


class Refusal(NodeError):
    """A request that ended in no: ``status`` and ``code`` say how, ``message`` in one line.

    ``headers`` go with a refusal a node sends (``Retry-After`` with a 429); ``hint`` says
    what to do next, as every :class:`~bcfl_cli.errors.BcflError` may.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = UNREACHABLE,
        hint: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code
        self.headers = headers or {}

    @property
    def kind(self) -> RefusalKind:
        """``unreachable`` (no answer), ``refused`` (4xx: the request), ``failed`` (5xx)."""
        if self.status == 0:
            return "unreachable"
        return "refused" if self.status < 500 else "failed"

    @property
    def answered(self) -> bool:
        """Whether the peer answered at all (any HTTP status)."""
        return self.status != 0
