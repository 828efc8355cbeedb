"""The tracking store: SQLite by default (nothing to set up), PostgreSQL for HISPs with several milter hosts.

One schema, the same SQL for both (``%s`` placeholders, translated for sqlite3). Each outgoing message is a row per
recipient that collects its confirmations: processed and dispatched MDNs, failures from MDNs or DSNs, and when the
hosted sender was told about a missing confirmation. Incoming messages leave a fingerprint per recipient so a
replayed message is delivered once. Times are Unix seconds. Every method is safe to call from any thread.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from directmilter.errors import ConfigError, TemporaryFailure

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS outgoing (
        message_id TEXT NOT NULL,
        recipient TEXT NOT NULL,
        sender TEXT NOT NULL,
        sent_at DOUBLE PRECISION NOT NULL,
        wants_dispatched INTEGER NOT NULL,
        processed_at DOUBLE PRECISION,
        dispatched_at DOUBLE PRECISION,
        failed_at DOUBLE PRECISION,
        failure TEXT,
        reported_at DOUBLE PRECISION,
        PRIMARY KEY (message_id, recipient))""",
    """CREATE TABLE IF NOT EXISTS incoming_seen (
        message_id TEXT NOT NULL,
        recipient TEXT NOT NULL,
        digest TEXT NOT NULL,
        seen_at DOUBLE PRECISION NOT NULL,
        owner TEXT NOT NULL DEFAULT '',
        confirmed INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (message_id, recipient, digest))""",
    """CREATE TABLE IF NOT EXISTS outbox (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        due_at DOUBLE PRECISION NOT NULL,
        message_id TEXT,
        recipient TEXT NOT NULL,
        sender TEXT NOT NULL,
        target TEXT NOT NULL,
        body TEXT NOT NULL,
        sealed INTEGER NOT NULL DEFAULT 1,
        held_for TEXT)""",
)

#: Columns added since the first release: (table, column, definition), added to older databases at open.
MIGRATIONS = (
    ("incoming_seen", "owner", "TEXT NOT NULL DEFAULT ''"),
    ("incoming_seen", "confirmed", "INTEGER NOT NULL DEFAULT 1"),
    ("outbox", "sealed", "INTEGER NOT NULL DEFAULT 1"),
    ("outbox", "held_for", "TEXT"),
    ("outgoing", "witness", "TEXT"),  # the commit witness token while the MTA has not said it kept the message
)

#: The due time of a held row (a dispatched MDN waiting for the evidence of final delivery): never, by itself.
HELD = 1e300


@dataclass(frozen=True)
class Overdue:
    """A recipient whose confirmation did not come in time; ``waiting_for`` is "processed" or "dispatched"."""

    message_id: str
    sender: str
    recipient: str
    waiting_for: str
    sent_at: float = 0.0


@dataclass(frozen=True)
class RecipientState:
    recipient: str
    state: str  # pending, processed, dispatched, failed
    failure: str | None


#: Rows one statement confirms at most (three parameters each; SQLite before 3.32 allows 999 per statement).
_ROWS_PER_STATEMENT = 300


class _Connection(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def commit(self) -> None: ...
    def close(self) -> None: ...


class TrackingStore:
    def __init__(self, connect: Any, placeholder: str, description: str,
                 commit_modes: tuple[str, str] = ("", "")) -> None:
        """``commit_modes``: the statement that makes a transaction's commit wait for the disk, and the one that
        lets it return before (see :meth:`_cursor`)."""
        self._connect = connect
        self._placeholder = placeholder
        self.description = description
        self._durable, self._relaxed = commit_modes
        self._lock = threading.Lock()
        self._conn: _Connection | None = None
        with self._cursor() as run:
            for statement in SCHEMA:
                run(statement)
            for table, column, definition in MIGRATIONS:
                if placeholder == "?":  # SQLite has no ADD COLUMN IF NOT EXISTS
                    present = {row[1] for row in run(f"PRAGMA table_info({table})").fetchall()}
                    if column not in present:
                        run(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                else:
                    run(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {definition}")

    @contextlib.contextmanager
    def _cursor(self, *, durable: bool = True) -> Iterator[Any]:
        """A transaction. A durable one is on disk when it returns; a relaxed one may be lost to a power cut (never
        to a crash of the milter), and costs no disk flush: for records whose loss costs a duplicate, not a loss."""
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                conn = self._conn

                def run(sql: str, params: Sequence[Any] = ()) -> Any:
                    return conn.execute(sql.replace("%s", self._placeholder), tuple(params))

                mode = self._durable if durable else self._relaxed
                if mode:
                    conn.execute(mode)
                yield run
                conn.commit()
            except Exception as exc:
                if self._conn is not None:
                    try:
                        self._conn.close()
                    finally:
                        self._conn = None  # reconnect next time: the database may come back
                if isinstance(exc, TemporaryFailure | ConfigError):
                    raise
                raise TemporaryFailure(f"tracking store {self.description}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- outgoing ------------------------------------------------------------------------------------------------

    def record_outgoing(self, message_id: str, sender: str, recipients: Sequence[str], *, wants_dispatched: bool,
                        now: float, witness: str | None = None) -> None:
        """Track a message we accepted for sending. With ``witness`` (a commit witness token) it is tracked only
        once the MTA says it kept it (:meth:`confirm_witnessed`): until then no confirmation is awaited from it and
        no timeout is told; a retry of a message the MTA refused after us takes the new token."""
        with self._cursor() as run:
            for recipient in recipients:
                run("INSERT INTO outgoing (message_id, recipient, sender, sent_at, wants_dispatched, witness) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (message_id, recipient) DO UPDATE SET "
                    "witness = excluded.witness, sent_at = excluded.sent_at WHERE outgoing.witness IS NOT NULL",
                    (message_id, recipient.lower(), sender.lower(), now, int(wants_dispatched), witness))

    def record_confirmation(self, message_id: str, recipient: str, kind: str, *, now: float,
                            failure: str | None = None) -> bool:
        """Record a processed / dispatched / failed confirmation; False when nothing tracked matches."""
        column = {"processed": "processed_at", "dispatched": "dispatched_at", "failed": "failed_at"}[kind]
        with self._cursor() as run:
            cursor = run(f"UPDATE outgoing SET {column} = COALESCE({column}, %s), "
                         "failure = COALESCE(failure, %s) WHERE message_id = %s AND recipient = %s",
                         (now, failure, message_id, recipient.lower()))
            return bool(cursor.rowcount)

    def first_dispatched(self, message_id: str, recipient: str, *, now: float) -> bool:
        """Record a dispatched MDN; True when it is the first for a recipient that asked for one and of whom no
        failure was told (then it is the sender's positive confirmation, delivered to her, Implementation Guide)."""
        with self._cursor() as run:
            cursor = run("UPDATE outgoing SET dispatched_at = %s WHERE message_id = %s AND recipient = %s AND "
                         "wants_dispatched = 1 AND dispatched_at IS NULL AND failed_at IS NULL AND reported_at IS NULL",
                         (now, message_id, recipient.lower()))
            return bool(cursor.rowcount)

    def overdue(self, now: float, processed_within: float, dispatched_within: float) -> list[Overdue]:
        """Recipients with no failure reported yet whose processed (or requested dispatched) MDN is late."""
        with self._cursor() as run:
            rows = run(
                "SELECT message_id, sender, recipient, CASE WHEN processed_at IS NULL THEN 'processed' "
                "ELSE 'dispatched' END FROM outgoing WHERE reported_at IS NULL AND failed_at IS NULL AND "
                "witness IS NULL AND ("
                "(processed_at IS NULL AND sent_at <= %s) OR "
                "(wants_dispatched = 1 AND dispatched_at IS NULL AND sent_at <= %s)) ORDER BY sent_at",
                (now - processed_within, now - dispatched_within),
            ).fetchall()
        return [Overdue(*row) for row in rows]

    _AWAITING = ("FROM outgoing WHERE reported_at IS NULL AND failed_at IS NULL AND witness IS NULL AND "
                 "(processed_at IS NULL OR "
                 "(wants_dispatched = 1 AND dispatched_at IS NULL))")

    def awaiting(self, limit: int = 1000) -> list[Overdue]:
        """Recipients still waiting for their processed (or requested dispatched) MDN, oldest first."""
        with self._cursor() as run:
            rows = run("SELECT message_id, sender, recipient, CASE WHEN processed_at IS NULL THEN 'processed' "
                       f"ELSE 'dispatched' END, sent_at {self._AWAITING} ORDER BY sent_at, recipient LIMIT %s",
                       (limit,)).fetchall()
        return [Overdue(*row) for row in rows]

    def backlog(self) -> int:
        """How many recipients are waiting for a confirmation (the metrics' tracking backlog)."""
        with self._cursor() as run:
            return int(run(f"SELECT COUNT(*) {self._AWAITING}").fetchone()[0])

    def mark_reported(self, message_id: str, recipient: str, now: float, *, failure: str) -> None:
        """The sender was told this recipient failed (a timeout): the recipient's state is "failed" from now on,
        with ``failure`` as the cause, whatever confirmation arrives later."""
        with self._cursor() as run:
            run("UPDATE outgoing SET reported_at = %s, failure = COALESCE(failure, %s) "
                "WHERE message_id = %s AND recipient = %s", (now, failure, message_id, recipient.lower()))

    def states(self, message_id: str) -> list[RecipientState]:
        with self._cursor() as run:
            rows = run("SELECT recipient, processed_at, dispatched_at, COALESCE(failed_at, reported_at), failure "
                       "FROM outgoing WHERE message_id = %s ORDER BY recipient", (message_id,)).fetchall()
        return [RecipientState(r, _state(p, d, f), failure) for r, p, d, f, failure in rows]

    # --- incoming ------------------------------------------------------------------------------------------------

    def first_delivery(self, message_id: str, recipient: str, digest: str, now: float, owner: str = "",
                       awaited_after: float | None = None) -> Delivery:
        """Remember an accepted message for a recipient: FIRST, or REPLAY when the same one was accepted before.

        With an ``owner`` (the milter process's id) the record stays unconfirmed until :meth:`confirm_delivery`.
        An unconfirmed record of another owner is a message whose milter died before Postfix could take it: the
        client's retry of it is no replay, and is delivered (at least once, never lost). A record that waits for
        the MTA's word (:meth:`await_witness`) since after ``awaited_after`` is PENDING: whether the MTA kept that
        copy is not known yet, so this one can be neither delivered (it may be a replay) nor dropped (it may be
        the only one); the caller asks again until the witness settles it. Older, the witness is not coming: the
        copy is taken over and delivered.

        Relaxed: a record a power cut takes lets one replay of that message through, and saves a disk flush on
        every message received.
        """
        key = (message_id, recipient.lower(), digest)
        cutoff = now if awaited_after is None else awaited_after
        with self._cursor(durable=False) as run:
            cursor = run("INSERT INTO incoming_seen (message_id, recipient, digest, seen_at, owner, confirmed) "
                         "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (message_id, recipient, digest) DO NOTHING",
                         (*key, now, owner, 0 if owner else 1))
            if cursor.rowcount:
                return Delivery.FIRST
            if not owner:
                return Delivery.REPLAY
            taken = run("UPDATE incoming_seen SET owner = %s, seen_at = %s WHERE message_id = %s AND recipient = %s "
                        "AND digest = %s AND confirmed = 0 AND owner <> %s "
                        "AND NOT (owner LIKE %s AND seen_at > %s)",
                        (owner, now, *key, owner, _WITNESS_OWNER + "%", cutoff))
            if taken.rowcount:
                return Delivery.FIRST
            awaited = run("SELECT 1 FROM incoming_seen WHERE message_id = %s AND recipient = %s AND digest = %s "
                          "AND confirmed = 0 AND owner LIKE %s", (*key, _WITNESS_OWNER + "%")).fetchone()
            return Delivery.PENDING if awaited else Delivery.REPLAY

    def confirm_delivery(self, message_id: str, recipient: str, digest: str) -> None:
        """The message was handed to Postfix: from now on a copy of it is a replay, whoever sees it."""
        self.confirm_deliveries([(message_id, recipient, digest)])

    def confirm_deliveries(self, deliveries: Sequence[tuple[str, str, str]]) -> None:
        """:meth:`confirm_delivery` for many (message id, recipient, digest) at once: one transaction (relaxed, as
        in :meth:`first_delivery`)."""
        with self._cursor(durable=False) as run:
            # One statement per batch: a statement per row would let each milter thread wait for the store (and
            # the interpreter lock, given up and taken again around every statement) as many times.
            for first in range(0, len(deliveries), _ROWS_PER_STATEMENT):
                batch = deliveries[first : first + _ROWS_PER_STATEMENT]
                run("UPDATE incoming_seen SET confirmed = 1 WHERE (message_id, recipient, digest) IN (VALUES "
                    + ", ".join(["(%s, %s, %s)"] * len(batch)) + ")",
                    [value for message_id, recipient, digest in batch
                     for value in (message_id, recipient.lower(), digest)])

    # --- the outbox: secured MDNs, durable until Postfix has them ----------------------------------------------------

    def outbox_add(self, owner: str, message_id: str | None, recipient: str, sender: str, target: str, body: bytes,
                   *, now: float, due: float, sealed: bool = True, held_for: str | None = None) -> str:
        """Keep a report until Postfix has it: sealed (signed and encrypted) or, when ``sealed`` is False, the
        report itself (addresses and Message-IDs, no content of the message reported on), to be sealed later.
        ``held_for``: a Postfix queue id; the row is held (never due, never an orphan) until :meth:`outbox_unhold`
        (that message was delivered) or :meth:`outbox_drop_held` (it bounced)."""
        row = uuid.uuid4().hex
        with self._cursor() as run:
            run("INSERT INTO outbox (id, owner, created_at, due_at, message_id, recipient, sender, target, body, "
                "sealed, held_for) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (row, owner, now, HELD if held_for else due, message_id, recipient.lower(), sender, target,
                 body.decode("ascii"), int(sealed), held_for))
        return row

    def outbox_held(self) -> list[Held]:
        """The held rows, oldest first."""
        with self._cursor() as run:
            return [Held(r, q, m, rc, float(c)) for r, q, m, rc, c in
                    run("SELECT id, held_for, message_id, recipient, created_at FROM outbox "
                        "WHERE held_for IS NOT NULL ORDER BY created_at").fetchall()]

    def outbox_waiting(self, message_id: str | None, recipient: str) -> int:
        """How many rows of (message, recipient) that are not held are still in the outbox (queued or being sent)."""
        with self._cursor() as run:
            return int(run("SELECT COUNT(*) FROM outbox WHERE message_id = %s AND recipient = %s AND held_for IS NULL",
                           (message_id, recipient.lower())).fetchone()[0])

    def outbox_unhold(self, row: str, due: float) -> None:
        with self._cursor() as run:
            run("UPDATE outbox SET held_for = NULL, due_at = %s WHERE id = %s", (due, row))

    def outbox_drop_held(self, message_id: str | None, recipient: str) -> int:
        """Drop the held rows of (message, recipient): it failed, so no confirmation of final delivery may go."""
        with self._cursor() as run:
            cursor = run("DELETE FROM outbox WHERE message_id = %s AND recipient = %s AND held_for IS NOT NULL",
                         (message_id, recipient.lower()))
            return int(cursor.rowcount)

    def outbox_drop_held_before(self, prefix: str, before: float) -> int:
        """Drop the rows held for something starting with ``prefix`` since before ``before``: what they waited for
        will not come."""
        with self._cursor() as run:
            cursor = run("DELETE FROM outbox WHERE held_for LIKE %s AND created_at < %s", (prefix + "%", before))
            return int(cursor.rowcount)

    def outbox_update(self, row: str, body: bytes) -> None:
        """Replace a kept report by its sealed form."""
        with self._cursor() as run:
            run("UPDATE outbox SET body = %s, sealed = 1 WHERE id = %s", (body.decode("ascii"), row))

    def outbox_release(self, row: str, due: float) -> None:
        """Give a taken row back, to be tried again at ``due``."""
        with self._cursor() as run:
            run("UPDATE outbox SET due_at = %s WHERE id = %s", (due, row))

    def outbox_claim(self, owner: str, *, row: str | None = None, message_id: str | None = None,
                     recipient: str | None = None, orphaned_before: float | None = None, now: float,
                     hold: float = 60.0) -> list[Queued]:
        """Take rows to send: one by id, those of one (message, recipient), or orphans (rows of other owners, or
        our own that were not sent, created before ``orphaned_before``). A taken row is ours and not due again for
        ``hold`` seconds, so two senders never take the same row at once."""
        with self._cursor() as run:
            if row is not None:
                rows = run("SELECT id, owner, due_at FROM outbox WHERE id = %s AND held_for IS NULL",
                           (row,)).fetchall()
            elif message_id is not None or recipient is not None:
                rows = run("SELECT id, owner, due_at FROM outbox WHERE message_id = %s AND recipient = %s "
                           "AND held_for IS NULL", (message_id, (recipient or "").lower())).fetchall()
            else:
                rows = run("SELECT id, owner, due_at FROM outbox WHERE created_at < %s AND due_at <= %s "
                           "AND held_for IS NULL", (orphaned_before, now)).fetchall()
            taken = []
            for row_id, old_owner, due_at in rows:
                claim = run("UPDATE outbox SET owner = %s, due_at = %s WHERE id = %s AND owner = %s AND due_at = %s",
                            (owner, now + hold, row_id, old_owner, due_at))
                if claim.rowcount:
                    taken.append(row_id)
            found = []
            for row_id in taken:
                one = run("SELECT id, message_id, recipient, sender, target, body, sealed FROM outbox WHERE id = %s",
                          (row_id,)).fetchone()
                found.append(Queued(one[0], one[1], one[2], one[3], one[4], one[5].encode("ascii"), bool(one[6])))
        return found

    def outbox_done(self, row: str) -> None:
        with self._cursor() as run:
            run("DELETE FROM outbox WHERE id = %s", (row,))

    def outbox_size(self) -> int:
        with self._cursor() as run:
            return int(run("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def await_witness(self, message_id: str, recipient: str, digest: str, token: str) -> None:
        """Hand an unconfirmed record over to the MTA's word (a commit witness, :mod:`directmilter.witness`): until
        :meth:`confirm_witnessed` with ``token`` a copy of the message is PENDING (see :meth:`first_delivery`), in
        this process and in any other, and a restart loses nothing (the token is in the record)."""
        with self._cursor(durable=False) as run:
            run("UPDATE incoming_seen SET owner = %s WHERE message_id = %s AND recipient = %s AND digest = %s "
                "AND confirmed = 0", (_WITNESS_OWNER + token, message_id, recipient.lower(), digest))

    def confirm_witnessed(self, token: str) -> int:
        """The MTA kept the message of ``token``: its replay records are confirmed (copies are replays), or, for
        a message we send, its tracking starts. How many records."""
        with self._cursor(durable=False) as run:
            seen = run("UPDATE incoming_seen SET confirmed = 1 WHERE owner = %s AND confirmed = 0",
                       (_WITNESS_OWNER + token,)).rowcount
        with self._cursor() as run:
            sent = run("UPDATE outgoing SET witness = NULL WHERE witness = %s", (token,)).rowcount
        return int(seen) + int(sent)

    def drop_unwitnessed_outgoing(self, before: float) -> int:
        """Messages we accepted for sending whose witness did not come by ``before``: the MTA refused them after
        us (the client was told), so nobody waits for their confirmations."""
        with self._cursor() as run:
            return int(run("DELETE FROM outgoing WHERE witness IS NOT NULL AND sent_at < %s", (before,)).rowcount)

    def forget_delivery(self, message_id: str, recipient: str, digest: str) -> None:
        """Undo :meth:`first_delivery` when the message was not accepted after all (the client will retry)."""
        with self._cursor() as run:
            run("DELETE FROM incoming_seen WHERE message_id = %s AND recipient = %s AND digest = %s",
                (message_id, recipient.lower(), digest))


class Delivery(enum.Enum):
    """What :meth:`TrackingStore.first_delivery` found for a copy of an incoming message."""

    FIRST = "first"  # deliver it
    REPLAY = "replay"  # the same message was delivered before: drop it
    PENDING = "pending"  # an earlier copy waits for the MTA's word: ask again shortly


#: Owner of a record waiting for the MTA's word, before the witness token.
_WITNESS_OWNER = "witness:"


@dataclass(frozen=True)
class Held:
    """An outbox row held until the message it confirms is delivered (see :meth:`TrackingStore.outbox_add`)."""

    id: str
    held_for: str
    message_id: str | None
    recipient: str
    created_at: float


@dataclass(frozen=True)
class Queued:
    """A secured report waiting in the outbox to be handed to Postfix (already signed and encrypted: no PHI)."""

    id: str
    message_id: str | None
    recipient: str
    sender: str
    target: str
    body: bytes
    sealed: bool = True


def _state(processed: float | None, dispatched: float | None, failed: float | None) -> str:
    if failed is not None:
        return "failed"
    if dispatched is not None:
        return "dispatched"
    return "processed" if processed is not None else "pending"


def _private_file(path: Path) -> None:
    """The database holds who wrote to whom: made 0600 (SQLite gives its -wal and -shm files the database's own
    mode), and an existing one that others may read loses those bits. Outside systemd the umask is usually 022."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o007:
            with contextlib.suppress(OSError):  # another owner's file: theirs to fix, and no reason to stop
                path.chmod(mode & 0o770)
    except OSError as exc:
        raise ConfigError(f"tracking database {path}: cannot create it ({exc.strerror})") from None


def open_store(url: str) -> TrackingStore:
    """``sqlite:///var/lib/directmilter/tracking.db`` (default) or ``postgresql://user@host:port/db``."""
    if url.startswith("sqlite:"):
        location, _, query = url.removeprefix("sqlite:").removeprefix("//").partition("?")
        path = Path(location)
        if not path.parent.is_dir():
            raise ConfigError(f"tracking database {url}: folder {path.parent} does not exist")
        options = dict(item.partition("=")[::2] for item in query.split("&") if item)
        try:
            busy = float(options.pop("timeout", "30"))  # seconds to wait for a lock before deferring the message
        except ValueError:
            raise ConfigError(f"tracking database {url}: timeout must be a number of seconds") from None
        if options:
            raise ConfigError(f"tracking database {url}: unknown option(s) {', '.join(sorted(options))}")

        def connect_sqlite() -> sqlite3.Connection:
            _private_file(path)
            conn = sqlite3.connect(path, timeout=busy, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.isolation_level = "DEFERRED"
            return conn

        # WAL: a commit with synchronous=NORMAL reaches the log but waits for no disk flush (FULL does).
        return TrackingStore(connect_sqlite, "?", str(path), ("PRAGMA synchronous=FULL", "PRAGMA synchronous=NORMAL"))
    if url.startswith(("postgresql:", "postgres:")):
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ConfigError(f"tracking database {url}: the psycopg package is not installed") from exc

        def connect_pg() -> Any:
            return psycopg.connect(url, connect_timeout=10)

        return TrackingStore(connect_pg, "%s", url.split("@")[-1], ("", "SET LOCAL synchronous_commit TO OFF"))
    raise ConfigError(f"tracking database {url!r}: use sqlite:/path or postgresql://...")
