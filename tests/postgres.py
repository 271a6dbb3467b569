"""A real PostgreSQL for tests: Debian's ``postgresql`` package (scripts/test.sh installs it
where missing), started from a temporary data directory on a free loopback port.

PostgreSQL refuses to run as root: where the tests run as root, every server command runs as
the ``postgres`` user (``runuser``), and the data directory is that user's. Connections over
the Unix socket (``psql``, ``createdb``) are trusted; those over TCP, as every client of the
stack makes them, need the password of role ``modellane``, as on a real host (README's
"On a cluster" and docs/scaling.md show the same commands).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

#: The role MLflow and the audit store connect as, and its password (a test's only).
USER = "modellane"
PASSWORD = "modellane-test"


def bin_dir() -> Path:
    """The newest installed server version's programs (``/usr/lib/postgresql/<v>/bin``)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
    return Path(found[-1])


class Postgres:
    """One PostgreSQL server; :meth:`start`, :meth:`create_database`, :meth:`url`, :meth:`stop`."""

    def __init__(self) -> None:
        self.bin = bin_dir()
        # A short folder of /tmp, not pytest's (root's 0700 folders, which postgres cannot
        # enter, and the socket's path must stay under 107 characters).
        self.root = Path(tempfile.mkdtemp(prefix="pg"))
        self.data = self.root / "data"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._started = False

    def _run(self, program: str, *args: str) -> str:
        done = subprocess.run(
            [*self._as_postgres, str(self.bin / program), *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stdout

    def start(self) -> None:
        """initdb, then pg_ctl start on 127.0.0.1:``port``; role ``USER`` with its password."""
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--locale=C",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "--no-instructions",
        )  # fmt: skip
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-o", options,
                  "-l", str(self.root / "postgres.log"), "-w", "start")  # fmt: skip
        self._started = True
        self.psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")

    def psql(self, sql: str) -> str:
        """Run ``sql`` as the superuser, over the Unix socket."""
        return self._run("psql", "-h", str(self.root), "-p", str(self.port), "-U", "postgres",
                         "-v", "ON_ERROR_STOP=1", "-Atc", sql)  # fmt: skip

    def create_database(self, name: str) -> str:
        """A database owned by ``USER``; its SQLAlchemy URL."""
        self._run("createdb", "-h", str(self.root), "-p", str(self.port), "-U", "postgres",
                  "-O", USER, name)  # fmt: skip
        return self.url(name)

    def url(self, database: str) -> str:
        """psycopg2 named: SQLAlchemy 2.1, MLflow's too, takes plain ``postgresql://`` as
        psycopg 3, which is not installed."""
        return f"postgresql+psycopg2://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        """pg_ctl stop (fast: open connections are closed), then the data directory goes."""
        try:
            if self._started:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
                self._started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def audit_rows(url: str) -> list[dict[str, object]]:
    """Every row of the audit trail's table (``modellane_events``), read with SQLAlchemy."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT seq, time, kind, model, version, actor, message "
                     "FROM modellane_events ORDER BY seq")
            )  # fmt: skip
            return [dict(row) for row in rows.mappings()]
    finally:
        engine.dispose()
