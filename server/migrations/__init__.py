"""Alembic migrations of the market database; ``server.db.migrate`` runs them at start."""
