"""verify-chain: re-derive the whole chain from its genesis (docs/PROTOCOL.md §8)."""

from bcfl_cli.verify.chain import verify_chain
from bcfl_cli.verify.report import Fault, Report

__all__ = ["Fault", "Report", "verify_chain"]
