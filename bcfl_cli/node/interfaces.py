"""What the node's services ask of each other: one ``Protocol`` per need, nothing more.

The node is a handful of services (``node.py`` wires them; CometBFT's ``node/setup.go`` is the
model): the chain it follows (``local_chain.LocalChain``), the mempool
(``mempool.MempoolService``), blob fetching (``blob_service.BlobService``), block sync
(``sync.Syncer``), round preparation (``round_preparation.RoundPreparation``), the consensus
reactor (``consensus_driver.ConsensusDriver``), peer gossip (``peers.Peers``) and the HTTP app
(``app.create_app``). Each is built from the interfaces below, never from the node, so that a
test builds one service from small fakes and no module of ``node/`` imports the wiring.

Services signal each other through the chain's commit notifications (``ChainView.on_commit``)
and plain callbacks that set an ``asyncio.Event`` (``wake``, ``poke``); none waits on another.
Only the services that sign hold the key: the consensus reactor (proposals, votes, evidence)
and the round preparation (validation transactions of planned blocks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import nacl.signing

from bcfl_cli.chain.checks import VerdictLike
from bcfl_cli.chain.state import ChainState, Offence
from bcfl_cli.client.transport import SignedClient
from bcfl_cli.consensus.messages import EngineState, Proposal
from bcfl_cli.node.peers import PeerInfo
from bcfl_cli.protocol.block import Block, ValidatorSet, Vote
from bcfl_cli.protocol.tx import Transaction
from bcfl_cli.store.blobs import BlobStore

T = TypeVar("T")

#: A commit notification: called with each appended block, once the chain's state is after it.
BlockListener = Callable[[Block], None]


class ChainView(Protocol):
    """The chain as this node holds it: read-only, at the head or at a height.

    The seam where ``chain.chain.Chain`` (issue 17, item 1) slots in: replaying the home, the
    validator set and head hash at a height, the safety alarm, commit notifications.
    """

    @property
    def genesis_hash(self) -> str: ...

    @property
    def state(self) -> ChainState: ...

    @property
    def head(self) -> Block: ...

    @property
    def alarm(self) -> dict[str, Any] | None: ...

    @property
    def on_commit(self) -> list[BlockListener]: ...

    def block(self, height: int) -> Block: ...

    def head_hash_at(self, height: int) -> str | None: ...

    def validator_set_at(self, height: int) -> ValidatorSet | None: ...

    async def wait_for_round(self, number: int, timeout_s: float) -> bool: ...


class CommittingChain(ChainView, Protocol):
    """The chain for the two services that append to it: consensus and block sync."""

    def accept_block(self, block: Block, new_state: ChainState, *, source: str) -> None: ...

    def accept_blocks(
        self, decided: Sequence[tuple[Block, ChainState]], *, source: str
    ) -> None: ...

    def raise_alarm(self, height: int, ours: Block, theirs: Block, *, source: str) -> None: ...


class TxPool(Protocol):
    """The mempool as the services that read it and feed it see it."""

    def submit(self, tx: Transaction, *, seen: frozenset[str] = ...) -> bool: ...

    def snapshot(self) -> list[Transaction]: ...

    def drop(self, tx_hash: str, code: str) -> None: ...

    def has_evidence(self, offence: Offence) -> bool: ...


class MempoolView(TxPool, Protocol):
    """The mempool as the HTTP app sees it: where a transaction stands, how many wait."""

    def __len__(self) -> int: ...

    def __contains__(self, tx_hash: object) -> bool: ...

    def get(self, tx_hash: str) -> Transaction | None: ...

    def rejected_reason(self, tx_hash: str) -> str | None: ...


class BlobIndex(Protocol):
    """Which blobs this node holds."""

    def has(self, digest: str) -> bool: ...

    def size(self, digest: str) -> int: ...


class BlobFetcher(Protocol):
    """Blobs fetched from peers, the likely holders first."""

    async def ensure_blobs(
        self,
        digests: list[str],
        *,
        timeout_s: float = ...,
        prefer: Mapping[str, str | tuple[str, ...]] | None = None,
    ) -> bool: ...


class Gossip(Protocol):
    """The peers as far as pushing and pulling messages goes (``peers.Peers``)."""

    def live(self) -> list[PeerInfo]: ...

    def broadcast(self, path: str, payload: Any, *, seen: frozenset[str] | None = None) -> None: ...

    async def get(self, peer: PeerInfo, path: str, **kw: Any) -> Any: ...


class BlobPeers(Protocol):
    """The node's peers, as far as moving a blob goes (``peers.Peers``)."""

    def live(self) -> list[Any]: ...

    def blob_client(
        self, peer: Any, *, download: bool = False, timeout_s: float | None = None
    ) -> SignedClient: ...


class PeerBook(Protocol):
    """The peers as the HTTP app sees them: listed in the status, learnt from signed pushes."""

    def __iter__(self) -> Iterator[PeerInfo]: ...

    def knows(self, did: str) -> bool: ...

    def learn(self, url: str, did: str, genesis: str) -> None: ...


class Worker(Protocol):
    """The node's one thread for CPU-heavy checks, so the event loop never computes."""

    async def run(self, fn: Callable[[], T]) -> T: ...


class PreparedRound(Protocol):
    """What the consensus reactor asks of the round preparation before it proposes."""

    #: verdicts, or the aggregate they complete, are being computed now
    computing: bool

    def verdict_of(self, tx: Transaction) -> VerdictLike | None: ...

    def aggregate_of(self, state: ChainState) -> tuple[str, int] | None: ...

    def has_work(self, height: int) -> bool: ...

    def has_content(self, height: int) -> bool: ...

    def needs_heartbeat(self) -> bool: ...

    def updates_still_arriving(self) -> int | None: ...


class SyncSignals(Protocol):
    """What the consensus reactor tells block sync."""

    def behind(self) -> None: ...

    def wake(self) -> None: ...

    def note_consensus_commit(self) -> None: ...


class VoteRecord(Protocol):
    """The vote guard (``store.vote_guard``): what the reactor signed, recorded before it is
    signed, and the engine's lock to restore after a restart."""

    def state(self, chain: str) -> EngineState | None: ...

    def votes_at(self, chain: str, height: int, validator: str) -> list[Vote]: ...

    def sign_vote(self, vote: Vote, key: nacl.signing.SigningKey, state: EngineState) -> Vote: ...

    def sign_proposal(
        self, proposal: Proposal, key: nacl.signing.SigningKey, state: EngineState
    ) -> Proposal: ...


class ConsensusReactor(Protocol):
    """The consensus reactor as the HTTP app sees it: messages in, the pull log and progress
    out."""

    def on_message(self, proposal: Proposal | None, vote: Vote | None) -> None: ...

    def messages_at(self, height: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]: ...

    def progress(self) -> dict[str, Any]: ...


class TrainerHost(Protocol):
    """What the trainer of ``bcfl node --train`` needs of the node it runs in."""

    @property
    def key(self) -> nacl.signing.SigningKey: ...

    @property
    def state(self) -> ChainState: ...

    @property
    def blobs(self) -> BlobStore: ...

    @property
    def peers(self) -> BlobPeers: ...

    @property
    def on_commit(self) -> list[BlockListener]: ...

    def submit(self, tx: Transaction, *, seen: frozenset[str] = ...) -> bool: ...


__all__ = [
    "BlobFetcher",
    "BlobIndex",
    "BlobPeers",
    "BlockListener",
    "ChainView",
    "CommittingChain",
    "ConsensusReactor",
    "Gossip",
    "MempoolView",
    "PeerBook",
    "PreparedRound",
    "SyncSignals",
    "TrainerHost",
    "TxPool",
    "VoteRecord",
    "Worker",
]
