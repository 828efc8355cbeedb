"""Delivery confirmation end to end through two private Postfix instances (AS 3).

A sends to B; B's milter queues a secured processed MDN back through B's milter-free listener; A's milter
decrypts it, matches it to the tracked message and consumes it. A recipient at a HISP that never answers (a sink)
earns alice a failed DSN after the (shortened) timeout. A replayed message is delivered once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import World, plain_message
from milterd import Milterd
from mta import Postfix, Sink, scratch_dir, submit

from directmilter.notify import parse_notification
from directmilter.tracking import open_store

ALICE, BOB = "alice@direct.a.test", "bob@direct.b.test"


def wait_until(condition: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return found


@pytest.fixture(scope="module")
def hisps(world: World) -> Iterator[dict[str, Any]]:
    with scratch_dir("directmilter-mdn-") as root, Sink(root / "nowhere") as nowhere:
        milter_a = Milterd(world.directory / "mdn-a.conf", root / "milter-a.log")
        milter_b = Milterd(world.directory / "mdn-b.conf", root / "milter-b.log")
        a = Postfix(root=root / "a", name="mx.a.test", mailboxes={ALICE: "alice"}, milter=milter_a.postfix_spec)
        b = Postfix(root=root / "b", name="mx.b.test", mailboxes={BOB: "bob"}, milter=milter_b.postfix_spec,
                    relay={"direct.a.test": f"127.0.0.1:{a.smtp_port}"})
        a.relay.update({"direct.b.test": f"127.0.0.1:{b.smtp_port}", "silent.test": f"127.0.0.1:{nowhere.port}"})
        a.write_config()
        silent = world.pki.leaf("silent", world.r1, email="nobody@silent.test")
        tracking_a = f"sqlite:{root}/tracking-a.db"
        milter = {"internal_hosts": [], "submission_daemons": ["ORIGINATING"]}
        body_a = world.hisp_a_body()
        body_a["certificates"]["files"].append(str(silent.cert_path))
        world.write_config("mdn-a", {**body_a, "milter": milter, "notify": {
            "reinject": f"127.0.0.1:{a.reinject_port}", "tracking": tracking_a, "processed_timeout": 3,
            "dispatched_timeout": 3, "sweep_interval": 0.5, "mdn_delay": 0.2}})
        world.write_config("mdn-b", {**world.hisp_b_body(), "milter": milter, "notify": {
            "reinject": f"127.0.0.1:{b.reinject_port}", "tracking": f"sqlite:{root}/tracking-b.db",
            "mdn_delay": 0.2}})
        with milter_a, milter_b, a, b:
            yield {"a": a, "b": b, "tracking_a": tracking_a, "root": root, "nowhere": nowhere}


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
    assert hisps["a"].maildir(ALICE) == []  # consumed by tracking, not delivered to alice
    log_b = (hisps["root"] / "milter-b.log").read_text()
    assert "mdn_sent" in log_b and "<>" not in log_b.split("mdn_sent")[1].splitlines()[0]
    maillog_b = hisps["b"].maillog()
    assert "from=<bob@direct.b.test>" in maillog_b  # the MDN's envelope sender is not null


@pytest.mark.conformance("AS-3.0-5")
def test_reports_are_never_answered_with_reports(hisps: dict[str, Any]) -> None:
    log_a = (hisps["root"] / "milter-a.log").read_text()
    assert "report_received" in log_a or "consumed" in log_a
    assert "mdn_sent" not in log_a  # A received an MDN and sent none back


def test_silent_recipient_earns_the_sender_a_failed_dsn(hisps: dict[str, Any]) -> None:
    message = plain_message(to="nobody@silent.test").replace(b"<test-1@", b"<silent-1@")
    assert submit(hisps["a"].submission_port, ALICE, ["nobody@silent.test"], message).ok
    hisps["nowhere"].wait(1)
    [dsn] = wait_until(lambda: hisps["a"].maildir(ALICE), "alice's failed DSN", timeout=30)
    report = parse_notification(dsn.replace(b"\n", b"\r\n"))
    assert report is not None and report.kind == "dsn"
    assert report.original_message_id == "<silent-1@direct.a.test>"
    assert report.recipients[0].final_recipient == "nobody@silent.test"
    assert report.recipients[0].result == "failed"


def test_replayed_message_is_delivered_once(world: World, hisps: dict[str, Any]) -> None:
    import opensslpeer as peer

    signed = peer.sign(b"Content-Type: text/plain\r\n\r\nonce only\r\n", world.alice)
    wire = (b"From: alice@direct.a.test\r\nTo: bob@direct.b.test\r\nMessage-ID: <replay-1@direct.a.test>\r\n"
            + peer.encrypt(signed, [world.bob.cert_path]))
    before = len(hisps["b"].maildir(BOB))
    first = submit(hisps["b"].smtp_port, ALICE, [BOB], wire)
    second = submit(hisps["b"].smtp_port, ALICE, [BOB], wire)
    assert first.ok and second.ok  # the replay is accepted and discarded, so the sender does not retry it
    wait_until(lambda: len(hisps["b"].maildir(BOB)) > before, "the first copy")
    time.sleep(1)
    assert len(hisps["b"].maildir(BOB)) == before + 1
    assert "replay" in (hisps["root"] / "milter-b.log").read_text()


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


@pytest.mark.conformance("AS-3.0-7")
def test_postfix_bounce_about_direct_mail_never_leaves_in_clear(world: World) -> None:
    """B accepts a Direct message for bob2, whose delivery then fails: Postfix's bounce passes the milter
    (internal_mail_filter_classes = bounce) and is stopped, so nothing in clear reaches A's side (a wire sink)."""
    import opensslpeer as peer

    with scratch_dir("directmilter-bounce-") as root, Sink(root / "wire") as wire:
        milter = Milterd(world.directory / "bounce-b.conf", root / "milter.log")
        b = Postfix(root=root / "b", name="mx.b.test", mailboxes={BOB: "bob"}, milter=milter.postfix_spec,
                    relay={"direct.a.test": f"127.0.0.1:{wire.port}"},
                    main_cf={"non_smtpd_milters": milter.postfix_spec, "internal_mail_filter_classes": "bounce",
                             "smtpd_reject_unlisted_recipient": "no",
                             "transport_maps": "inline:{ bob2@direct.b.test=error:5.2.1_mailbox_disabled } "
                                               f"texthash:{root / 'b' / 'etc' / 'transport'}"})
        body = world.hisp_b_body()
        world.write_config("bounce-b", {**body, "milter": {"internal_hosts": [], "submission_daemons": []}})
        signed = peer.sign(b"Content-Type: text/plain\r\n\r\nsecret clinical note\r\n", world.alice)
        message = (b"From: alice@direct.a.test\r\nTo: bob2@direct.b.test\r\nMessage-ID: <bounce-1@direct.a.test>\r\n"
                   + peer.encrypt(signed, [world.bob2.cert_path]))
        with milter, b:
            assert submit(b.smtp_port, ALICE, ["bob2@direct.b.test"], message).ok
            wait_until(lambda: "bounce" in b.maillog() or "milter-reject" in b.maillog(), "the bounce attempt")
            time.sleep(2)
            log = (root / "milter.log").read_text()
        assert all(b"secret clinical note" not in m.data for m in wire.messages())
        assert all(b"multipart/report" not in m.data or b"pkcs7-mime" in m.data for m in wire.messages())
        assert "would leave unencrypted" in log
