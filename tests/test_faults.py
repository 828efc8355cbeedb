"""Faults of what directmilter depends on: each ends in a tempfail or a retried action, never in unprocessed mail
accepted and never in lost state. (DNS and LDAP servers that do not answer: tests/test_discovery.py; an OCSP
responder that is down: tests/test_revocation.py; a milter killed under load: tests/test_load.py.)"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import World, attached_message, envelope, plain_message
from milterd import Milterd
from mta import Postfix, Sink, fill, free_port, scratch_dir, submit, tmpfs, wait_until
from revocation import OcspResponder

from directmilter.agent import Agent
from directmilter.config import NotifySettings, load_config
from directmilter.delivery import service as service_module
from directmilter.delivery.service import Confirmations, IncomingDecision
from directmilter.errors import RevocationUnavailable, TemporaryFailure
from directmilter.replies import reply_for
from directmilter.tracking import open_store

ALICE, BOB = "alice@direct.a.test", "bob@direct.b.test"


@pytest.mark.parametrize("policy", ["hard-fail", "soft-fail"])
def test_ocsp_responder_that_hangs(world: World, policy: str) -> None:
    """The responder accepts the connection and never answers: within the HTTP timeout, hard-fail defers and
    soft-fail accepts (status undetermined)."""
    with scratch_dir("directmilter-hang-") as root:
        inter = world.pki.intermediate(f"HANG-I-{policy}", world.r1)
        ocsp = OcspResponder(root / "ocsp", inter)
        leaf = world.pki.leaf(f"hang-dave-{policy}", inter, email="dave@direct.b.test", ocsp_url=ocsp.url)
        ocsp.set_good(leaf)
        ocsp.delay = 60
        body = world.hisp_a_body()
        body["certificates"] = {"files": [str(leaf.cert_path), str(inter.cert_path)]}
        body["trust"] = {"revocation": policy, "http_timeout": 1}
        agent = Agent(load_config(world.write_config(f"hang-{policy}", body)))
        message = envelope(plain_message(to="dave@direct.b.test"), ALICE, "dave@direct.b.test")
        with ocsp:
            started = time.monotonic()
            try:
                if policy == "hard-fail":
                    with pytest.raises(RevocationUnavailable, match="could not be determined") as caught:
                        agent.outgoing(message)
                    assert reply_for(caught.value).temporary
                else:
                    assert agent.outgoing(message).recipients == ("dave@direct.b.test",)
            finally:
                agent.close()
            assert time.monotonic() - started < 15


def test_locked_tracking_database_defers_and_loses_nothing(tmp_path: Path) -> None:
    """Another process holds the database: screening an incoming message is a TemporaryFailure (the client
    retries) and, once the lock is gone, the retry is delivered, not taken for a replay."""
    url = f"sqlite:{tmp_path}/t.db?timeout=0.5"
    service = Confirmations(cast(Any, None), NotifySettings(mdn=False), open_store(url))
    message = plain_message()
    blocker = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(TemporaryFailure, match="tracking store"):
            service.screen_incoming(message, ALICE, [BOB])
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    decision = service.screen_incoming(message, ALICE, [BOB])
    assert decision.deliver_to == (BOB,)
    service.store.close()


def test_full_disk_under_the_tracking_database_defers_and_loses_nothing(tmp_path: Path) -> None:
    """The tracking database's disk is full: screening is a TemporaryFailure (the client retries) and, once
    there is room, the retry is delivered, not taken for a replay."""
    with tmpfs(tmp_path / "db", "1m") as folder:
        service = Confirmations(cast(Any, None), NotifySettings(mdn=False), open_store(f"sqlite:{folder}/t.db"))
        message = plain_message()
        filler = fill(folder)
        try:
            with pytest.raises(TemporaryFailure, match="tracking store"):
                service.screen_incoming(message, ALICE, [BOB])
        finally:
            filler.unlink()
        assert service.screen_incoming(message, ALICE, [BOB]).deliver_to == (BOB,)
        service.store.close()


def test_full_disk_under_the_milter_defers_and_the_retry_is_sent(world: World) -> None:
    """The milter's temporary folder is full when a message past the spool threshold arrives: 451 (the client
    keeps it and retries; nothing leaves, in clear or otherwise); once there is room the retry is sealed and
    sent, and no spool file is left behind."""
    with scratch_dir("directmilter-full-") as root, Sink(root / "wire") as sink, \
            tmpfs(root / "tmp", "16m") as small:
        conf = world.write_config("full-disk", {"milter": {"internal_hosts": [], "submission_daemons": ["ORIGINATING"],
                                                           "workers": 1}, **world.hisp_a_body()})
        milter = Milterd(conf, root / "milter.log", env={"TMPDIR": str(small)}).start()
        a = Postfix(root=root / "a", name="mx.a.test", mailboxes={ALICE: "alice"},
                    relay={"direct.b.test": f"127.0.0.1:{sink.port}"}, milter=milter.postfix_spec).start()
        try:
            message = attached_message(3 << 20, tag="full")
            filler = fill(small)
            refused = submit(a.submission_port, ALICE, [BOB], message)
            filler.unlink()
            assert refused.code == 451 and "spooled to disk" in refused.reply[1], refused
            sent = submit(a.submission_port, ALICE, [BOB], message)
            assert sent.ok, sent
            [wire] = sink.wait(1, timeout=60)
        finally:
            a.stop()
            milter.stop()
        assert b"application/pkcs7-mime" in wire.data and b"Discharge summary" not in wire.data
        assert list(small.iterdir()) == []


def test_reinject_listener_down_keeps_the_mdn_until_it_is_back(world: World, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The MDN is sealed and kept in the outbox while Postfix's listener is down; the sweeper hands it over
    once the listener is back (Postfix then owns the retries)."""
    port = free_port()
    settings = NotifySettings(reinject=("127.0.0.1", port), mdn_delay=0, sweep_interval=0.3,
                              tracking=f"sqlite:{tmp_path}/t.db")
    agent = Agent(load_config(world.write_config("fault-b", world.hisp_b_body())))
    service = Confirmations(agent, settings, open_store(settings.tracking))
    service.start()
    try:
        original = plain_message()
        decision = IncomingDecision((BOB,), False, original, ALICE, "<test-1@direct.a.test>", "d")
        service.confirm(decision)
        time.sleep(1.0)  # the hand-over fails (connection refused) and is retried in memory
        assert service.store.outbox_size() == 1
        with scratch_dir("directmilter-fault-") as root, Sink(root / "listener", port=port) as listener:
            # (30 s in production) so the sweeper takes the kept MDN up at once
            monkeypatch.setattr("directmilter.delivery.service.ORPHAN_AFTER", 0.5)
            [got] = listener.wait(1, timeout=30)
        assert got.mail_from == BOB and got.rcpts == [ALICE]
        assert b"application/pkcs7-mime" in got.data  # sealed before it is handed over, never sent in clear
        assert service.store.outbox_size() == 0
    finally:
        service.stop()
        agent.close()


def test_confirmations_are_written_in_the_background_and_on_stop(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A started service confirms accepted deliveries a moment later, several in one transaction; what is still
    pending when it stops is written then. Until confirmed, the same process already treats a copy as a replay."""
    url = f"sqlite:{tmp_path}/t.db"
    service = Confirmations(cast(Any, None), NotifySettings(mdn=False), open_store(url)).start()
    decisions = [service.screen_incoming(plain_message().replace(b"test-1@", f"bg-{i}@".encode()), ALICE, [BOB])
                 for i in range(3)]
    assert service.screen_incoming(plain_message().replace(b"test-1@", b"bg-0@"), ALICE, [BOB]).deliver_to == ()

    def confirmed() -> int:
        with sqlite3.connect(tmp_path / "t.db") as db:
            return int(db.execute("SELECT COUNT(*) FROM incoming_seen WHERE confirmed = 1").fetchone()[0])

    for decision in decisions[:2]:
        service.committed(decision)
    wait_until(lambda: confirmed() == 2, "two confirmations written in the background")
    monkeypatch.setattr(service_module, "CONFIRM_EVERY", 3600.0)  # from its next round on, the thread sleeps
    time.sleep(0.3)
    service.committed(decisions[2])
    time.sleep(0.3)
    assert confirmed() == 2  # not written by committed() itself
    service.stop()
    assert confirmed() == 3  # written by stop()


def test_crypto_workers_do_not_outlive_a_killed_milter(world: World) -> None:
    """Issue 19: the workers hold every private key, and outlived the milter after SIGKILL. A process with a
    worker pool is killed with SIGKILL: its workers are gone within seconds."""
    import signal
    import subprocess
    import sys
    import textwrap

    from mta import _children, alive

    config = world.write_config("workers-die", world.hisp_a_body())
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from directmilter.agent import Agent
        from directmilter.config import load_config
        agent = Agent(load_config(Path({str(config)!r})), workers=2)
        agent.context.runner.warm_up()
        print("ready", flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
        workers = [pid for pid, name in _children(parent.pid).items() if "python" in name]
        assert len(workers) >= 2, _children(parent.pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()

    assert wait_until(lambda: not any(alive(p) for p in workers), "the workers to exit", timeout=10)
