"""Test harness: a private PostgreSQL server on 127.0.0.1, trusting every connection from loopback.

A :class:`Postgres` lives in its own directory ``R`` (give it a :func:`mta.scratch_dir` subdirectory)::

    R/data          the cluster (initdb on first :meth:`Postgres.start`), owned by the server user, mode 0700
    R/data/harness.conf
                    the settings below, rewritten on every start; postgresql.conf includes it last
    R/sock          unix_socket_directories (``.s.PGSQL.<port>``); the harness itself only uses TCP
    R/initdb.log    initdb's output
    R/postgres.log  the server's stderr (logging_collector is off), see :meth:`Postgres.log`

The superuser is ``postgres``; ``pg_hba.conf`` trusts it (and everyone) on the unix socket and from
127.0.0.1/32 and nothing else, and the server listens on 127.0.0.1 only. Durability is off (``fsync``,
``synchronous_commit``, ``full_page_writes``): a crash loses data, which a test cluster does not mind.

Typical use::

    with scratch_dir("directmilter-pg-") as tmp, Postgres(tmp / "pg") as pg:
        dsn = pg.create_database("direct")      # postgresql://postgres@127.0.0.1:PORT/direct
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TABLE t (x int)")
        assert pg.psql("SELECT count(*) FROM t", database="direct") == "0\\n"

Facts this relies on (PostgreSQL 15.x, Debian 12):

* The server binaries are in /usr/lib/postgresql/<major>/bin, not on PATH (Debian's /usr/bin/psql etc. are
  pg_wrapper links, and there is no /usr/bin/postgres or initdb): :func:`find_bindir` takes the newest major there.
* initdb and postgres refuse to run as root. As root, the harness runs both as the ``postgres`` system user
  directly (``subprocess`` ``user=``/``group=``, supplementary groups dropped), not through runuser or su: those
  stay in between as a parent, and on SIGTERM util-linux's su/runuser forward it, sleep 2 s and then SIGKILL the
  server. The directory tree's ancestors get o+x (:func:`mta.make_traversable`), so it cannot live under pytest's
  ``tmp_path``. Not running as root, everything runs as the current user.
* The postmaster writes its state into line 8 of ``data/postmaster.pid``: ``starting``, then ``ready`` once it
  accepts connections (``stopping`` on the way down). :meth:`Postgres.start` waits for ``ready``.
* SIGTERM is a *smart* shutdown: the postmaster waits for every client to disconnect, so a test that leaks a
  connection would hang. :meth:`Postgres.stop` sends SIGINT (*fast* shutdown: clients are disconnected, one
  checkpoint, ~20 ms with fsync off). The postmaster exits only after all its children have.
* Every backend and auxiliary process calls setsid(): they are neither in the postmaster's process group nor is
  their command line (process title, e.g. ``postgres: 15/main: checkpointer``) naming ``R``. Find them as the
  postmaster's children (:meth:`Postgres.processes`); :func:`mta.processes_under` finds only the postmaster.
* ``initdb --no-sync`` takes ~0.6 s (the bulk of a first start); the server is ready ~30 ms after it starts and a
  fast shutdown takes ~20 ms. Many servers can run side by side (a port and a data directory each).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from mta import LOOPBACK, _children, _poll, _read_proc, free_port, make_traversable

__all__ = ["BIN_ROOT", "SUPERUSER", "Postgres", "find_bindir", "quote_ident"]

BIN_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
"""The database superuser (``initdb -U``), and the system user the server runs as when we are root."""

_SERVER_TOOLS = ("initdb", "postgres", "psql")
_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


def find_bindir(root: Path = BIN_ROOT) -> Path | None:
    """The newest ``<root>/<version>/bin`` holding initdb, postgres and psql; None if there is none (server not
    installed: ``apt-get install postgresql``)."""
    found: list[tuple[tuple[int, ...], Path]] = []
    for bindir in root.glob("*/bin"):
        if all(os.access(bindir / tool, os.X_OK) for tool in _SERVER_TOOLS):
            version = tuple(int(part) for part in bindir.parent.name.split(".") if part.isdigit())
            found.append((version, bindir))
    return max(found)[1] if found else None


def quote_ident(name: str) -> str:
    """``name`` as an SQL identifier: double-quoted, inner double quotes doubled."""
    if "\0" in name:
        raise ValueError(f"NUL in identifier {name!r}")
    return '"' + name.replace('"', '""') + '"'


def _client_env() -> dict[str, str]:
    """Our environment minus libpq's ``PG*`` variables (a PGPASSWORD, PGSERVICE, PGHOST... of the caller must
    not leak into the harness's connections), plus a connect timeout."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "5"
    return env


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    status = _read_proc(pid, "stat")
    return bool(status) and status[status.rfind(b")") + 2:][:1] != b"Z"


_RUNNING: dict[int, Postgres] = {}


@atexit.register
def _stop_leftovers() -> None:
    """Stop servers a test forgot (or could not) stop, so no postmaster outlives the test process."""
    for server in list(_RUNNING.values()):
        with contextlib.suppress(Exception):
            server.stop()


class Postgres:
    """A private PostgreSQL server under ``root`` (see the module docstring). The port is chosen on construction;
    the cluster is made by the first :meth:`start` and kept across :meth:`stop`/:meth:`start`."""

    def __init__(self, root: Path, *, port: int | None = None, bindir: Path | None = None,
                 settings: Mapping[str, str] | None = None) -> None:
        """
        :param root: the server's directory (created; it and its ancestors get o+x).
        :param port: the TCP port on 127.0.0.1 (default: a free one).
        :param bindir: where initdb, postgres and psql are (default: :func:`find_bindir`).
        :param settings: extra postgresql.conf settings, applied last; values are written as they are, so quote
            strings SQL-style (``{"log_statement": "'all'"}``).
        """
        found = bindir or find_bindir()
        if found is None:
            raise RuntimeError(f"no PostgreSQL server binaries ({', '.join(_SERVER_TOOLS)}) under {BIN_ROOT}/*/bin "
                               "(apt-get install postgresql)") from None
        self.bindir = Path(found)
        self.root = Path(root).absolute()
        self.port = port or free_port()
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_path = self.root / "postgres.log"
        self.extra_settings = dict(settings or {})
        self._child: subprocess.Popen[bytes] | None = None
        socket_path = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(os.fsencode(socket_path)) > _SOCKET_PATH_MAX:
            raise ValueError(f"{root}: too deep for a unix socket ({socket_path} is over {_SOCKET_PATH_MAX} bytes)")
        self._as_server = self._server_identity()
        self.root.mkdir(parents=True, exist_ok=True)
        make_traversable(self.root)

    @staticmethod
    def _server_identity() -> dict[str, Any]:
        """subprocess keyword arguments that run a program as the server user: ``postgres`` when we are root
        (initdb and postgres refuse root), nothing (ourselves) otherwise."""
        if os.geteuid() != 0:
            return {}
        try:
            entry = pwd.getpwnam(SUPERUSER)
        except KeyError:
            raise RuntimeError(f"no {SUPERUSER!r} system user to run the server as "
                               "(apt-get install postgresql)") from None
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _chown_to_server(self, path: Path) -> None:
        if self._as_server:
            os.chown(path, self._as_server["user"], self._as_server["group"])

    # ----------------------------------------------------------------------------------------------- configuration

    def settings(self) -> dict[str, str]:
        """The postgresql.conf settings the harness adds (``harness.conf``), values in postgresql.conf syntax."""
        settings = {
            "listen_addresses": f"'{LOOPBACK}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "'32MB'",
            "timezone": "'UTC'",
            "log_timezone": "'UTC'",
            "logging_collector": "off",
            "log_destination": "'stderr'",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
        }
        settings.update(self.extra_settings)
        return settings

    def write_config(self) -> None:
        """(Re)write ``harness.conf`` and ``pg_hba.conf`` in the data directory; a running server needs a restart
        (or ``SELECT pg_reload_conf()`` for settings that allow it)."""
        conf = self.data_dir / "harness.conf"
        conf.write_text("".join(f"{key} = {value}\n" for key, value in self.settings().items()))
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("# directmilter test harness: trust, loopback only\n"
                       "local all all trust\n"
                       f"host  all all {LOOPBACK}/32 trust\n")
        for path in (conf, hba):
            path.chmod(0o600)
            self._chown_to_server(path)

    def initdb(self) -> None:
        """Make the cluster in ``R/data`` (superuser ``postgres``, UTF8, C locale, trust auth) and point its
        postgresql.conf at ``harness.conf``. Done by the first :meth:`start`."""
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self.socket_dir.mkdir(mode=0o755, exist_ok=True)
        self._chown_to_server(self.data_dir)
        self._chown_to_server(self.socket_dir)
        argv = [str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-sync"]
        with (self.root / "initdb.log").open("wb") as out:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  cwd=self.root, env=self._server_env(), timeout=120, check=False,
                                  **self._as_server)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n"
                               f"{(self.root / 'initdb.log').read_text(errors='replace')[-4000:]}")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# directmilter test harness settings, last so they win\ninclude 'harness.conf'\n")

    def _server_env(self) -> dict[str, str]:
        """A minimal environment for initdb and postgres (no PG* variables, C locale, HOME in the tree)."""
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root), "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8", "TZ": "UTC"}

    # --------------------------------------------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.poll() is None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid (it is our direct child)."""
        return self._child.pid if self._child is not None else None

    def processes(self) -> list[int]:
        """The live processes of this server: the postmaster and its children (backends, checkpointer,
        walwriter, autovacuum...), which are in sessions of their own and do not name ``R`` in their titles."""
        if not self.running or self.pid is None:
            return []
        return sorted([self.pid, *_children(self.pid)])

    def start(self, timeout: float = 30) -> Postgres:
        """initdb (the first time), write the configuration, start the postmaster in the foreground as our child
        and wait until it says ``ready`` and accepts TCP connections."""
        if self.running:
            return self
        if not (self.data_dir / "PG_VERSION").exists():
            self.initdb()
        self.write_config()
        out = self.log_path.open("ab")
        try:
            self._child = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                 "-k", str(self.socket_dir)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.root,
                env=self._server_env(), start_new_session=True, **self._as_server)
        finally:
            out.close()
        _RUNNING[id(self)] = self
        try:
            _poll(self._ready, timeout, lambda: f"postgres not ready on {self.port} after {timeout}s:\n{self._tail()}",
                  0.02)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool | None:
        child = self._child
        assert child is not None
        if child.poll() is not None:
            raise RuntimeError(f"postgres exited with {child.returncode}:\n{self._tail()}")
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        # An old postmaster.pid (say, after a SIGKILL) names another pid until ours rewrites it.
        if len(lines) < 8 or lines[0].strip() != str(child.pid) or lines[7].strip() != "ready":
            return None
        try:
            socket.create_connection((LOOPBACK, self.port), timeout=1).close()
        except OSError:
            return None
        return True

    def stop(self, timeout: float = 10) -> None:
        """Fast shutdown (SIGINT: open client connections are cut, not waited for) and wait for the postmaster,
        which exits after all its children. After ``timeout``: SIGKILL the children and the postmaster. The
        cluster stays for a later :meth:`start`."""
        child, self._child = self._child, None
        _RUNNING.pop(id(self), None)
        if child is None:
            return
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGINT)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            children = list(_children(child.pid))  # first: once the postmaster is gone they are not ours to find
            for pid in [*children, child.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            child.wait(5)
            # Orphaned by the SIGKILL, the children are reaped by init: wait until they are at least zombies.
            with contextlib.suppress(TimeoutError):
                _poll(lambda: None if any(_alive(pid) for pid in children) else True, 5, lambda: "", 0.01)

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Postgres(port={self.port}, root={str(self.root)!r}, running={self.running})"

    # ------------------------------------------------------------------------------------------------------ clients

    def dsn(self, database: str = "postgres") -> str:
        """A libpq URI for ``database`` as the superuser over TCP, e.g. ``postgresql://postgres@127.0.0.1:PORT/db``
        (psycopg.connect, psql and SQLAlchemy's ``postgresql+psycopg://`` all take it)."""
        return f"postgresql://{SUPERUSER}@{LOOPBACK}:{self.port}/{quote(database, safe='')}"

    def psql(self, sql: str, database: str = "postgres", timeout: float = 30) -> str:
        """Run ``sql`` (any number of ;-separated statements, each in its own transaction unless the script says
        BEGIN) with psql as the superuser over TCP; stop at the first error (RuntimeError with psql's stderr).
        Returns the output unaligned and without headers, footers or command tags: rows one per line, columns
        separated by ``|`` (``SELECT 1, 'a'`` gives ``"1|a\\n"``)."""
        if not self.running:
            raise RuntimeError("postgres is not running")
        argv = [str(self.bindir / "psql"), "--no-psqlrc", "--quiet", "--no-align", "--tuples-only",
                "--set", "ON_ERROR_STOP=1", "--dbname", self.dsn(database), "--file", "-"]
        done = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=timeout, env=_client_env(),
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({done.returncode}) on {database}: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name`` (from template1, owned by the superuser); returns its :meth:`dsn`."""
        self.psql(f"CREATE DATABASE {quote_ident(name)}")
        return self.dsn(name)

    # ---------------------------------------------------------------------------------------------------------- log

    def log(self) -> str:
        """Everything the server wrote to stderr (all its starts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _tail(self) -> str:
        return self.log()[-4000:]
