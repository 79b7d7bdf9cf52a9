"""The consortium's founding file, the genesis document it becomes, and ``bcfl init``."""

from bcfl_cli.consortium.config import (
    ConsortiumConfig,
    MemberSpec,
    genesis_config_from_document,
    load_config,
    parse_config,
)
from bcfl_cli.consortium.genesis import genesis_validator_set, make_genesis

__all__ = [
    "ConsortiumConfig",
    "MemberSpec",
    "genesis_config_from_document",
    "genesis_validator_set",
    "load_config",
    "make_genesis",
    "parse_config",
]
