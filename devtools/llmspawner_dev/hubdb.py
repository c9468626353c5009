"""The dev stack's hub database across JupyterHub versions.

A dev workdir keeps its hub database (``jupyterhub.sqlite``) between runs. JupyterHub refuses
to start on a database whose schema is not its own ("Found database schema version X != Y.
Backup your database and run `jupyterhub upgrade-db`", ``jupyterhub/app.py``): after an
upgrade of the installed JupyterHub the dev hub lets JupyterHub upgrade it
(``--JupyterHub.upgrade_db=True``, which backs the SQLite file up first); after a downgrade
(e.g. this project's move from JupyterHub 6.1 to the images' 5.5.4) there is no way back, so
the database is moved aside and the hub starts with a new one: users log in again and their
folders are kept. Schema revisions: JupyterHub's alembic scripts
(https://github.com/jupyterhub/jupyterhub/tree/main/jupyterhub/alembic/versions).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def known_revisions() -> set[str]:
    """Every schema revision the installed JupyterHub's alembic scripts know."""
    import jupyterhub
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(Path(jupyterhub.__file__).parent / "alembic"))
    return {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}


def schema_revision(db: Path) -> str | None:
    """The alembic revision stored in the SQLite database ``db``; ``None`` when the file or
    its ``alembic_version`` table does not exist."""
    if not db.exists():
        return None
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        try:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:
            return None
    return row[0] if row else None


def set_aside_if_newer(db: Path, known: set[str] | None = None) -> Path | None:
    """Move ``db`` aside when its schema is one this JupyterHub does not know (written by a
    newer JupyterHub), and return where it went (``<db>.newer-jupyterhub-<time>``);
    ``None`` when it is absent, has no revision, or is this JupyterHub's (or an older one,
    which ``upgrade_db`` handles)."""
    revision = schema_revision(db)
    if revision is None or revision in (known if known is not None else known_revisions()):
        return None
    target = db.with_name(f"{db.name}.newer-jupyterhub-{time.strftime('%Y%m%d-%H%M%S')}")
    db.rename(target)
    return target
