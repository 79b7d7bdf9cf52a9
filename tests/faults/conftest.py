"""Fixtures of the fault suites (see helpers.py)."""

from tests.faults.helpers import consortium

__all__ = ["consortium"]
