"""Postfix's own reports to a hosted sender reach her; nobody else's reports do (issue 18). Its bounces about a
remote refusal, and how they count in tracking, are among the message-tracking cases (test_message_tracking).

HISP A (directmilter, tracking with a timeout of seconds) sends alice's mail to B, a plain Postfix with no milter
that refuses unknown recipients at RCPT, as a remote HISP's MX would. Postfix's bounce, defer and trace daemons use
``cleanup-report`` (milter ``{daemon_name}`` POSTFIX-REPORT), which is how the milter tells their reports from a
local account's mail.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import World, plain_message
from milterd import serving
from mta import Postfix, scratch_dir, submit, wait_until

from directmilter.tracking.store import open_store

ALICE, BOB, DANA = "alice@direct.a.test", "bob@direct.b.test", "dana@direct.c.test"
TIMEOUT = 4.0  # processed_timeout, seconds


@pytest.fixture(scope="module")
def hisps(world: World) -> Iterator[dict[str, Any]]:
    dana = world.pki.leaf("dana", world.r1, email=DANA)  # at direct.c.test, whose MX never answers
    with scratch_dir("directmilter-reports-") as root:
        b = Postfix(root=root / "b", name="mx.b.test", mailboxes={BOB: "bob"}).start()
        a = Postfix(root=root / "a", name="mx.a.test", mailboxes={ALICE: "alice"}, local_users=True,
                    relay={"direct.b.test": f"127.0.0.1:{b.smtp_port}", "direct.c.test": "127.0.0.1:9"},
                    main_cf={"internal_mail_filter_classes": "bounce", "delay_warning_time": "1s",
                             "recipient_delimiter": "+"})
        tracking = f"sqlite:{root}/tracking-a.db"
        conf = world.hisp_a_on_postfix("reports-a", a, tracking, TIMEOUT, [dana])
        try:
            with serving(a, conf, root / "milter-a.log") as milter:
                yield {"a": a, "b": b, "milter": milter, "root": root, "tracking": tracking}
        finally:
            b.stop()


def states(hisps: dict[str, Any], message_id: str) -> dict[str, tuple[str, str | None]]:
    store = open_store(hisps["tracking"])
    try:
        return {s.recipient: (s.state, s.failure) for s in store.states(message_id)}
    finally:
        store.close()


def reports_about(hisps: dict[str, Any], message_id: str) -> list[bytes]:
    return [m for m in hisps["a"].maildir(ALICE) if message_id.encode() in m and b"multipart/report" in m]


def test_a_delay_notice_reaches_the_sender_and_is_no_failure(hisps: dict[str, Any]) -> None:
    """direct.c.test does not answer: Postfix's delay warning (the defer service, delay_warning_time = 1s) reaches
    alice; her recipient is still awaited, not failed. (The message is removed from A's queue afterwards.)"""
    message_id = "<delayed-1@direct.a.test>"
    message = plain_message(to=DANA).replace(b"<test-1@direct.a.test>", message_id.encode())
    a: Postfix = hisps["a"]
    result = submit(a.submission_port, ALICE, [DANA], message)
    assert result.ok, result
    try:
        [notice] = wait_until(lambda: reports_about(hisps, message_id), "Postfix's delay notice", timeout=60)
        assert b"delayed" in notice.lower() and DANA.encode() in notice
        assert states(hisps, message_id)[DANA][0] != "failed"
    finally:
        subprocess.run(["postsuper", "-c", str(a.etc), "-d", "ALL"], capture_output=True, timeout=30)


def test_a_local_account_cannot_dress_mail_as_a_bounce(hisps: dict[str, Any]) -> None:
    """``sendmail -f ''`` by uid 65534, a report-looking plaintext to alice, and one to a remote address: neither is
    Postfix's own report (pickup's cleanup, not cleanup-report), so alice's mailbox gets nothing unsigned, nothing
    is signed as anyone, and nothing is left queued."""
    a: Postfix = hisps["a"]
    marker = b"dressed as a bounce"
    forged = (f"From: MAILER-DAEMON@mx.a.test\r\nTo: {ALICE}\r\nSubject: Undelivered Mail\r\n"
              "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
              "--x\r\nContent-Type: text/plain\r\n\r\n").encode() + marker + b"\r\n--x--\r\n"
    for rcpt in (ALICE, BOB):
        done = a.sendmail("", [rcpt], forged)
        assert done.returncode == 0, done
    wait_until(lambda: a.maillog().count("uid=65534 from=<>") >= 2, "pickup of both")
    assert wait_until(lambda: a.queue() == [], "nothing left queued")
    assert not any(marker in m for m in a.maildir(ALICE))
    assert not any(marker in m for m in hisps["b"].maildir(BOB))
