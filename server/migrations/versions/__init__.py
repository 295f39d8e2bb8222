"""One module per schema revision (``alembic revision`` writes them from script.py.mako)."""
