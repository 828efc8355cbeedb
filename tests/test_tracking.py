"""The tracking store against SQLite and a real PostgreSQL server on loopback; state survives a reopen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mta import scratch_dir
from pgserver import Postgres, find_bindir

from directmilter.errors import TemporaryFailure
from directmilter.tracking import open_store
from directmilter.tracking.store import Delivery


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    if find_bindir() is None:
        pytest.skip("PostgreSQL server binaries are not installed (scripts/bootstrap installs 'postgresql')")
    with scratch_dir("directmilter-pg-") as root, Postgres(root / "pg") as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:{tmp_path}/tracking.db"
    server: Postgres = request.getfixturevalue("postgres")
    return server.create_database(f"tracking_{tmp_path.name.lower().replace('-', '_')}"[:60])


def test_outgoing_confirmations_timeouts_and_reopen(url: str) -> None:
    store = open_store(url)
    store.record_outgoing("<m1@a>", "Alice@A", ["bob@b", "carol@b"], wants_dispatched=True, now=100)
    store.record_outgoing("<m1@a>", "alice@a", ["bob@b"], wants_dispatched=True, now=999)  # a retry: no change
    assert store.record_confirmation("<m1@a>", "BOB@b", "processed", now=110)
    assert not store.record_confirmation("<unknown@a>", "bob@b", "processed", now=110)
    late = store.overdue(now=5000, processed_within=3600, dispatched_within=3600)
    assert {(o.recipient, o.waiting_for) for o in late} == {("bob@b", "dispatched"), ("carol@b", "processed")}
    assert store.backlog() == 2
    assert [(a.recipient, a.waiting_for, a.sent_at) for a in store.awaiting()] == [("bob@b", "dispatched", 100),
                                                                                ("carol@b", "processed", 100)]
    store.mark_reported("<m1@a>", "carol@b", now=5000, failure="4.4.7 no processed confirmation")
    assert store.backlog() == 1
    store.close()
    reopened = open_store(url)  # e.g. after a milter restart: nothing lost
    try:
        # carol's sender was told of a failure (the timeout DSN): that is her state, whatever comes later
        assert reopened.record_confirmation("<m1@a>", "carol@b", "processed", now=5001)
        assert [(s.recipient, s.state, s.failure) for s in reopened.states("<m1@a>")] == [
            ("bob@b", "processed", None), ("carol@b", "failed", "4.4.7 no processed confirmation")]
        assert [o.recipient for o in reopened.overdue(5000, 3600, 3600)] == ["bob@b"]
        assert reopened.first_delivery("<i@b>", "alice@a", "d1", 1) is Delivery.FIRST
        assert reopened.first_delivery("<i@b>", "ALICE@a", "d1", 2) is Delivery.REPLAY
        # same id, other content: not a replay
        assert reopened.first_delivery("<i@b>", "alice@a", "d2", 3) is Delivery.FIRST
    finally:
        reopened.close()


def test_unreachable_database_is_a_temporary_failure() -> None:
    with pytest.raises(TemporaryFailure, match="tracking store"):
        open_store("postgresql://postgres@127.0.0.1:9/none?connect_timeout=1")


def test_undone_delivery_is_not_a_replay_on_retry(tmp_path: Path) -> None:
    """If the milter fails after screening, the client's retry must be delivered, not dropped as a replay."""
    from typing import Any, cast

    from directmilter.config import NotifySettings
    from directmilter.delivery.service import Confirmations

    message = b"From: a@x.test\r\nMessage-ID: <r1@x.test>\r\n\r\nbody\r\n"
    service = Confirmations(cast(Any, None), NotifySettings(mdn=False), open_store(f"sqlite:{tmp_path}/t.db"))
    first = service.screen_incoming(message, "a@x.test", ["b@y.test"])
    assert first.deliver_to == ("b@y.test",)
    service.undo(first)
    retry = service.screen_incoming(message, "a@x.test", ["b@y.test"])
    assert retry.deliver_to == ("b@y.test",)
    assert service.screen_incoming(message, "a@x.test", ["b@y.test"]).deliver_to == ()
    service.store.close()


def test_unconfirmed_delivery_of_a_dead_milter_is_no_replay(url: str) -> None:
    """A milter killed between recording a message and Postfix taking it leaves an unconfirmed record: the
    client's retry, seen by the restarted milter, is delivered. Once confirmed, a copy is a replay for anyone."""
    store = open_store(url)
    try:
        assert store.first_delivery("<k@b>", "alice@a", "d", 1, owner="first-process") is Delivery.FIRST
        # same process: replay
        assert store.first_delivery("<k@b>", "alice@a", "d", 2, owner="first-process") is Delivery.REPLAY
        # the first one died
        assert store.first_delivery("<k@b>", "alice@a", "d", 3, owner="restarted") is Delivery.FIRST
        store.confirm_delivery("<k@b>", "alice@a", "d")
        assert store.first_delivery("<k@b>", "alice@a", "d", 4, owner="another-host") is Delivery.REPLAY
    finally:
        store.close()


def test_a_record_waiting_for_its_witness_is_pending_until_witnessed_or_settled(url: str) -> None:
    """Issue 20: a copy of a message whose earlier copy waits for the MTA's commit witness is neither delivered
    (a replay if the MTA kept the first) nor dropped (the only copy if it refused it): PENDING, for any process,
    until the witness confirms the record (REPLAY) or the settle time passes without it (FIRST, taken over)."""
    store = open_store(url)
    try:
        assert store.first_delivery("<w@b>", "alice@a", "d", 100, owner="p1") is Delivery.FIRST
        store.await_witness("<w@b>", "Alice@a", "d", "t1")
        for owner in ("p1", "p2"):
            assert store.first_delivery("<w@b>", "alice@a", "d", 105, owner, awaited_after=95) is Delivery.PENDING
        assert store.confirm_witnessed("t2") == 0  # another message's witness settles nothing here
        assert store.first_delivery("<w@b>", "alice@a", "d", 106, "p2", awaited_after=96) is Delivery.PENDING
        assert store.confirm_witnessed("t1") == 1
        assert store.first_delivery("<w@b>", "alice@a", "d", 107, "p2", awaited_after=97) is Delivery.REPLAY

        assert store.first_delivery("<v@b>", "alice@a", "d", 100, owner="p1") is Delivery.FIRST
        store.await_witness("<v@b>", "alice@a", "d", "t3")
        # settled without a witness: the MTA refused the first copy, this is its retry, owned by whoever took it
        assert store.first_delivery("<v@b>", "alice@a", "d", 111, "p2", awaited_after=101) is Delivery.FIRST
        assert store.first_delivery("<v@b>", "alice@a", "d", 112, "p2", awaited_after=102) is Delivery.REPLAY
        assert store.confirm_witnessed("t3") == 0  # the late witness of the refused copy confirms nothing
        assert store.first_delivery("<v@b>", "alice@a", "d", 113, "p3", awaited_after=103) is Delivery.FIRST
    finally:
        store.close()


def test_a_message_sent_is_tracked_only_once_the_mta_kept_it(url: str) -> None:
    """Issue 20: with a commit witness, a message we accepted for sending awaits no confirmation (no timeout is
    told) until the witness says the MTA kept it; a retry of one the MTA refused takes the new token; one whose
    witness never comes is dropped; a kept message is not reset by a later copy."""
    store = open_store(url)
    try:
        def overdue() -> list[str]:
            return [o.message_id for o in store.overdue(10_000, 60, 60)]

        store.record_outgoing("<o1@a>", "alice@a", ["bob@b"], wants_dispatched=False, now=100, witness="t1")
        assert overdue() == [] and store.backlog() == 0
        store.record_outgoing("<o1@a>", "alice@a", ["bob@b"], wants_dispatched=False, now=200, witness="t2")
        assert store.confirm_witnessed("t1") == 0  # the refused attempt's witness: nothing
        assert store.confirm_witnessed("t2") == 1
        assert overdue() == ["<o1@a>"] and store.backlog() == 1
        store.record_outgoing("<o1@a>", "alice@a", ["bob@b"], wants_dispatched=False, now=300, witness="t3")
        assert store.confirm_witnessed("t3") == 0 and overdue() == ["<o1@a>"]  # kept: a later copy changes nothing

        store.record_outgoing("<o2@a>", "alice@a", ["bob@b"], wants_dispatched=False, now=100, witness="t4")
        assert store.drop_unwitnessed_outgoing(before=50) == 0
        assert store.drop_unwitnessed_outgoing(before=150) == 1
        assert store.states("<o2@a>") == [] and [s.recipient for s in store.states("<o1@a>")] == ["bob@b"]
    finally:
        store.close()


def test_a_batch_of_confirmations_confirms_exactly_its_records(url: str) -> None:
    """The background writer confirms a batch in as few statements as it can (here 700 records: three): each
    confirmed record is a replay for everyone afterwards, and the one left out still is not."""
    store = open_store(url)
    try:
        records = [(f"<m{i}@b>", "Alice@A", f"d{i}") for i in range(701)]
        for message_id, recipient, digest in records:
            assert store.first_delivery(message_id, recipient, digest, 1, owner="first-process") is Delivery.FIRST
        store.confirm_deliveries(records[:700])
        assert all(store.first_delivery(m, r, d, 2, owner="restarted") is Delivery.REPLAY for m, r, d in records[:700])
        assert store.first_delivery(*records[700], 2, owner="restarted") is Delivery.FIRST
    finally:
        store.close()


def test_database_of_the_first_release_is_brought_up_to_date(tmp_path: Path) -> None:
    """An existing tracking database without the later columns gets them at open: nothing to do by hand."""
    import sqlite3

    old = sqlite3.connect(tmp_path / "old.db")
    old.execute("CREATE TABLE incoming_seen (message_id TEXT NOT NULL, recipient TEXT NOT NULL, digest TEXT NOT "
                "NULL, seen_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (message_id, recipient, digest))")
    old.execute("INSERT INTO incoming_seen VALUES ('<o@b>', 'alice@a', 'd', 1)")
    old.commit()
    old.close()
    store = open_store(f"sqlite:{tmp_path}/old.db")
    try:
        # old rows: confirmed
        assert store.first_delivery("<o@b>", "alice@a", "d", 2, owner="new-process") is Delivery.REPLAY
        assert store.first_delivery("<n@b>", "alice@a", "d", 2, owner="new-process") is Delivery.FIRST
    finally:
        store.close()


def test_replay_records_skip_the_disk_flush_and_reports_wait_for_it(tmp_path: Path) -> None:
    """A replay record lost to a power cut lets one duplicate through, so it is not worth a disk flush per message;
    a report in the outbox is the only copy, so its commit waits for the disk (SQLite WAL: synchronous)."""
    store = open_store(f"sqlite:{tmp_path}/tracking.db")
    store.backlog()  # connected
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)  # type: ignore[union-attr]

    def modes_before(table: str) -> list[str]:
        writes = [i for i, s in enumerate(statements) if table in s and s.startswith(("INSERT", "UPDATE"))]
        assert writes, statements
        return [s for s in statements[: writes[0]] if s.startswith("PRAGMA synchronous")][-1:]

    store.first_delivery("<i@b>", "alice@a", "d1", 1, owner="o")
    store.confirm_deliveries([("<i@b>", "alice@a", "d1")])
    assert modes_before("incoming_seen") == ["PRAGMA synchronous=NORMAL"]
    statements.clear()
    store.outbox_add("o", "<i@b>", "alice@a", "bob@b", "alice@a", b"report", now=1, due=1)
    assert modes_before("outbox") == ["PRAGMA synchronous=FULL"]
    statements.clear()
    store.record_outgoing("<m@a>", "alice@a", ["bob@b"], wants_dispatched=False, now=1)
    assert modes_before("outgoing") == ["PRAGMA synchronous=FULL"]
    store.close()


def test_only_the_first_dispatched_mdn_before_any_failure_is_the_senders(url: str) -> None:
    """first_dispatched: True once per recipient that asked for final delivery, and never after a failure or a
    timeout DSN was told (a late dispatched MDN must not contradict it)."""
    store = open_store(url)
    try:
        store.record_outgoing("<d@a>", "alice@a", ["bob@b", "carol@b", "dan@b"], wants_dispatched=True, now=1)
        store.record_outgoing("<n@a>", "alice@a", ["bob@b"], wants_dispatched=False, now=1)
        assert store.first_dispatched("<d@a>", "BOB@b", now=2)
        assert not store.first_dispatched("<d@a>", "bob@b", now=3)  # a duplicate
        store.record_confirmation("<d@a>", "carol@b", "failed", now=2, failure="5.2.2 mailbox full")
        assert not store.first_dispatched("<d@a>", "carol@b", now=3)  # after a failure
        store.mark_reported("<d@a>", "dan@b", now=2, failure="4.4.7 no dispatched confirmation")
        assert not store.first_dispatched("<d@a>", "dan@b", now=3)  # after the timeout DSN
        assert not store.first_dispatched("<n@a>", "bob@b", now=3)  # final delivery was not asked for
        assert not store.first_dispatched("<x@a>", "bob@b", now=3)  # not tracked
        assert {s.recipient: s.state for s in store.states("<d@a>")}["bob@b"] == "dispatched"
    finally:
        store.close()


def test_a_held_row_waits_for_its_evidence(url: str) -> None:
    """A dispatched MDN held for a Postfix queue id is never claimed (by id, by message, as an orphan) until it is
    let go; a bounce drops it instead."""
    store = open_store(url)
    try:
        held = store.outbox_add("me", "<m@a>", "bob@b", "bob@b", "alice@a", b"MDN", now=1, due=1, held_for="ABC123")
        other = store.outbox_add("me", "<m@a>", "bob@b", "bob@b", "alice@a", b"processed", now=1, due=1)
        assert [(h.id, h.held_for, h.message_id, h.recipient) for h in store.outbox_held()] == [
            (held, "ABC123", "<m@a>", "bob@b")]
        assert store.outbox_waiting("<m@a>", "bob@b") == 1  # the processed one, not the held one
        assert [q.id for q in store.outbox_claim("me", message_id="<m@a>", recipient="bob@b", now=5)] == [other]
        assert [q.id for q in store.outbox_claim("other", orphaned_before=10**9, now=10**9)] == [other]
        assert store.outbox_claim("me", row=held, now=5) == []
        store.outbox_unhold(held, due=6)
        assert [q.body for q in store.outbox_claim("me", row=held, now=7)] == [b"MDN"]
        again = store.outbox_add("me", "<n@a>", "bob@b", "bob@b", "alice@a", b"MDN", now=1, due=1, held_for="DEF")
        assert store.outbox_drop_held("<n@a>", "BOB@b") == 1 and store.outbox_held() == []
        assert store.outbox_claim("me", row=again, now=8) == []
    finally:
        store.close()


def test_held_dispatched_mdns_go_when_postfix_is_done_and_never_before(tmp_path: Path) -> None:
    """The sweeper's release of held dispatched MDNs: one whose message is still in Postfix's queue waits; one
    whose message left goes, but only once its processed MDN has; another host's row is left to that host;
    without a view of the queue (or a queue id) only time lets one go; a failing postqueue holds them and the
    rest of the sweep goes on."""
    from directmilter.config import NotifySettings
    from directmilter.delivery import service

    store = open_store(f"sqlite:{tmp_path}/t.db")
    settings = NotifySettings(reinject=("127.0.0.1", 9), tracking="", reporting_mta="mx.b.test",
                              processed_timeout=10**9, dispatched_timeout=10**9)
    confirmations = service.Confirmations(None, settings, store)  # type: ignore[arg-type]
    sent: list[dict[str, object]] = []
    confirmations._hand_over = lambda **kwargs: sent.append(kwargs) or 0  # type: ignore[method-assign]

    def held(message_id: str, queue_id: str, *, host: str = "mx.b.test", created: float = 1000.0) -> str:
        return store.outbox_add("x", message_id, "bob@b", "bob@b", "alice@a", b"MDN", now=created, due=0,
                                held_for=f"{host}/{queue_id}")

    still = held("<q@a>", "QUEUED1")
    gone = held("<g@a>", "GONE1")
    waiting = held("<w@a>", "GONE2")
    store.outbox_add("x", "<w@a>", "bob@b", "bob@b", "alice@a", b"processed", now=1000, due=0)
    other_host = held("<o@a>", "GONE3", host="mx2.b.test")
    unknown = held("<u@a>", service.UNKNOWN_QUEUE_ID)
    confirmations.queue_ids = lambda: {"QUEUED1"}
    try:
        assert confirmations._release_delivered(now=1001) == 1
        assert sent == [{"row": gone}]
        left = {h.id for h in store.outbox_held()}
        assert left == {still, waiting, other_host, unknown}
        assert confirmations._release_delivered(now=1000 + service.UNSEEN_AFTER + 1) == 1  # the unknown one, by time
        confirmations.queue_ids = None
        assert confirmations._release_delivered(now=1001) == 0  # no view, too early: nothing goes
        assert confirmations._release_delivered(now=1000 + service.UNSEEN_AFTER + 1) == 1  # "still", by time now

        def broken() -> set[str]:
            raise TemporaryFailure("postqueue -j failed")

        confirmations.queue_ids = broken
        sent.clear()
        confirmations.sweep_once()
        assert [call for call in sent if "orphaned_before" in call]  # the sweep went on to the orphans
        assert {h.id for h in store.outbox_held()} == {waiting, other_host}
    finally:
        store.close()


def test_the_sqlite_database_is_private(tmp_path: Path) -> None:
    """Issue 19: outside systemd the umask is usually 022, and the database (who wrote to whom) came out 0644."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        store = open_store(f"sqlite:{tmp_path}/t.db")
        store.record_outgoing("<m@a>", "alice@a", ["bob@b"], wants_dispatched=False, now=1)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        store.close()
        assert modes["t.db"] == 0o600 and modes.get("t.db-wal", 0o600) == 0o600, modes
        (tmp_path / "old.db").touch(mode=0o644)
        open_store(f"sqlite:{tmp_path}/old.db").close()
        assert stat.S_IMODE((tmp_path / "old.db").stat().st_mode) == 0o640  # others lose read, the group keeps it
    finally:
        os.umask(old)
