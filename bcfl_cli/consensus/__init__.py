"""BFT agreement on blocks: Tendermint (arXiv:1807.04938, Algorithm 1) as a pure state machine.

Knows only ``bcfl_cli.protocol``. The node wires it to HTTP, real time and the vote guard
(``bcfl_cli.store.vote_guard``); docs/CONSENSUS.md describes the contract with that edge.
"""

from bcfl_cli.consensus.engine import Application, Engine, SignatureCache
from bcfl_cli.consensus.messages import (
    Action,
    BroadcastProposal,
    BroadcastVote,
    Commit,
    CommitReceived,
    EngineState,
    Event,
    Evidence,
    LockProof,
    Proposal,
    ProposalReceived,
    Recheck,
    ScheduleTimeout,
    StartHeight,
    Step,
    TimeoutConfig,
    TimeoutFired,
    TimeoutKind,
    Validity,
    VoteReceived,
)
from bcfl_cli.consensus.proposer import proposer

__all__ = [
    "Action",
    "Application",
    "BroadcastProposal",
    "BroadcastVote",
    "Commit",
    "CommitReceived",
    "Engine",
    "EngineState",
    "Event",
    "Evidence",
    "LockProof",
    "Proposal",
    "ProposalReceived",
    "Recheck",
    "ScheduleTimeout",
    "SignatureCache",
    "StartHeight",
    "Step",
    "TimeoutConfig",
    "TimeoutFired",
    "TimeoutKind",
    "Validity",
    "VoteReceived",
    "proposer",
]
