"""Postfix's own reports to a hosted sender reach her and count in tracking; nobody else's reports do (issue 18).

HISP A (directmilter, tracking with a timeout of seconds) sends alice's mail to B, a plain Postfix with no milter
that refuses unknown recipients at RCPT, as a remote HISP's MX would. Postfix's bounce, defer and trace daemons use
``cleanup-report`` (milter ``{daemon_name}`` POSTFIX-REPORT), which is how the milter tells their reports from a
local account's mail.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import CANARY, World, keypair, plain_message
from milterd import serving
from mta import Postfix, scratch_dir, submit, wait_until

from directmilter.tracking.store import open_store

ALICE, BOB, NOBODY, DANA = "alice@direct.a.test", "bob@direct.b.test", "nobody@direct.b.test", "dana@direct.c.test"
TIMEOUT = 4.0  # processed_timeout, seconds


@pytest.fixture(scope="module")
def hisps(world: World) -> Iterator[dict[str, Any]]:
    nobody = world.pki.leaf("nobody", world.r1, email=NOBODY)  # B publishes a certificate but has no such mailbox
    dana = world.pki.leaf("dana", world.r1, email=DANA)  # at direct.c.test, whose MX never answers
    with scratch_dir("directmilter-reports-") as root:
        b = Postfix(root=root / "b", name="mx.b.test", mailboxes={BOB: "bob"}).start()
        a = Postfix(root=root / "a", name="mx.a.test", mailboxes={ALICE: "alice"}, local_users=True,
                    relay={"direct.b.test": f"127.0.0.1:{b.smtp_port}", "direct.c.test": "127.0.0.1:9"},
                    main_cf={"internal_mail_filter_classes": "bounce", "delay_warning_time": "1s",
                             "recipient_delimiter": "+"})
        body = world.hisp_a_body()
        body["certificates"]["files"] += [str(nobody.cert_path), str(dana.cert_path)]
        body["addresses"][ALICE] = {"keys": [keypair(world.alice)]}
        tracking = f"sqlite:{root}/tracking-a.db"
        conf = world.write_config("reports-a", {
            **body,
            "milter": {"internal_hosts": [], "submission_daemons": ["ORIGINATING"], "postfix_config": str(a.etc)},
            "notify": {"reinject": f"127.0.0.1:{a.reinject_port}", "tracking": tracking,
                       "processed_timeout": TIMEOUT, "dispatched_timeout": TIMEOUT, "sweep_interval": 0.5,
                       "mdn_delay": 0.2},
        })
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


@pytest.mark.conformance("AS-3.3-1", "AS-3.0-7")
def test_a_remote_refusal_reaches_the_sender_and_tracking_and_no_timeout_contradicts_it(
        hisps: dict[str, Any]) -> None:
    """B refuses nobody@ at RCPT (550 5.1.1): A's Postfix bounces to alice; the milter lets that bounce (its own,
    through cleanup-report) into her mailbox as it is, and tracking records nobody as failed with the real cause,
    so the processed-MDN timeout sends nothing more. Nothing stays in A's queue."""
    message_id = "<refused-1@direct.a.test>"
    message = plain_message(to=NOBODY).replace(b"<test-1@direct.a.test>", message_id.encode())
    result = submit(hisps["a"].submission_port, ALICE, [NOBODY], message)
    assert result.ok, result
    [bounce] = wait_until(lambda: reports_about(hisps, message_id), "Postfix's bounce in alice's mailbox")
    assert b"5.1.1" in bounce and NOBODY.encode() in bounce
    assert CANARY.encode() not in bounce  # what Postfix returns is the secured form A sent
    state, failure = wait_until(lambda: states(hisps, message_id).get(NOBODY), "nobody tracked")
    assert state == "failed" and failure is not None and "5.1.1" in failure, (state, failure)
    assert wait_until(lambda: hisps["a"].queue() == [], "A's queue to drain")
    time.sleep(TIMEOUT + 2)
    assert len(reports_about(hisps, message_id)) == 1  # no timeout DSN after the real failure
    assert "postfix_report" in (hisps["root"] / "milter-a.log").read_text()


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
