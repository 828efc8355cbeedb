"""Delivery confirmation end to end through two private Postfix instances (AS 3).

A sends to B; B's milter queues a secured processed MDN back through B's milter-free listener; A's milter
decrypts it, matches it to the tracked message and consumes it. A recipient at a HISP that never answers (a sink)
earns alice a failed DSN after the (shortened) timeout. A replayed message is delivered once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CANARY, World, plain_message
from milterd import Milterd
from mta import Postfix, Sink, scratch_dir, submit, wait_until
from pgserver import Postgres, find_bindir

from directmilter.notify import parse_notification
from directmilter.tracking import open_store

ALICE, BOB = "alice@direct.a.test", "bob@direct.b.test"


@pytest.fixture(scope="module")
def hisps(world: World) -> Iterator[dict[str, Any]]:
    """A tracks in PostgreSQL (as a HISP with several hosts would), B in the default SQLite."""
    if find_bindir() is None:
        pytest.fail("PostgreSQL server binaries are not installed (scripts/bootstrap installs 'postgresql')")
    with scratch_dir("directmilter-mdn-") as root, Sink(root / "nowhere") as nowhere, Postgres(root / "pg") as pg:
        milter_a = Milterd(world.directory / "mdn-a.conf", root / "milter-a.log")
        milter_b = Milterd(world.directory / "mdn-b.conf", root / "milter-b.log")
        a = Postfix(root=root / "a", name="mx.a.test", mailboxes={ALICE: "alice"}, milter=milter_a.postfix_spec)
        # bob2's delivery fails after acceptance; Postfix's bounce passes B's milter, which secures it.
        b = Postfix(root=root / "b", name="mx.b.test", mailboxes={BOB: "bob"}, milter=milter_b.postfix_spec,
                    relay={"direct.a.test": f"127.0.0.1:{a.smtp_port}"},
                    main_cf={"non_smtpd_milters": milter_b.postfix_spec, "internal_mail_filter_classes": "bounce",
                             "smtpd_reject_unlisted_recipient": "no",
                             "transport_maps": "inline:{ bob2@direct.b.test=error:5.2.1_mailbox_disabled } "
                                               f"texthash:{root / 'b' / 'etc' / 'transport'}"})
        a.relay.update({"direct.b.test": f"127.0.0.1:{b.smtp_port}", "silent.test": f"127.0.0.1:{nowhere.port}"})
        a.write_config()
        silent = world.pki.leaf("silent", world.r1, email="nobody@silent.test")
        tracking_a = pg.create_database("tracking_a")
        milter = {"internal_hosts": [], "submission_daemons": ["ORIGINATING"]}
        body_a = world.hisp_a_body()
        body_a["certificates"]["files"].append(str(silent.cert_path))
        world.write_config("mdn-a", {**body_a, "milter": milter, "notify": {
            "reinject": f"127.0.0.1:{a.reinject_port}", "tracking": tracking_a, "processed_timeout": 3,
            "dispatched_timeout": 3, "sweep_interval": 0.5, "mdn_delay": 0.2}})
        # B reads its Postfix (postconf, postqueue): a dispatched MDN waits until the message left B's queue unbounced.
        world.write_config("mdn-b", {**world.hisp_b_body(), "milter": {**milter, "postfix_config": str(b.etc)},
                                     "notify": {
            "reinject": f"127.0.0.1:{b.reinject_port}", "tracking": f"sqlite:{root}/tracking-b.db",
            "mdn_delay": 0.2, "sweep_interval": 0.5}})
        with milter_a, milter_b, a, b:
            yield {"a": a, "b": b, "tracking_a": tracking_a, "root": root, "nowhere": nowhere, "milter_a": milter_a}


@pytest.mark.conformance("AS-3.2-1", "AS-3.2-2", "AS-3.0-3", "AS-3.0-4", "AS-3.1.1-5", "AS-3.1.1-1")
def test_processed_mdn_comes_back_secured_and_is_matched(hisps: dict[str, Any]) -> None:
    message = plain_message().replace(b"<test-1@direct.a.test>", b"<mdn-1@direct.a.test>")
    assert submit(hisps["a"].submission_port, ALICE, [BOB], message).ok
    wait_until(lambda: hisps["b"].maildir(BOB), "bob's copy")
    store = open_store(hisps["tracking_a"])
    try:
        states = wait_until(lambda: [s for s in store.states("<mdn-1@direct.a.test>") if s.state == "processed"],
                            "the processed MDN to be matched at A")
    finally:
        store.close()
    assert [s.recipient for s in states] == [BOB]
    # consumed by tracking, not delivered to alice (other tests' reports may be in her mailbox)
    assert not [m for m in hisps["a"].maildir(ALICE) if b"mdn-1@direct.a.test" in m]
    log_b = (hisps["root"] / "milter-b.log").read_text()
    assert "mdn_sent" in log_b and "<>" not in log_b.split("mdn_sent")[1].splitlines()[0]
    maillog_b = hisps["b"].maillog()
    assert "from=<bob@direct.b.test>" in maillog_b  # the MDN's envelope sender is not null


def _exchange(hisps: dict[str, Any], message_id: str) -> None:
    """alice -> bob with this Message-ID, until A has matched bob's processed MDN (each test sends its own)."""
    message = plain_message().replace(b"<test-1@direct.a.test>", message_id.encode())
    assert submit(hisps["a"].submission_port, ALICE, [BOB], message).ok
    store = open_store(hisps["tracking_a"])
    try:
        wait_until(lambda: [s for s in store.states(message_id) if s.state == "processed"],
                   f"the processed MDN for {message_id} to be matched at A")
    finally:
        store.close()


@pytest.mark.conformance("AS-3.2-5")
def test_each_confirmation_sent_or_received_has_one_audit_record(hisps: dict[str, Any]) -> None:
    """B logs the MDN it sent and A the one it received: time, queue id, both Message-IDs, recipient, outcome;
    neither log holds the Subject (the canary) or the body."""
    _exchange(hisps, "<audit-1@direct.a.test>")
    sent = wait_until(lambda: [line for line in (hisps["root"] / "milter-b.log").read_text().splitlines()
                               if "mdn_sent" in line and "<audit-1@direct.a.test>" in line], "B's mdn_sent record")
    received = [line for line in (hisps["root"] / "milter-a.log").read_text().splitlines()
                if "report_received" in line and "<audit-1@direct.a.test>" in line]
    assert len(sent) == 1 and len(received) == 1, (sent, received)
    for line, fields in ((sent[0], ("timestamp=", "queue_id='", "mdn_message_id='<", "recipient='bob@")),
                         (received[0], ("timestamp=", "queue_id='", "report_message_id='<", "consumed=True"))):
        assert all(f in line for f in fields), line
    for name in ("milter-a.log", "milter-b.log"):
        text = (hisps["root"] / name).read_text()
        assert CANARY not in text and "Patient summary" not in text


@pytest.mark.conformance("AS-3.0-5")
def test_reports_are_never_answered_with_reports(hisps: dict[str, Any]) -> None:
    """A receives bob's MDN (consumed by tracking) and sends no MDN about it back, now or a moment later."""
    _exchange(hisps, "<noanswer-1@direct.a.test>")
    time.sleep(1)  # MDNs go 0.2 s after acceptance
    log_a = (hisps["root"] / "milter-a.log").read_text()
    assert any("report_received" in line and "<noanswer-1@direct.a.test>" in line for line in log_a.splitlines())
    assert "mdn_sent" not in log_a  # A received MDNs and sent none back


def test_silent_recipient_earns_the_sender_a_failed_dsn(hisps: dict[str, Any]) -> None:
    message = plain_message(to="nobody@silent.test").replace(b"<test-1@", b"<silent-1@")
    assert submit(hisps["a"].submission_port, ALICE, ["nobody@silent.test"], message).ok
    hisps["nowhere"].wait(1)
    [dsn] = wait_until(lambda: [m for m in hisps["a"].maildir(ALICE) if b"silent-1@direct.a.test" in m],
                       "alice's failed DSN", timeout=30)
    report = parse_notification(dsn.replace(b"\n", b"\r\n"))
    assert report is not None and report.kind == "dsn"
    assert report.original_message_id == "<silent-1@direct.a.test>"
    assert report.recipients[0].final_recipient == "nobody@silent.test"
    assert report.recipients[0].result == "failed"


@pytest.mark.conformance("AS-3.1.2-2", "AS-3.3-5")
def test_failed_dsn_reaches_the_sender_and_tracking_after_the_processed_mdn(hisps: dict[str, Any]) -> None:
    """alice -> bob2, whose mailbox fails at B after acceptance: A's tracking sees processed and then failed, and
    the decrypted DSN reaches alice (a failure is never consumed), naming bob2 and the original Message-ID."""
    message = plain_message(to="bob2@direct.b.test").replace(b"<test-1@", b"<fails-1@")
    assert submit(hisps["a"].submission_port, ALICE, ["bob2@direct.b.test"], message).ok
    store = open_store(hisps["tracking_a"])
    try:
        [state] = wait_until(lambda: [s for s in store.states("<fails-1@direct.a.test>") if s.state == "failed"],
                             "the failed DSN to be matched at A")
    finally:
        store.close()
    assert state.recipient == "bob2@direct.b.test"
    [copy] = wait_until(lambda: [m for m in hisps["a"].maildir(ALICE) if b"fails-1@direct.a.test" in m],
                        "the DSN in alice's mailbox")
    assert b"pkcs7-mime" not in copy  # A decrypted it: alice reads it like any report
    dsn = parse_notification(copy.replace(b"\n", b"\r\n"))
    assert dsn is not None and dsn.kind == "dsn" and dsn.original_message_id == "<fails-1@direct.a.test>"
    assert dsn.recipients[0].final_recipient == "bob2@direct.b.test" and dsn.recipients[0].result == "failed"


def test_tracking_survives_a_milter_restart(hisps: dict[str, Any]) -> None:
    """A's milter restarts between sending and the MDN's arrival: the record is still there and gets matched."""
    message = plain_message().replace(b"<test-1@", b"<restart-1@")
    assert submit(hisps["a"].submission_port, ALICE, [BOB], message).ok
    hisps["milter_a"].stop()  # the message is tracked; A's milter goes away before the MDN can arrive
    try:
        time.sleep(1)  # B's MDN meets a 4xx at A meanwhile and stays in B's queue
    finally:
        hisps["milter_a"].start()
    # Matched, whatever the state says: with A's processed_timeout of 3 s a slow retry of B's MDN may come after
    # alice was told of a timeout, and then "failed" stays (the later MDN changes nothing, by design).
    log = hisps["root"] / "milter-a.log"
    wait_until(lambda: [line for line in log.read_text().splitlines() if "report_received" in line
                        and "<restart-1@direct.a.test>" in line and "matched=True" in line],
               "the MDN to be matched after the restart", timeout=60)
    store = open_store(hisps["tracking_a"])
    try:
        assert [s.state for s in store.states("<restart-1@direct.a.test>")] in (["processed"], ["failed"])
    finally:
        store.close()


def test_replayed_message_is_delivered_once(world: World, hisps: dict[str, Any]) -> None:
    import opensslpeer as peer

    signed = peer.sign(b"Content-Type: text/plain\r\n\r\nonce only\r\n", world.alice)
    wire = (b"From: alice@direct.a.test\r\nTo: bob@direct.b.test\r\nMessage-ID: <replay-1@direct.a.test>\r\n"
            + peer.encrypt(signed, [world.bob.cert_path]))
    def copies() -> int:  # other tests' messages to bob may still be arriving: count this one only
        return sum(b"once only" in m for m in hisps["b"].maildir(BOB))

    first = submit(hisps["b"].smtp_port, ALICE, [BOB], wire)
    second = submit(hisps["b"].smtp_port, ALICE, [BOB], wire)
    # the replay is accepted and discarded, so the sender does not retry it; it arrives before the first copy's
    # commit witness has come back, waits for it, and is then a replay (issue 20: it was delivered again)
    assert first.ok and second.ok, (first, second)
    wait_until(lambda: copies() > 0, "the first copy")
    time.sleep(1)
    log = (hisps["root"] / "milter-b.log").read_text()
    assert copies() == 1, log[-3000:]
    assert "replay" in log and "<replay-1@direct.a.test>" in log


def test_dispatched_mdn_when_final_delivery_was_requested(hisps: dict[str, Any]) -> None:
    """X-DIRECT-FINAL-DESTINATION-DELIVERY asked for: B sends processed and dispatched; A's tracking shows both."""
    message = plain_message(extra=b"Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY="
                                  b"optional,true\r\n").replace(b"<test-1@", b"<dispatch-1@")
    assert submit(hisps["a"].submission_port, ALICE, [BOB], message).ok
    store = open_store(hisps["tracking_a"])
    try:
        wait_until(lambda: [s for s in store.states("<dispatch-1@direct.a.test>") if s.state == "dispatched"],
                   "the dispatched MDN to be matched at A")
    finally:
        store.close()
    assert "disposition='dispatched'" in (hisps["root"] / "milter-b.log").read_text()


@pytest.mark.conformance("AS-3.0-7", "AS-3.1.2-1", "AS-3.1.2-3", "AS-3.1.2-4", "AS-3.3-1", "AS-3.3-5")
def test_postfix_bounce_becomes_a_secured_dsn_after_the_processed_mdn(world: World) -> None:
    """B accepts a Direct message for bob2, whose delivery then fails. Postfix's bounce (which would carry the
    decrypted note) passes the milter (internal_mail_filter_classes = bounce) and is replaced: A's side (a wire
    sink) gets bob2's processed MDN and then a DSN with X-Original-Message-ID, both signed and encrypted, with a
    non-null envelope sender, and never the note itself."""
    import opensslpeer as peer

    with scratch_dir("directmilter-bounce-") as root, Sink(root / "wire") as wire:
        milter = Milterd(world.directory / "bounce-b.conf", root / "milter.log")
        b = Postfix(root=root / "b", name="mx.b.test", mailboxes={BOB: "bob"}, milter=milter.postfix_spec,
                    relay={"direct.a.test": f"127.0.0.1:{wire.port}"},
                    main_cf={"non_smtpd_milters": milter.postfix_spec, "internal_mail_filter_classes": "bounce",
                             "smtpd_reject_unlisted_recipient": "no",
                             "transport_maps": "inline:{ bob2@direct.b.test=error:5.2.1_mailbox_disabled } "
                                               f"texthash:{root / 'b' / 'etc' / 'transport'}"})
        world.write_config("bounce-b", {**world.hisp_b_body(), "milter": {"internal_hosts": [],
                                                                            "submission_daemons": []},
                                         "notify": {"reinject": f"127.0.0.1:{b.reinject_port}",
                                                    "tracking": f"sqlite:{root}/tracking-b.db", "mdn_delay": 0.5}})
        signed = peer.sign(b"Content-Type: text/plain\r\n\r\nsecret clinical note\r\n", world.alice)
        message = (b"From: alice@direct.a.test\r\nTo: bob2@direct.b.test\r\nMessage-ID: <bounce-1@direct.a.test>\r\n"
                   + peer.encrypt(signed, [world.bob2.cert_path]))
        with milter, b:
            assert submit(b.smtp_port, ALICE, ["bob2@direct.b.test"], message).ok
            arrived = wait_until(lambda: len(wire.messages()) >= 2 and wire.messages(), "the MDN and the DSN")
            # Null-sender mail from an SMTP client is refused: only this host's Postfix has reports secured.
            forged = submit(b.smtp_port, "", [ALICE], plain_message())
            time.sleep(1)
            log = (root / "milter.log").read_text()
            assert len(wire.messages()) == 2
    assert not forged.accepted and forged.refused[ALICE][0] == 550, forged
    assert "sent by this host's MTA only" in forged.refused[ALICE][1]
    assert all(b"secret clinical note" not in m.data and b"application/pkcs7-mime" in m.data for m in arrived)
    assert {m.mail_from for m in arrived} == {"bob2@direct.b.test"}  # AS 3.1.2: not the null sender
    reports = [parse_notification(peer.verify(peer.decrypt(m.data, world.alice), None)) for m in arrived]
    by_kind = {r.kind: r for r in reports if r is not None}
    assert set(by_kind) == {"mdn", "dsn"}
    dsn = by_kind["dsn"]
    assert dsn.original_message_id == "<bounce-1@direct.a.test>" and dsn.correlated_by == "x-original-message-id"
    assert dsn.sender == "bob2@direct.b.test" and dsn.message_id
    [result] = dsn.recipients
    assert (result.final_recipient, result.result, result.status) == ("bob2@direct.b.test", "failed", "5.0.0")
    assert "mailbox_disabled" in (result.text or "")  # the cause Postfix gave, passed on (AS 3.3)
    assert by_kind["mdn"].recipients[0].result == "processed"
    assert log.index("mdn_sent") < log.index("dsn_sent")  # AS 3.3: the failure only after the processed MDN
    assert "bounce_secured" in log


@pytest.mark.conformance("AS-3.1.2-1")
def test_recipient_removed_at_end_of_message_earns_the_sender_a_dsn(tmp_path: Path) -> None:
    """A recipient dropped at end of message (say its certificate was revoked since RCPT): alice hears at once."""
    from typing import cast

    from directmilter.config import NotifySettings
    from directmilter.delivery.service import Confirmations
    from directmilter.errors import CertificateRevoked

    with scratch_dir("directmilter-removed-") as root, Sink(root / "listener") as listener:
        settings = NotifySettings(reinject=("127.0.0.1", listener.port), mdn_delay=0)
        service = Confirmations(cast(Any, None), settings, open_store(f"sqlite:{tmp_path}/t.db")).start()
        try:
            removed = {"carol@direct.b.test": CertificateRevoked("recipient carol@direct.b.test: certificate "
                                                                 "revoked (issuer CN=R2, serial 7)")}
            service.after_outgoing(plain_message(to=BOB), ALICE, [BOB], removed)
            [got] = listener.wait(1)
        finally:
            service.stop()
    assert got.mail_from == "postmaster@direct.a.test" and got.rcpts == [ALICE]
    report = parse_notification(got.data)
    assert report is not None and report.kind == "dsn" and report.original_message_id == "<test-1@direct.a.test>"
    [result] = report.recipients
    assert (result.final_recipient, result.result, result.status) == ("carol@direct.b.test", "failed", "5.7.1")
    assert "certificate revoked" in (result.text or "")  # the cause, never the content or Subject
    assert b"Patient" not in got.data and CANARY.encode() not in got.data


def _states(hisps: dict[str, Any], message_id: str) -> dict[str, str]:
    store = open_store(hisps["tracking_a"])
    try:
        return {s.recipient: s.state for s in store.states(message_id)}
    finally:
        store.close()


def _mdns_sent_by_b(hisps: dict[str, Any], message_id: str) -> list[str]:
    return [line for line in (hisps["root"] / "milter-b.log").read_text().splitlines()
            if "mdn_sent" in line and message_id in line]


FINAL = b"Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true\r\n"


@pytest.mark.conformance("AS-3.2-1", "AS-3.3-5")
def test_final_delivery_confirmation_reaches_the_sender_once(hisps: dict[str, Any]) -> None:
    """Final delivery asked for: B sends processed and dispatched. At A the processed MDN is consumed and the
    first dispatched MDN is delivered to alice (Implementation Guide for Delivery Notification): she learns of the
    final delivery, once."""
    message_id = "<dispatch-2@direct.a.test>"
    message = plain_message(extra=FINAL).replace(b"<test-1@direct.a.test>", message_id.encode())
    assert submit(hisps["a"].submission_port, ALICE, [BOB], message).ok

    def confirmations() -> list[bytes]:
        return [m for m in hisps["a"].maildir(ALICE) if message_id.encode() in m and b"disposition-notification" in m]

    [mdn] = wait_until(confirmations, "the dispatched MDN in alice's mailbox")
    report = parse_notification(mdn.replace(b"\n", b"\r\n"))
    assert report is not None and report.kind == "mdn" and report.recipients[0].result == "dispatched"
    assert wait_until(lambda: _states(hisps, message_id).get(BOB) == "dispatched", "tracking at A")
    time.sleep(2)
    assert len(confirmations()) == 1  # the processed MDN was consumed, nothing came twice
    # B logs each MDN once its Postfix took it; under load that line can come after A has the MDN.
    def both() -> list[str] | None:
        lines = _mdns_sent_by_b(hisps, message_id)
        return lines if len(lines) >= 2 else None

    sent = wait_until(both, "B's record of both MDNs")
    assert [("dispatched" in line) for line in sent] == [False, True], sent  # processed first, then dispatched


@pytest.mark.conformance("AS-3.3-1", "AS-3.3-5")
def test_no_dispatched_mdn_for_mail_that_bounced_after_acceptance(hisps: dict[str, Any]) -> None:
    """Final delivery asked for, but bob2's mailbox fails after B accepted the message: A hears processed and then
    failed, never "dispatched" (which would claim final delivery)."""
    message_id = "<fails-2@direct.a.test>"
    message = plain_message(to="bob2@direct.b.test", extra=FINAL).replace(b"<test-1@direct.a.test>",
                                                                          message_id.encode())
    assert submit(hisps["a"].submission_port, ALICE, ["bob2@direct.b.test"], message).ok
    assert wait_until(lambda: _states(hisps, message_id).get("bob2@direct.b.test") == "failed", "the failure at A")
    time.sleep(2)
    assert _states(hisps, message_id)["bob2@direct.b.test"] == "failed"
    sent = _mdns_sent_by_b(hisps, message_id)
    assert sent and not any("dispatched" in line for line in sent), sent


@pytest.mark.conformance("AS-3.1.1-1", "ALG-16")
def test_a_recipient_refused_at_end_of_message_gets_no_mdn(world: World, hisps: dict[str, Any]) -> None:
    """Issue 20 (a mutant the suite let through: MDNs queued for every RCPT TO, refused ones included): alice's
    message to bob and carol at B is encrypted to bob only. carol is refused at end of message (removed, nothing
    delivered to her), bob's copy is delivered, and exactly one processed MDN leaves B: bob's."""
    import opensslpeer as peer

    message_id = "<refused-one@direct.a.test>"
    content = plain_message(to="bob@direct.b.test, carol@direct.b.test").replace(b"<test-1@direct.a.test>",
                                                                                 message_id.encode())
    signed = peer.sign(b"Content-Type: message/rfc822\r\n\r\n" + content, world.alice)
    wire = (f"From: {ALICE}\r\nTo: bob@direct.b.test, carol@direct.b.test\r\nMessage-ID: {message_id}\r\n".encode()
            + peer.encrypt(signed, [world.bob.cert_path]))
    assert submit(hisps["b"].smtp_port, ALICE, [BOB, "carol@direct.b.test"], wire).ok
    wait_until(lambda: [m for m in hisps["b"].maildir(BOB) if message_id.encode() in m], "bob's copy")
    [sent] = wait_until(lambda: _mdns_sent_by_b(hisps, message_id), "bob's processed MDN")
    time.sleep(2)  # MDNs go 0.2 s after acceptance: one for carol would have left by now
    assert _mdns_sent_by_b(hisps, message_id) == [sent] and "recipient='bob@direct.b.test'" in sent, sent
