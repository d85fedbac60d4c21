"""Persistence: the catalogue database (SQLAlchemy) and index snapshots on disk."""
