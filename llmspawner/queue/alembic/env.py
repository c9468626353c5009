"""alembic environment of the queue's database, used by :func:`llmspawner.queue.db.upgrade`.

There is no ``alembic.ini``: :func:`llmspawner.queue.db.alembic_config` builds the
configuration and passes an open connection in ``config.attributes["connection"]``, as in
https://alembic.sqlalchemy.org/en/latest/cookbook.html#sharing-a-connection-across-one-or-more-programmatic-migration-commands
To write a new migration: ``alembic -x url=sqlite:///queue.sqlite revision --autogenerate``
is not wired up; write it by hand from ``script.py.mako`` and let
``tests/integration/test_queue_db.py`` check it against :mod:`llmspawner.queue.models`.
"""

from alembic import context
from sqlalchemy import create_engine

from llmspawner.queue.models import Base

config = context.config
target_metadata = Base.metadata
# batch mode: SQLite cannot ALTER most things; alembic copies the table instead.
_options = dict(target_metadata=target_metadata, render_as_batch=True)


def run_migrations_offline():
    """Emit SQL for ``sqlalchemy.url`` without connecting (``alembic upgrade --sql``)."""
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, **_options)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    """Run the migrations on the given connection (or a new one to ``sqlalchemy.url``)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **_options)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection, **_options)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
