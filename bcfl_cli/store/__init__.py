"""Persistence: the SQLite ledger (SQLAlchemy + Alembic) and the content-addressed blob store."""
