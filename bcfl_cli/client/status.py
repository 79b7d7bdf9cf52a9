"""``bcfl status``: what the node says, or this home's own ledger when the node is down."""

from __future__ import annotations

from typing import Any

from bcfl_cli.chain.chain import Chain
from bcfl_cli.client.api import NodeApi
from bcfl_cli.home import Home


def node_status(api: NodeApi) -> dict[str, Any]:
    """The node's /v1/status as plain JSON, shaped like :func:`local_status` for the CLI."""
    return api.status().model_dump(mode="json")


def local_status(home: Home, did: str | None = None) -> dict[str, Any]:
    """What this home's own ledger says, shaped like /v1/status, for when its node is down.

    ``offline`` is true and there are no peers; a safety alarm the node recorded before it
    stopped (HOME/node/alarm.json) is reported, since an alarm is often why a node is down.
    """
    with Chain.open(home) as chain:
        state, alarm = chain.state, chain.alarm
    rnd = state.round
    member = state.member(did) if did else None
    role = "observer"
    if member is not None and member.active:
        role = "validator" if member.is_validator else "member"
    return {
        "offline": True,
        "genesis": state.chain_id,
        "consortium": state.config.name,
        "height": state.height,
        "head": state.head_hash,
        "head_time": state.head_time,
        "round": {
            "number": rnd.number,
            "state": rnd.state,
            "base_model": rnd.base_model,
            "model": rnd.model,
            "deadline_height": rnd.deadline_height,
            "deadline_time": rnd.deadline_time or None,
            "updates": rnd.accepted_hashes,
            "submitted": len(rnd.submitted),
        },
        "rounds_planned": state.config.training.rounds,
        "plan": state.plan_progress(),
        "peers": [],
        "members": [
            {
                "did": m.did,
                "name": m.name,
                "roles": list(m.roles),
                "power": m.power,
                "status": m.status,
            }
            for m in sorted(state.members.values(), key=lambda m: (m.since, m.name))
        ],
        "pending_members": sorted(state.pending),
        "me": {"did": did, "name": member.name if member else None, "role": role},
        "alarm": alarm,
    }
