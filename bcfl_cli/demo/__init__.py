"""Starting and watching local nodes: the one harness of ``bcfl demo``, the tests and benches."""

from bcfl_cli.demo.launcher import (
    DEMO_PASSPHRASE,
    GenesisPlan,
    LocalConsortium,
    Member,
    MemberPlan,
    bcfl_command,
    consortium_toml,
    free_ports,
    wait_for,
)

__all__ = [
    "DEMO_PASSPHRASE",
    "GenesisPlan",
    "LocalConsortium",
    "Member",
    "MemberPlan",
    "bcfl_command",
    "consortium_toml",
    "free_ports",
    "wait_for",
]
