"""The private PostgreSQL harness works, checked with psycopg: start, create, write, read, stop, nothing left."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from mta import processes_under, scratch_dir
from pgserver import Postgres, find_bindir

pytestmark = pytest.mark.skipif(
    find_bindir() is None,
    reason="PostgreSQL server not installed: no /usr/lib/postgresql/<version>/bin with initdb, postgres and psql "
           "(apt-get install postgresql)")


@pytest.fixture
def scratch() -> Iterator[Path]:
    with scratch_dir("directmilter-pg-") as path:
        yield path


def assert_gone(pids: list[int], server: Postgres) -> None:
    """None of ``pids`` is alive (we reaped the postmaster, its children were reaped by it), nothing else of the
    server's tree runs, and its port is closed."""
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [pid for pid in pids if os.path.exists(f"/proc/{pid}")] == []
    assert processes_under(server.root) == []
    assert not server.running
    assert not (server.data_dir / "postmaster.pid").exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_start_write_read_stop(scratch: Path) -> None:
    pg = Postgres(scratch / "pg")
    assert pg.dsn() == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    with pg:
        assert pg.running
        pids = pg.processes()
        assert pg.pid in pids and len(pids) > 1, pids  # the postmaster and its auxiliary processes
        # backends' titles do not name the tree (see processes()); a helper still starting up may, for a moment
        deadline = time.monotonic() + 10
        while processes_under(pg.root) != [pg.pid] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_under(pg.root) == [pg.pid]

        dsn = pg.create_database("direct")
        assert dsn == f"postgresql://postgres@127.0.0.1:{pg.port}/direct"
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TABLE certs (address text PRIMARY KEY, der bytea NOT NULL)")
            conn.execute("INSERT INTO certs VALUES (%s, %s), (%s, %s)",
                         ("bob@direct.b.test", b"\x30\x82\x00", "direct.b.test", b"\x00\xff"))
            conn.commit()
            rows = conn.execute("SELECT address, der FROM certs ORDER BY address").fetchall()
            assert rows == [("bob@direct.b.test", b"\x30\x82\x00"), ("direct.b.test", b"\x00\xff")]
            server = conn.execute("SELECT inet_server_addr()::text, current_user, current_setting('fsync'), "
                                  "current_setting('listen_addresses')").fetchone()
            assert server == ("127.0.0.1/32", "postgres", "off", "127.0.0.1")

        # psql sees what psycopg committed; its output is unaligned, headerless.
        assert pg.psql("SELECT address, length(der) FROM certs ORDER BY address", database="direct") == (
            "bob@direct.b.test|3\ndirect.b.test|2\n")
        assert pg.psql("SELECT datname FROM pg_database WHERE datname = 'direct'") == "direct\n"
        with pytest.raises(RuntimeError, match="no_such_table"):
            pg.psql("SELECT 1; SELECT * FROM no_such_table; SELECT 2", database="direct")
    assert_gone(pids, pg)


def test_stop_cuts_open_connections_and_restart_keeps_data(scratch: Path) -> None:
    pg = Postgres(scratch / "pg")
    with pg:
        dsn = pg.create_database('odd "name"')
        conn = psycopg.connect(dsn, autocommit=True)  # left open on purpose: stop() must not wait for it
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (42)")
        pids = pg.processes()
        started = time.monotonic()
        pg.stop()
        assert time.monotonic() - started < 5
        assert_gone(pids, pg)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()

        pg.start()  # same cluster, same port
        with psycopg.connect(dsn) as again:
            assert again.execute("SELECT x FROM t").fetchall() == [(42,)]
        pids = pg.processes()
    assert_gone(pids, pg)
