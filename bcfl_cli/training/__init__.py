"""``bcfl train`` as a member runs it: the round read from the member's own chain, the FL
engine (``bcfl_cli.fl``) run on the member's data, the update written beside the ledger.

This is the glue between ``chain``/``store`` and ``fl``: ``fl`` knows neither.
"""
