"""The dev hub's database: a newer JupyterHub's schema is set aside, this one's and older kept."""

import sqlite3

from llmspawner_dev import hubdb


def make_db(path, revision):
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    return path


def test_the_installed_jupyterhubs_revisions_are_known():
    known = hubdb.known_revisions()
    # JupyterHub 5.x's head (jupyterhub/alembic/versions), known to 5.x and every later one.
    assert "4621fec11365" in known
    assert len(known) > 10


def test_a_newer_schema_is_moved_aside(tmp_path):
    db = make_db(tmp_path / "jupyterhub.sqlite", "ffffffffffff")
    moved = hubdb.set_aside_if_newer(db, known={"aaa", "bbb"})
    assert moved is not None and moved.name.startswith("jupyterhub.sqlite.newer-jupyterhub-")
    assert not db.exists()
    assert hubdb.schema_revision(moved) == "ffffffffffff"


def test_a_known_schema_stays(tmp_path):
    db = make_db(tmp_path / "jupyterhub.sqlite", "bbb")
    assert hubdb.set_aside_if_newer(db, known={"aaa", "bbb"}) is None
    assert db.exists()


def test_no_database_or_no_revision(tmp_path):
    assert hubdb.set_aside_if_newer(tmp_path / "none.sqlite", known=set()) is None
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    assert hubdb.set_aside_if_newer(empty, known=set()) is None
    assert empty.exists()
