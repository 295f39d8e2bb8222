"""Alembic environment: runs on the connection ``server.db.migrate`` passes in.

Run by hand (``alembic -c ... upgrade head``) it connects to ``sqlalchemy.url`` itself;
``alembic revision --autogenerate`` compares against ``server.db.Base.metadata``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from server.db import Base, create_db_engine


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER much
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    given = context.config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set sqlalchemy.url (alembic -x is not used here)")
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


_main()
