"""Pending transactions: bounded, deduplicated, and pre-checked so junk never waits here.

A transaction enters only if it is well formed, correctly signed, meant for this chain, not
already on it, and passes the rules that can be judged alone against the current chain state
(membership, roles, round number and base model, pending admissions). The full rules run again
when a proposer puts it in a block (``ChainState.apply``), so the pre-check may be lenient but
never admits what a block could not hold. The pool is bounded in count, bytes and per author,
and forgets transactions once they are committed or can no longer apply. Join requests come
from strangers, each with a fresh key (so the per-author bound does not hold them): the pool
keeps no more of them than the chain has room for (``max_pending_joins`` less those pending on
chain) and at most ``DEFAULT_MAX_JOINS``, so a flood of them never crowds out the members'
transactions; and one per applicant and per name, since a block can hold only one of each and
every one a proposer has to leave out costs it another apply of the whole block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bcfl_cli.chain.state import ChainState, Offence, offence_of
from bcfl_cli.node.clock import Clock
from bcfl_cli.node.interfaces import ChainView, Gossip
from bcfl_cli.node.limits import JOIN_RELAY_BURST, JOIN_RELAY_RATE_PER_S, TokenBucketLimiter
from bcfl_cli.node.local_chain import member_role
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.tx import MAX_TX_BYTES, Transaction, TxKind
from bcfl_cli.wire.refusal import Refusal

DEFAULT_MAX_TXS = 5_000
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_PER_AUTHOR = 32
#: Join requests held at once (each also needs room on chain: ``max_pending_joins``).
DEFAULT_MAX_JOINS = 500
REJECTED_MEMORY = 10_000

#: Kinds only a block's proposer writes, while building the block: never accepted from outside.
PROPOSER_ONLY = frozenset({TxKind.OPEN_ROUND, TxKind.VALIDATION, TxKind.AGGREGATE})


#: A transaction the pool will not hold: ``code`` is stable, ``status`` the HTTP answer. The one
#: refusal type of the wire, under the name the node's services catch.


@dataclass(frozen=True)
class Pending:
    tx: Transaction
    size: int
    received_ms: int


def precheck(state: ChainState, tx: Transaction, *, verify_signature: bool = True) -> None:
    """The rules ``tx`` must pass alone against ``state``; Refusal names the first broken."""
    if tx.chain != state.chain_id:
        raise Refusal(
            f"transaction is for chain {tx.chain[:16]}, this is {state.chain_id[:16]}",
            status=422,
            code="wrong_chain",
        )
    if tx.hash in state.seen_tx:
        raise Refusal("transaction is already on the chain", code="already_committed", status=409)
    if verify_signature and not tx.signature_valid():
        raise Refusal(
            f"transaction signature does not verify for {tx.author}",
            status=422,
            code="bad_tx_signature",
        )
    if tx.kind in PROPOSER_ONLY:
        raise Refusal(
            f"{tx.kind} transactions are written by a block's proposer only",
            status=422,
            code="proposer_only",
        )
    member = state.member(tx.author)
    body = tx.body
    if tx.kind is TxKind.JOIN_REQUEST:
        if member is not None:
            raise Refusal(
                f"{tx.author} is already a member ({member.status})",
                status=422,
                code="already_member",
            )
        if tx.author in state.pending:
            raise Refusal(
                f"{tx.author} already has a pending request", status=422, code="request_pending"
            )
        if state.name_taken(body["name"]):
            raise Refusal(f"member name {body['name']!r} is taken", status=422, code="name_taken")
        if state.joins_full:
            raise _joins_full(state.config.max_pending_joins)
        return
    if member is None or not member.active:
        raise Refusal(f"author {tx.author} is not an active member", code="not_member", status=403)
    validator_kinds = (
        TxKind.APPROVE_MEMBER,
        TxKind.REMOVE_MEMBER,
        TxKind.MISBEHAVIOUR,
        TxKind.TLS_MODE,
    )
    if tx.kind in validator_kinds and not member.is_validator:
        raise Refusal(f"{tx.kind} needs a validator", code="not_validator", status=403)
    if tx.kind is TxKind.APPROVE_MEMBER:
        request = state.pending.get(body["member"])
        expired = state.expired_requests.get(body["member"])
        if request is None and expired is not None and expired.tx == body["request"]:
            raise Refusal(
                f"the join request of {body['member']} expired unapproved at height "
                f"{expired.expired_at}; the applicant must send a new one",
                status=422,
                code="request_expired",
            )
        if request is None or request.tx != body["request"]:
            raise Refusal(
                f"{body['member']} has no pending request {body['request'][:16]}",
                status=422,
                code="no_pending_request",
            )
        if tx.author in request.approvals:
            raise Refusal(
                "you already approved this request", status=422, code="duplicate_approval"
            )
    elif tx.kind is TxKind.REMOVE_MEMBER:
        subject = state.member(body["member"])
        if subject is None or not subject.active:
            raise Refusal(
                f"{body['member']} is not an active member", status=422, code="not_active_member"
            )
    elif tx.kind is TxKind.UPDATE:
        _precheck_update(state, tx)
    elif tx.kind is TxKind.TLS_MODE:
        if body["mode"] == state.tls_mode:
            raise Refusal(
                f"the consortium's mode is {body['mode']}", code="tls_mode_unchanged", status=422
            )
        if tx.author in state.tls_votes.get(body["mode"], frozenset()):
            raise Refusal(
                f"you already asked for {body['mode']}", code="duplicate_approval", status=422
            )
    elif tx.kind is TxKind.TLS_CERTIFICATE:
        if state.tls_mode != "pinned":
            raise Refusal(
                "the consortium does not pin certificates", code="tls_not_pinned", status=422
            )
        if state.tls_pinned_by(body["fingerprint"]) is not None:
            raise Refusal("this certificate is pinned already", code="tls_pin_taken", status=409)
    elif tx.kind is TxKind.MISBEHAVIOUR and offence_of(body) in state.offences:
        raise Refusal(
            "this equivocation is already recorded on chain", code="duplicate_evidence", status=409
        )


def _joins_full(cap: int) -> Refusal:
    return Refusal(
        f"the consortium holds at most {cap} pending join requests and has no room now; "
        "ask again once one is approved or expires",
        code="join_requests_full",
        status=503,
    )


def _precheck_update(state: ChainState, tx: Transaction) -> None:
    member = state.member(tx.author)
    if member is None or not member.is_trainer:
        raise Refusal(f"{tx.author} is not an active trainer", code="not_trainer", status=403)
    rnd = state.round
    body = tx.body
    if state.plan_finished:
        raise Refusal(
            f"the training plan is finished ({state.config.training.rounds} rounds); "
            "no round will open for this update",
            status=422,
            code="training_finished",
        )
    if not rnd.open or body["round"] != rnd.number:
        current = f"round {rnd.number} is {rnd.state}"
        raise Refusal(
            f"update for round {body['round']}, but {current}; train on the open round",
            status=422,
            code="wrong_round",
        )
    if body["base_model"] != rnd.base_model:
        raise Refusal(
            f"update trained on {body['base_model'][:16]}, round base is "
            f"{rnd.base_model[:16]}; fetch the round's model and train again",
            status=422,
            code="wrong_base_model",
        )
    if tx.author in rnd.submitted:
        raise Refusal("you already sent an update this round", code="duplicate_update", status=409)
    limit = state.config.contract.max_blob_bytes
    if body["blob_size"] > limit:
        raise Refusal(
            f"update blob of {body['blob_size']} bytes is over the limit {limit}",
            status=422,
            code="blob_too_large",
        )


class Mempool:
    """Pending transactions in arrival order; every operation is O(1) or O(pool size)."""

    def __init__(
        self,
        *,
        max_txs: int = DEFAULT_MAX_TXS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        per_author: int = DEFAULT_PER_AUTHOR,
        max_joins: int = DEFAULT_MAX_JOINS,
    ) -> None:
        self.max_txs = max_txs
        self.max_bytes = max_bytes
        self.per_author = per_author
        self.max_joins = max_joins
        self._txs: OrderedDict[str, Pending] = OrderedDict()
        self._bytes = 0
        self._join_authors: set[str] = set()  # applicants with a join request held
        self._join_names: set[str] = set()  # the names those requests ask for
        self._by_author: dict[str, int] = {}
        self._rejected: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tx_hash: object) -> bool:
        return tx_hash in self._txs

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, tx_hash: str) -> Transaction | None:
        pending = self._txs.get(tx_hash)
        return pending.tx if pending else None

    def has_evidence(self, offence: Offence) -> bool:
        """Whether a pending ``misbehaviour`` transaction is about ``offence``."""
        return any(
            p.tx.kind is TxKind.MISBEHAVIOUR and offence_of(p.tx.body) == offence
            for p in self._txs.values()
        )

    def rejected_reason(self, tx_hash: str) -> str | None:
        return self._rejected.get(tx_hash)

    def snapshot(self) -> list[Transaction]:
        return [p.tx for p in self._txs.values()]

    def add(self, tx: Transaction, state: ChainState, *, now_ms: int) -> bool:
        """Admit ``tx``; False if already pending, Refusal if it cannot be held."""
        digest = tx.hash
        if digest in self._txs:
            return False
        size = tx.digest()[1]  # the canonical signed form's length
        if size > MAX_TX_BYTES:
            raise Refusal(
                f"transaction of {size} bytes, limit {MAX_TX_BYTES}",
                code="tx_too_large",
                status=413,
            )
        try:
            precheck(state, tx)
        except Refusal as refusal:
            if refusal.code != "already_committed":
                self._remember_rejected(digest, refusal.code)
            raise
        if tx.kind is TxKind.UPDATE and any(
            p.tx.kind is TxKind.UPDATE and p.tx.author == tx.author for p in self._txs.values()
        ):
            raise Refusal(
                "an update of yours is already pending", code="duplicate_update", status=409
            )
        if tx.kind is TxKind.MISBEHAVIOUR:
            offence = offence_of(tx.body)
            if offence is not None and self.has_evidence(offence):
                raise Refusal(
                    "evidence of this equivocation is already pending",
                    code="duplicate_evidence",
                    status=409,
                )
        if self._by_author.get(tx.author, 0) >= self.per_author:
            raise Refusal(
                f"{self.per_author} transactions of yours are pending; wait for them to commit",
                code="too_many_pending",
                status=429,
            )
        if len(self._txs) >= self.max_txs or self._bytes + size > self.max_bytes:
            raise Refusal(
                "this node's pending transactions are at their limit; retry later",
                code="mempool_full",
                status=503,
            )
        if tx.kind is TxKind.JOIN_REQUEST:
            if tx.author in self._join_authors:
                raise Refusal(
                    "a join request of yours is already pending", code="request_pending", status=409
                )
            if tx.body["name"] in self._join_names:
                raise Refusal(
                    f"member name {tx.body['name']!r} is asked for by a pending join request",
                    code="name_taken",
                    status=409,
                )
            room = state.config.max_pending_joins - len(state.pending)
            if len(self._join_authors) >= min(room, self.max_joins):
                raise _joins_full(state.config.max_pending_joins)
            self._join_authors.add(tx.author)
            self._join_names.add(tx.body["name"])
        self._txs[digest] = Pending(tx, size, now_ms)
        self._bytes += size
        self._by_author[tx.author] = self._by_author.get(tx.author, 0) + 1
        self._rejected.pop(digest, None)
        return True

    def remove(self, hashes: Iterable[str]) -> None:
        for digest in hashes:
            pending = self._txs.pop(digest, None)
            if pending is None:
                continue
            self._bytes -= pending.size
            if pending.tx.kind is TxKind.JOIN_REQUEST:
                self._join_authors.discard(pending.tx.author)
                self._join_names.discard(pending.tx.body["name"])
            left = self._by_author.get(pending.tx.author, 1) - 1
            if left:
                self._by_author[pending.tx.author] = left
            else:
                self._by_author.pop(pending.tx.author, None)

    def prune(self, state: ChainState) -> list[tuple[str, str]]:
        """Drop what ``state`` (after a commit) makes committed or inapplicable; (hash, code)."""
        dropped: list[tuple[str, str]] = []
        for digest, pending in list(self._txs.items()):
            try:
                precheck(state, pending.tx, verify_signature=False)
            except Refusal as refusal:
                dropped.append((digest, refusal.code))
        self.remove(d for d, _ in dropped)
        for digest, code in dropped:
            if code != "already_committed":
                self._remember_rejected(digest, code)
        return dropped

    def drop(self, digest: str, code: str) -> None:
        """Remove a transaction a proposal had to leave out, remembering why."""
        self.remove([digest])
        self._remember_rejected(digest, code)

    def _remember_rejected(self, digest: str, code: str) -> None:
        self._rejected[digest] = code
        self._rejected.move_to_end(digest)
        while len(self._rejected) > REJECTED_MEMORY:
            self._rejected.popitem(last=False)


class MempoolService:
    """The mempool as a service (implements ``interfaces.TxPool``): admission against the
    chain's state, gossip of what is new, pruning on each commit notification, and a signal
    (``on_added``) to the services that build blocks from it."""

    def __init__(
        self, pool: Mempool, chain: ChainView, gossip: Gossip, *, did: str, clock: Clock
    ) -> None:
        self.pool = pool
        self.chain = chain
        self.gossip = gossip
        self.did = did
        self.clock = clock
        #: called after each new transaction (the round preparation, the consensus reactor)
        self.on_added: list[Callable[[], None]] = []
        self._join_relay = TokenBucketLimiter(JOIN_RELAY_RATE_PER_S, JOIN_RELAY_BURST, max_keys=1)

    def __len__(self) -> int:
        return len(self.pool)

    def __contains__(self, tx_hash: object) -> bool:
        return tx_hash in self.pool

    def get(self, tx_hash: str) -> Transaction | None:
        return self.pool.get(tx_hash)

    def rejected_reason(self, tx_hash: str) -> str | None:
        return self.pool.rejected_reason(tx_hash)

    def snapshot(self) -> list[Transaction]:
        return self.pool.snapshot()

    def has_evidence(self, offence: Offence) -> bool:
        return self.pool.has_evidence(offence)

    def drop(self, tx_hash: str, code: str) -> None:
        self.pool.drop(tx_hash, code)

    def submit(self, tx: Transaction, *, seen: frozenset[str] = frozenset()) -> bool:
        """Into the pool (Refusal if it cannot be held); gossiped when new.

        ``seen``: tags (``peers.did_tag``) of members that hold it already, who are skipped.
        """
        relay = True
        state = self.chain.state
        if tx.kind is TxKind.JOIN_REQUEST and tx.hash not in self.pool:
            # strangers' join requests are relayed within a node-wide budget (limits.py); past
            # it a validator keeps the request to propose it, another node would only hold it
            relay = not self._join_relay.acquire("join")
            if not relay and member_role(state, self.did) != "validator":
                raise Refusal(
                    "this node relays join requests at a bounded rate and is busy; retry in a "
                    "few seconds, or send the request to a validator's node",
                    code="join_relay_busy",
                    status=503,
                )
        added = self.pool.add(tx, state, now_ms=self.clock.now_ms())
        if added:
            if relay:
                self.gossip.broadcast("/v1/txs", {"tx": tx.to_dict()}, seen=seen)
            for listener in self.on_added:
                listener()
        return added

    def on_commit(self, block: Block) -> None:
        """A commit notification: forget the block's transactions and what it made stale."""
        self.pool.remove(tx.hash for tx in block.txs)
        self.pool.prune(self.chain.state)
