"""A throwaway PostgreSQL server for the tests: Debian's ``postgresql`` binaries, a temp folder.

:func:`postgres_server` starts one server per test session (``initdb`` then ``pg_ctl start``)
in a temporary folder, listening on a free TCP port of ``127.0.0.1`` and on a unix socket in
that folder, with fsync off (a test database needs no durability) and returns a SQLAlchemy URL
of its ``postgres`` database for the ``psycopg`` driver (``postgresql+psycopg://...``); the
server is stopped (``pg_ctl stop -m immediate``) and the folder removed at the end.

``initdb`` refuses to run as root ("cannot be run as root",
https://www.postgresql.org/docs/current/app-initdb.html), so as root the server runs as the
``postgres`` system user that Debian's package creates (``runuser -u postgres``), its folder
owned by that user. The binaries are looked up in ``$LLMSPAWNER_TEST_POSTGRES_BIN``, then in
Debian's ``/usr/lib/postgresql/<version>/bin`` (newest version first; Debian puts only
wrappers on ``PATH``), then on ``PATH``.

``scripts/install.sh`` installs the package when run as root with apt-get. When the binaries
are missing (or psycopg is), :func:`unavailable` says why, and the tests that need the server
are skipped with that reason.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Where Debian's ``postgresql-<version>`` package puts the server binaries.
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def _version_key(path: Path) -> tuple:
    try:
        return (int(path.parent.name.split(".")[0]),)
    except ValueError:
        return (-1,)


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or ``None`` (see the module docstring)."""
    env = os.environ.get("LLMSPAWNER_TEST_POSTGRES_BIN")
    candidates = [Path(env)] if env else []
    candidates += sorted(Path("/").glob(DEBIAN_BIN_GLOB.lstrip("/")), key=_version_key)[::-1]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    return None


def unavailable() -> str | None:
    """Why no server can be started here (a sentence), or ``None`` if one can."""
    if find_bin_dir() is None:
        return (
            "PostgreSQL server binaries (initdb, pg_ctl) not found in "
            f"{DEBIAN_BIN_GLOB} or on PATH: install Debian's postgresql package "
            "(scripts/install.sh does as root) or set LLMSPAWNER_TEST_POSTGRES_URL"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed (pip install 'psycopg[binary]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run initdb as"
    return None


def _free_port() -> int:
    """A port outside the ephemeral range, reserved while this process lives (the dev
    stack's picker: no other socket can take it before the server binds it)."""
    from llmspawner_dev.processes import free_port

    return free_port()


@contextmanager
def postgres_server(*, timeout: float = 60.0) -> Iterator[str]:
    """Start a throwaway PostgreSQL server; yield its SQLAlchemy URL; stop and remove it.

    Args:
        timeout: seconds ``pg_ctl start`` may wait for the server to accept connections.

    Yields:
        ``postgresql+psycopg://postgres@127.0.0.1:<port>/postgres`` (trust authentication).

    Raises:
        RuntimeError: :func:`unavailable` gave a reason, or ``initdb``/``pg_ctl`` failed
            (with their output and the server's log).
    """
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    bin_dir = find_bin_dir()
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="llmspawner-pg-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    root.chmod(0o700)
    data, log = root / "data", root / "server.log"
    port = _free_port()

    def run(*argv: str) -> None:
        done = subprocess.run(
            [*as_user, *argv], capture_output=True, text=True, timeout=timeout + 30, cwd=root
        )
        if done.returncode:
            server_log = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed ({done.returncode}):\n{done.stdout}"
                f"{done.stderr}\n{server_log}"
            )

    try:
        run(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(
            str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
            "-t", str(int(timeout)), "start",
        )  # fmt: skip
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
                cwd=root,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
