"""§8.6 Anchors: what the verified chain is checked against, from outside the store.

Steps 1-5 prove that the store is internally consistent: a chain that starts at *some* genesis
and where every block carries a quorum of *its own* validators' signatures. That alone holds
for a store whose last blocks were deleted (the prefix is still valid) and for a whole forged
consortium with the same member names (new keys, new genesis, every signature valid). An anchor
is a fact the verifier did not read from the store:

- ``--genesis HASH`` and the pin's ``genesis``: the chain is that consortium's;
- ``--trusted-head HEIGHT:HASH`` and the pin's ``height``/``head``: the store reaches at least
  that height and holds that block there, so it was not truncated below it nor rewritten.

Comparing with a peer (``--against URL``) needs the network and lives in
``bcfl_cli.node.compare``; its verdict joins the same report.
"""

from __future__ import annotations

from dataclasses import dataclass

from bcfl_cli.errors import UsageError, VerificationError
from bcfl_cli.protocol.encoding import is_hash_hex
from bcfl_cli.store.pin import Pin


@dataclass(frozen=True)
class TrustedHead:
    """A block the member knows from outside the store (``HEIGHT:HASH``)."""

    height: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> TrustedHead:
        height_text, sep, digest = text.strip().partition(":")
        digest = digest.lower()
        if (
            not sep
            or not height_text.isascii()
            or not height_text.isdigit()
            or len(height_text) > 18
            or not is_hash_hex(digest)
        ):
            raise UsageError(
                f"--trusted-head {text!r}: expected HEIGHT:HASH (a height and a 64-hex block hash)",
                hint="e.g. the height and head that `bcfl status` or `bcfl log` showed earlier",
            )
        return cls(int(height_text), digest)


@dataclass(frozen=True)
class Anchors:
    """What the member brings from outside the store; every one given must hold."""

    genesis: str | None = None  # --genesis
    trusted_head: TrustedHead | None = None  # --trusted-head
    pin: Pin | None = None  # HOME/pin.json

    def __post_init__(self) -> None:
        if self.genesis is not None and not is_hash_hex(self.genesis):
            raise UsageError(f"--genesis {self.genesis!r}: expected a 64-hex genesis hash")

    def heads(self) -> list[tuple[str, int, str]]:
        """(source, height, hash) of every head anchor."""
        out: list[tuple[str, int, str]] = []
        if self.trusted_head is not None:
            out.append(("--trusted-head", self.trusted_head.height, self.trusted_head.hash))
        if self.pin is not None and self.pin.height > 0:
            out.append(("pin", self.pin.height, self.pin.head))
        return out


def check_genesis(anchors: Anchors, genesis_hash: str) -> None:
    """The verified genesis is the one the member was given (``--genesis``) and pinned."""
    if anchors.genesis is not None and genesis_hash != anchors.genesis.lower():
        raise VerificationError(
            f"genesis: expected {anchors.genesis.lower()} (--genesis), found {genesis_hash}: "
            "this store holds another consortium",
            height=0,
            code="untrusted_genesis",
        )
    if anchors.pin is not None and genesis_hash != anchors.pin.genesis:
        raise VerificationError(
            f"genesis: expected {anchors.pin.genesis} (pinned in this home), found "
            f"{genesis_hash}: the store was replaced by another consortium's",
            height=0,
            code="unpinned_genesis",
        )


def check_head(source: str, height: int, digest: str, verified: int, found: str | None) -> None:
    """A head anchor against the verified chain: ``verified`` is its last valid height and
    ``found`` the verified hash at ``height`` (``None`` when the chain stops below it)."""
    what = "pinned in this home" if source == "pin" else source
    prefix = "pinned" if source == "pin" else "trusted"
    if found is None:
        raise VerificationError(
            f"the store ends at height {verified}, below block {height} ({what}): "
            "its last blocks were deleted, or it was replaced by an older copy",
            height=verified + 1,
            code=f"below_{prefix}_head",
        )
    if found != digest:
        raise VerificationError(
            f"block {height}: expected {digest} ({what}), found {found}: the chain was rewritten",
            height=height,
            code=f"{prefix}_head_mismatch",
        )
