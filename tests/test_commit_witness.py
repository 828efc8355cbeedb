"""Issue 20: a processed MDN was sent, and the replay record confirmed, before Postfix had kept the message.

Postfix tells a milter nothing when a milter after it refuses the message at end of data (no abort follows our
accept; tried on Postfix 3.7): the sender got a processed MDN for a message the HISP had refused with 451, and the
client's retry was taken for a replay, answered 250 and dropped. The message was lost. With [notify]
commit_witness, directmilter adds a witness recipient that only a queued message delivers, through the
re-injection listener (directmilter.witness); MDNs and the replay record wait for it.

The rig: HISP A is a private Postfix whose smtpd_milters are directmilter and, after it, tests/rejectmilter.py,
which refuses at end of message while a flag file exists; then the same with a private Sendmail (tests/sendmail.py)
whose INPUT_MAIL_FILTERs are the same two. Bob's Direct message to alice is refused once by the
second milter, then sent again.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import opensslpeer as peer
import pytest
from conftest import World
from milterd import Milterd
from mta import Postfix, Sink, free_port, scratch_dir, submit, wait_until
from sendmail import Sendmail

ALICE, BOB = "alice@direct.a.test", "bob@direct.b.test"


@pytest.fixture(scope="module", params=["postfix", "sendmail"])
def rig(world: World, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """HISP A on Postfix, then on Sendmail (etc/sendmail/directmilter.m4 routes the witness there), with the
    refusing milter after directmilter."""
    with scratch_dir("directmilter-witness-") as root, Sink(root / "b") as b:
        flag, port = root / "refuse", free_port()
        rejecter = subprocess.Popen([sys.executable, str(Path(__file__).with_name("rejectmilter.py")), str(port),
                                     str(flag)])
        try:
            tracking, relay = f"sqlite:{root}/tracking-a.db", {"direct.b.test": f"127.0.0.1:{b.port}"}
            a: Postfix | Sendmail
            if request.param == "postfix":
                a = Postfix(root=root / "a", name="mx.a.test", mailboxes={ALICE: "alice"}, relay=relay)
                conf = world.hisp_a_on_postfix("witness-a", a, tracking, 30, [world.bob])
            else:
                a = Sendmail(root / "a", name="mx.a.test", milter="", milters=[f"inet:{port}@127.0.0.1"],
                             mailboxes={ALICE: "alice"}, relay=relay)
                conf = world.hisp_a_on_sendmail("witness-a-sendmail", a, tracking, 30, [world.bob])
            with Milterd(conf, root / "milter-a.log") as milter:
                if isinstance(a, Postfix):
                    a.use_milter(f"{milter.postfix_spec}, inet:127.0.0.1:{port}")
                else:
                    a.milter = milter.milter_spec
                with a:
                    yield {"a": a, "b": b, "flag": flag, "root": root, "conf": conf}
        finally:
            rejecter.kill()
            rejecter.wait()


def from_bob(world: World, number: int) -> bytes:
    content = (f"From: {BOB}\r\nTo: {ALICE}\r\nSubject: results\r\nMessage-ID: <witness-{number}@direct.b.test>\r\n"
               "Content-Type: text/plain\r\n\r\nresults\r\n").encode()
    signed = peer.sign(b"Content-Type: message/rfc822\r\n\r\n" + content, world.bob)
    return (f"From: {BOB}\r\nTo: {ALICE}\r\nMessage-ID: <witness-{number}@direct.b.test>\r\n".encode()
            + peer.encrypt(signed, [world.alice.cert_path]))


def refused_after_us(rig: dict[str, Any], port: int, sender: str, recipient: str, message: bytes) -> None:
    """Send ``message`` while the milter after directmilter refuses everything: 451 at end of data."""
    rig["flag"].touch()
    try:
        refused = submit(port, sender, [recipient], message)
    finally:
        rig["flag"].unlink()
    assert refused.data is not None and refused.data[0] == 451, refused


@pytest.mark.conformance("AS-3.1.1-1")
def test_a_message_refused_after_our_accept_gets_no_mdn_and_its_retry_is_delivered(world: World,
                                                                                   rig: dict[str, Any]) -> None:
    """Refused with 451 by the milter after directmilter: no processed MDN leaves, nothing is delivered. The
    client's retry (at once here: it waits witness.SETTLE for a witness that does not come) is delivered, not
    taken for a replay, and confirmed by exactly one MDN; a third copy is a replay."""
    a, b = rig["a"], rig["b"]
    wire = from_bob(world, 1)

    def mdns() -> list[Any]:  # the MDNs at B about this message (the other tests' mail may be at B too)
        return [m for m in b.messages() if m.rcpts == [BOB] and b"<witness-1@direct.b.test>" in peer.decrypt(
            m.data, world.bob)]

    def copies() -> list[bytes]:
        return [m for m in a.maildir(ALICE) if b"<witness-1@direct.b.test>" in m]

    refused_after_us(rig, a.smtp_port, BOB, ALICE, wire)
    time.sleep(2)  # mdn_delay 0.2 s and sweeps every 0.5 s: an MDN queued on our accept would have left by now
    assert mdns() == [] and copies() == []

    assert submit(a.smtp_port, BOB, [ALICE], wire).ok
    [delivered] = wait_until(copies, "alice's copy")
    assert b"results" in delivered and b"directmilter.invalid" not in delivered
    [mdn] = wait_until(mdns, "the processed MDN at B")
    assert b"application/pkcs7-mime" in mdn.data

    assert submit(a.smtp_port, BOB, [ALICE], wire).ok  # the same message again: a replay
    time.sleep(2)
    assert len(copies()) == 1 and len(mdns()) == 1
    assert "commit_witnessed" in (rig["root"] / "milter-a.log").read_text()


def test_a_message_sent_and_refused_after_our_accept_is_not_tracked(world: World, rig: dict[str, Any]) -> None:
    """alice's message refused with 451 by the milter after directmilter awaits no confirmation (alice would be
    told of a timeout for mail that never left); her client's retry, kept by Postfix, is tracked."""
    from conftest import plain_message

    from directmilter.tracking import open_store

    a, b = rig["a"], rig["b"]
    message_id = "<witness-out-1@direct.a.test>"
    message = plain_message(sender=ALICE, to=BOB).replace(b"<test-1@direct.a.test>", message_id.encode())
    store = open_store(f"sqlite:{rig['root']}/tracking-a.db")
    try:
        def awaited() -> list[str]:
            return [o.recipient for o in store.overdue(time.time() + 3600, 60, 60) if o.message_id == message_id]

        refused_after_us(rig, a.submission_port, ALICE, BOB, message)
        time.sleep(2)  # a witness would have come by now
        assert awaited() == [] and not [m for m in b.messages() if message_id.encode() in m.data]

        retried = submit(a.submission_port, ALICE, [BOB], message)
        assert retried.ok, (retried, (rig["root"] / "milter-a.log").read_text()[-3000:])
        wait_until(lambda: awaited() == [BOB], "the kept message to be tracked")
        [sent] = wait_until(lambda: [m for m in b.messages() if message_id.encode() in m.data], "the secured copy at B")
        assert b"application/pkcs7-mime" in sent.data and b"directmilter.invalid" not in sent.data
    finally:
        store.close()


def test_witness_addresses_are_read_exactly() -> None:
    from directmilter import witness

    token = witness.new_token()
    assert witness.token_of(f"<{witness.address(token)}>") == token
    assert witness.token_of(witness.address(token).upper()) == token
    for other in (f"commit+{token[:-1]}@directmilter.invalid", f"commit+{token}@directmilter.invalid.evil.test",
                  f"x-commit+{token}@directmilter.invalid", f"commit+{token}@direct.a.test", ""):
        assert witness.token_of(other) is None, other


def test_a_witness_that_never_comes_drops_the_mdns_and_lets_a_retry_through(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit level, one process: the MDN of an accepted message waits in the outbox for the witness. A copy of the
    message meanwhile waits for the witness: none within witness.SETTLE, it is delivered (the first copy was
    refused); after witness.WAIT without a witness the MDN is dropped. A copy that arrives while the witness is
    on its way is a replay once the witness comes, and the MDN is released."""
    import threading
    from typing import cast

    from conftest import plain_message

    from directmilter import witness
    from directmilter.config import NotifySettings
    from directmilter.delivery.service import Confirmations
    from directmilter.tracking import open_store

    monkeypatch.setattr(witness, "SETTLE", 1.0)
    settings = NotifySettings(reinject=("127.0.0.1", 9), commit_witness=True, mdn_delay=3600)
    service = Confirmations(cast(Any, None), settings, open_store(f"sqlite:{tmp_path}/t.db"))
    message = plain_message(sender=BOB, to=ALICE)

    def held() -> list[str]:
        return [h.held_for for h in service.store.outbox_held()]

    decision = service.screen_incoming(message, BOB, [ALICE])
    token = service.await_commit(decision)
    service.confirm(decision, commit=token)
    assert held() == [f"commit:{token}"]
    started = time.monotonic()
    assert service.screen_incoming(message, BOB, [ALICE]).deliver_to == (ALICE,)  # no witness came: a retry
    assert time.monotonic() - started >= 0.9
    service._expire_unwitnessed(time.time() + witness.WAIT + 1)
    assert held() == [] and service.store.outbox_size() == 0

    second = message.replace(b"test-1@", b"test-2@")
    decision = service.screen_incoming(second, BOB, [ALICE])
    token = service.await_commit(decision)
    service.confirm(decision, commit=token)
    monkeypatch.setattr(witness, "SETTLE", 30.0)
    arrives = threading.Timer(0.5, service.witnessed, (token,))
    arrives.start()
    started = time.monotonic()
    assert service.screen_incoming(second, BOB, [ALICE]).deliver_to == ()  # waited for the witness: a replay
    arrives.join()
    assert time.monotonic() - started < 5
    assert held() == [] and service.store.outbox_size() == 1  # released, due
    assert service.screen_incoming(second, BOB, [ALICE]).deliver_to == ()
    assert not service.witnessed(witness.new_token())
    service.store.close()


def test_a_copy_is_neither_delivered_nor_dropped_while_the_clock_stands_still(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait for an earlier copy's witness is bounded by the monotonic clock, not only by the store's wall
    clock: with the wall clock standing still the earlier copy's record never ages past witness.SETTLE, and the
    copy is deferred (4.x.x, DeliveryUndecided) rather than waited for forever or guessed. Recipients it had
    already claimed are released, so the client's retry of it is no replay for them either."""
    from typing import cast

    from conftest import plain_message

    from directmilter import witness
    from directmilter.config import NotifySettings
    from directmilter.delivery.service import Confirmations
    from directmilter.errors import DeliveryUndecided
    from directmilter.tracking import open_store

    monkeypatch.setattr(witness, "SETTLE", 0.5)
    settings = NotifySettings(reinject=("127.0.0.1", 9), commit_witness=True, mdn_delay=3600)
    service = Confirmations(cast(Any, None), settings, open_store(f"sqlite:{tmp_path}/t.db"))
    message, al2 = plain_message(sender=BOB, to=ALICE), "al2@direct.a.test"
    decision = service.screen_incoming(message, BOB, [ALICE])
    service.confirm(decision, commit=service.await_commit(decision))  # its witness is on the way

    frozen = time.time()
    monkeypatch.setattr(time, "time", lambda: frozen)
    started = time.monotonic()
    with pytest.raises(DeliveryUndecided, match=f"recipient {ALICE}: .*retry later"):
        service.screen_incoming(message, BOB, [al2, ALICE])
    assert 1.4 < time.monotonic() - started < 5  # witness.SETTLE + 1 on the monotonic clock
    monkeypatch.undo()
    assert service.screen_incoming(message, BOB, [al2]).deliver_to == (al2,)  # al2's claim was released
    service.store.close()
