"""The chain's application state and rules, replayed from the genesis document."""

from bcfl_cli.chain.builder import build_block, commit_with_keys
from bcfl_cli.chain.checks import AppChecks, VerdictLike
from bcfl_cli.chain.config import GenesisConfig, parse_document
from bcfl_cli.chain.state import AcceptedUpdate, ChainState, JoinRequest, Member, RoundState

__all__ = [
    "AcceptedUpdate",
    "AppChecks",
    "ChainState",
    "GenesisConfig",
    "JoinRequest",
    "Member",
    "RoundState",
    "VerdictLike",
    "build_block",
    "commit_with_keys",
    "parse_document",
]
