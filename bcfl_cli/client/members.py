"""``bcfl members``: the member list from the chain, and a validator's approvals and removals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nacl.signing

from bcfl_cli.chain.state import ChainState, JoinRequest, Member
from bcfl_cli.client.api import DEFAULT_WAIT_S, NodeApi
from bcfl_cli.client.state import current_state
from bcfl_cli.errors import (
    NodeError,
    UsageError,
)
from bcfl_cli.home import Home
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.tx import Transaction, TxKind, make_tx


@dataclass(frozen=True)
class MemberRow:
    did: str
    name: str
    roles: list[str]
    power: int
    status: str
    since: int
    removal_approvals: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PendingRow:
    did: str
    name: str
    roles: list[str]
    power: int
    request: str
    approvals: list[str]
    expires_after: int  # the last height at which it can be approved


@dataclass(frozen=True)
class MembersView:
    height: int
    admission_approvals: int
    removal_approvals: int
    members: list[MemberRow]
    pending: list[PendingRow]

    def to_json(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "admission_approvals": self.admission_approvals,
            "removal_approvals": self.removal_approvals,
            "members": [vars(m) for m in self.members],
            "pending": [vars(p) for p in self.pending],
        }


def members_view(state: ChainState) -> MembersView:
    def row(m: Member) -> MemberRow:
        asked = sorted(state.name_of(d) for d in state.removals.get(m.did, frozenset()))
        return MemberRow(m.did, m.name, list(m.roles), m.power, m.status, m.since, asked)

    def pending(r: JoinRequest) -> PendingRow:
        approvals = sorted(state.name_of(d) for d in r.approvals)
        ttl = state.config.join_request_ttl_blocks
        return PendingRow(
            r.did, r.name, list(r.roles), r.power, r.tx, approvals, r.expires_after(ttl)
        )

    return MembersView(
        height=state.height,
        admission_approvals=state.config.admission_approvals,
        removal_approvals=state.config.removal_approvals,
        members=[row(m) for m in sorted(state.members.values(), key=lambda m: (m.since, m.name))],
        pending=[pending(r) for r in sorted(state.pending.values(), key=lambda r: r.name)],
    )


@dataclass(frozen=True)
class MemberChange:
    """An approve_member or remove_member sent, and (when waited for) what it did."""

    kind: str
    tx_hash: str
    did: str
    name: str
    committed: bool
    height: int | None
    effective: bool  # the admission/removal reached its threshold
    approvals: int
    needed: int


def _find_pending(state: ChainState, who: str) -> JoinRequest:
    for request in state.pending.values():
        if who in (request.did, request.name):
            return request
    member = next((m for m in state.members.values() if who in (m.did, m.name)), None)
    if member is not None:
        raise UsageError(f"{member.name} ({member.did}) is already a member ({member.status})")
    raise UsageError(
        f"no pending join request from {who} on this member's chain (height {state.height})",
        hint="the request may not be committed yet: `bcfl members list` shows pending requests",
    )


def _find_member(state: ChainState, who: str) -> Member:
    for member in state.members.values():
        if who in (member.did, member.name) and member.active:
            return member
    raise UsageError(f"{who} is not an active member", hint="`bcfl members list` shows them")


def approve_member(
    home: Home,
    key: nacl.signing.SigningKey,
    api: NodeApi,
    who: str,
    *,
    wait_s: float | None = DEFAULT_WAIT_S,
) -> MemberChange:
    """Sign and submit this validator's approval of ``who``'s pending join request."""
    state = current_state(home, api)
    request = _find_pending(state, who)
    if did_from_public_key(bytes(key.verify_key)) in request.approvals:
        raise UsageError(f"you already approved {request.name}")
    body = {"member": request.did, "request": request.tx}
    tx = make_tx(key, state.chain_id, TxKind.APPROVE_MEMBER, body)
    return _send_change(home, api, tx, request.did, request.name, wait_s, admission=True)


def remove_member(
    home: Home,
    key: nacl.signing.SigningKey,
    api: NodeApi,
    who: str,
    *,
    reason: str = "",
    wait_s: float | None = DEFAULT_WAIT_S,
) -> MemberChange:
    """Sign and submit this validator's request to remove ``who``."""
    state = current_state(home, api)
    member = _find_member(state, who)
    if did_from_public_key(bytes(key.verify_key)) in state.removals.get(member.did, frozenset()):
        raise UsageError(f"you already asked to remove {member.name}")
    tx = make_tx(
        key, state.chain_id, TxKind.REMOVE_MEMBER, {"member": member.did, "reason": reason}
    )
    return _send_change(home, api, tx, member.did, member.name, wait_s, admission=False)


def _send_change(
    home: Home,
    api: NodeApi,
    tx: Transaction,
    did: str,
    name: str,
    wait_s: float | None,
    *,
    admission: bool,
) -> MemberChange:
    api.submit_tx(tx)
    kind = str(tx.kind)
    if wait_s is None:
        return MemberChange(kind, tx.hash, did, name, False, None, False, 0, 0)
    status = api.wait_for_tx(tx.hash, wait_s)
    if status.status == "rejected":
        raise NodeError(f"the node dropped the {kind}: {status.reason or 'no reason given'}")
    state = current_state(home, api, at_least=status.height or 0)
    config = state.config
    if admission:
        needed = config.admission_approvals
        request = state.pending.get(did)
        effective = request is None and did in state.members
        approvals = needed if effective else len(request.approvals if request else ())
    else:
        needed = config.removal_approvals
        member = state.member(did)
        effective = member is not None and not member.active
        approvals = needed if effective else len(state.removals.get(did, frozenset()))
    return MemberChange(kind, tx.hash, did, name, True, status.height, effective, approvals, needed)
