"""The confirmation chain as a certification lab tries it: every message-tracking case through two real Postfix
instances, with the remote HISP scripted around the ``openssl`` CLI (issue 18; the ONC Edge Testing Tool's cases).

HISP A runs directmilter on every path of its Postfix and hosts alice (address certificate) and the rest of
direct.a.test (organisational certificate; gone@ is a mailbox whose delivery fails after acceptance). The remote R
is a plain Postfix for direct.b.test with the mailboxes bob, bob2, carol and wary; it refuses unknown recipients at
RCPT, and refuses wary's mail at end of data as its agent would refuse an untrusted message. R's "agent" is
:class:`remotehisp.ScriptedHisp`: it opens what arrived with its users' keys (failing the test on anything in
clear), and answers with MDNs and DSNs, stays silent, or answers late, as each case needs.

Each case ends with exactly the notices the Implementation Guide for Delivery Notification asks for, at the sender
(alice's mailbox, read with the standard library only) and at the remote (opened with openssl), in order. The
tracking timeouts are seconds.
"""

from __future__ import annotations

import email
import email.utils
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import opensslpeer as peer
import pytest
from conftest import CANARY, World, plain_message
from milterd import serving
from mta import Postfix, SmtpResult, scratch_dir, submit, wait_until
from pki import Issued
from remotehisp import Opened, Report, ScriptedHisp, read_report

from directmilter.tracking.store import open_store

ALICE, GONE, STUCK = "alice@direct.a.test", "gone@direct.a.test", "stuck@direct.a.test"
QUEUE_LIFETIME = 6  # A's maximal_queue_lifetime, seconds: stuck@'s deferred mail bounces after it
BOB, WARY, NOBODY, NOCERT = "bob@direct.b.test", "wary@direct.b.test", "nobody@direct.b.test", "nocert@direct.b.test"
CAROL = "carol@direct.b.test"  # certificate under R2, which alice does not trust; a mailbox at R all the same
BOB2 = "bob2@direct.b.test"  # a second user at R: reports that go elsewhere than to the author
R_MAILBOXES = (BOB, BOB2, CAROL, WARY)  # everything R's Postfix delivers
TIMEOUT = 5.0  # processed_timeout and dispatched_timeout at A, seconds
SETTLE = TIMEOUT + 2.5  # long enough for a timeout DSN that should not come to have come
FINAL = "X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true"  # the Guide's request for a dispatched MDN


@dataclass
class Rig:
    a: Postfix
    r: ScriptedHisp
    tracking: str
    milter_log: Path
    certs: dict[str, Issued]  # the remote addresses' certificates

    # --- the sender's side ------------------------------------------------------------------------------------------

    def send(self, message_id: str, recipients: list[str], *, options: str | None = None) -> SmtpResult:
        """alice submits a plaintext message (the canary as Subject) through A's submission port."""
        extra = f"Disposition-Notification-Options: {options}\r\n".encode() if options else b""
        message = plain_message(to=", ".join(recipients), extra=extra).replace(b"<test-1@direct.a.test>",
                                                                             message_id.encode())
        return submit(self.a.submission_port, ALICE, recipients, message)

    def notices(self, message_id: str) -> list[Report]:
        """The reports about ``message_id`` in alice's mailbox, oldest first, each one she can read (a report, not
        an S/MIME message). Postfix's bounces name the message only in what they return (the secured form A sent),
        so any report that mentions it counts."""
        found = []
        for data in self.a.maildir(ALICE):
            report = read_report(data)
            if report is not None and message_id.encode() in data:
                assert CANARY.encode() not in data or report.kind == "disposition-notification", \
                    "a report returned the message in clear"
                found.append(report)
        return found

    def states(self, message_id: str) -> dict[str, tuple[str, str | None]]:
        store = open_store(self.tracking)
        try:
            return {s.recipient: (s.state, s.failure) for s in store.states(message_id)}
        finally:
            store.close()

    def tracked(self, message_id: str, recipient: str, state: str) -> str | None:
        """Wait until tracking has ``recipient`` in ``state``; returns the failure it recorded (None if none)."""
        found: tuple[str, str | None] = wait_until(
            lambda: (self.states(message_id).get(recipient, ("",))[0] == state and self.states(message_id)[recipient]),
            f"{recipient} tracked {state}")
        return found[1]

    # --- the remote's side ------------------------------------------------------------------------------------------

    def arrived(self, address: str, message_id: str) -> Opened:
        """alice's message as R's agent opened it: encrypted, signed by alice, the original inside."""
        opened = self.r.wait_for(address, message_id)
        assert ALICE in opened.signer_names()
        assert CANARY in opened.message.get("Subject", "")
        return opened

    def at_remote(self, address: str, message_id: str, count: int) -> list[Opened]:
        """The reports about ``message_id`` that reached ``address`` at R, once there are ``count``."""
        def probe() -> list[Opened] | None:
            reports = [o for o in self.r.about(address, message_id) if o.report is not None]
            return reports if len(reports) >= count else None

        return wait_until(probe, f"{count} report(s) about {message_id} at {address}", timeout=30)


@pytest.fixture(scope="module")
def rig(world: World) -> Iterator[Rig]:
    wary = world.pki.leaf("wary", world.r1, email=WARY)
    nobody = world.pki.leaf("nobody", world.r1, email=NOBODY)  # published, but R has no such mailbox
    with scratch_dir("directmilter-tracking-") as root:
        # gone@ fails at once after acceptance; stuck@'s mailbox server (LMTP) is down, so its mail is deferred and
        # bounces once it is older than maximal_queue_lifetime.
        a = Postfix(root=root / "a", name="mx.a.test", mailboxes={ALICE: "alice", GONE: "gone", STUCK: "stuck"},
                    main_cf={"internal_mail_filter_classes": "bounce", "smtpd_reject_unlisted_recipient": "no",
                             "maximal_queue_lifetime": f"{QUEUE_LIFETIME}s",
                             "bounce_queue_lifetime": f"{QUEUE_LIFETIME}s",
                             "transport_maps": f"inline:{{ {{ {GONE} = error:5.2.2 mailbox full }}, "
                                               f"{{ {STUCK} = lmtp:unix:{root / 'lmtp-down'} }} }} "
                                               f"texthash:{root / 'a' / 'etc' / 'transport'}"})
        refusals = root / "r-refusals"
        refusals.write_text(f"{WARY} 550 5.7.1 message signed by an untrusted sender\n")
        r = Postfix(root=root / "r", name="mx.b.test",
                    mailboxes={BOB: "bob", WARY: "wary", BOB2: "bob2", CAROL: "carol"},
                    relay={"direct.a.test": f"127.0.0.1:{a.smtp_port}"},
                    main_cf={"smtpd_end_of_data_restrictions": f"check_recipient_access texthash:{refusals}"})
        a.relay["direct.b.test"] = f"127.0.0.1:{r.smtp_port}"
        a.write_config()
        tracking = f"sqlite:{root}/tracking-a.db"
        conf = world.hisp_a_on_postfix("tracking-a", a, tracking, TIMEOUT, [wary, nobody])
        remote = ScriptedHisp(postfix=r, keys={BOB: world.bob, WARY: wary, BOB2: world.bob2, CAROL: world.carol},
                              anchor=world.r1.cert_path,
                              peer_port=a.smtp_port, peer_certs={ALICE: world.alice.cert_path,
                                                                 GONE: world.a_org.cert_path,
                                                                 STUCK: world.a_org.cert_path})
        try:
            with r, serving(a, conf, root / "milter-a.log"):
                yield Rig(a=a, r=remote, tracking=tracking, milter_log=root / "milter-a.log",
                          certs={BOB: world.bob, WARY: wary, NOBODY: nobody, CAROL: world.carol, BOB2: world.bob2})
        finally:
            r.stop()


@pytest.fixture(autouse=True)
def nothing_in_clear(rig: Rig) -> Iterator[None]:
    """After each case: everything that ever reached R opens as a secured message (AS-3.0-7, nothing in clear)."""
    yield
    for address in R_MAILBOXES:
        rig.r.received(address)


def outcomes(reports: list[Report]) -> list[tuple[str, str]]:
    return [pair for report in reports for pair in report.about()]


# --- outgoing: refusals ---------------------------------------------------------------------------------------------


@pytest.mark.conformance("AS-3.0-4", "AS-3.3-1")
def test_remote_refusal_at_rcpt_is_the_one_notice(rig: Rig) -> None:
    """R refuses nobody@ at RCPT (550 5.1.1). alice gets Postfix's bounce with that status, tracking marks nobody
    failed with the cause, and no timeout DSN follows; nothing stays queued at A."""
    message_id = "<t-refused@direct.a.test>"
    assert rig.send(message_id, [NOBODY]).ok
    [bounce] = wait_until(lambda: rig.notices(message_id), "Postfix's bounce at alice")
    assert outcomes([bounce]) == [(NOBODY, "failed 5.1.1")]
    failure = rig.tracked(message_id, NOBODY, "failed")
    assert failure is not None and "5.1.1" in failure
    assert wait_until(lambda: rig.a.queue() == [], "A's queue to drain")
    assert "postfix_report" in rig.milter_log.read_text()  # let through as this Postfix's own report
    time.sleep(SETTLE)
    assert len(rig.notices(message_id)) == 1


@pytest.mark.conformance("AS-3.0-4", "AS-3.3-1")
def test_remote_refusal_as_untrusted_at_end_of_data_is_the_one_notice(rig: Rig) -> None:
    """R takes the message for wary@ and refuses it at end of data (550 5.7.1, as an STA refuses an untrusted
    message): the same single bounce with 5.7.1 and the remote's reason, and wary tracked failed."""
    message_id = "<t-untrusted-remote@direct.a.test>"
    assert rig.send(message_id, [WARY]).ok
    [bounce] = wait_until(lambda: rig.notices(message_id), "Postfix's bounce at alice")
    assert outcomes([bounce]) == [(WARY, "failed 5.7.1")]
    assert "untrusted sender" in bounce.text or "untrusted sender" in str(bounce.recipients)
    rig.tracked(message_id, WARY, "failed")
    time.sleep(SETTLE)
    assert len(rig.notices(message_id)) == 1 and rig.r.received(WARY) == []


@pytest.mark.conformance("ALG-4", "ALG-9", "ALG-10")
@pytest.mark.parametrize("recipient, cause", [(CAROL, "no path to a trust anchor"), (NOCERT, "certificate")],
                         ids=["untrusted-certificate", "certificate-not-published"])
def test_recipient_without_a_trusted_certificate_is_refused_and_nothing_leaves(
        rig: Rig, recipient: str, cause: str) -> None:
    """carol's certificate chains to R2, nocert has none anywhere: A refuses each at RCPT with 550 5.7.1 and the
    cause, so the refusal is the notice (alice's client has it); nothing reaches R, nothing is tracked or queued."""
    message_id = f"<t-refuse-{recipient.partition('@')[0]}@direct.a.test>"
    result = rig.send(message_id, [recipient])
    assert not result.accepted and result.data is None, result
    code, text = result.refused[recipient]
    assert code == 550 and text.startswith("5.7.1") and recipient in text and cause in text, (code, text)
    assert rig.states(message_id) == {} and rig.a.queue() == []
    time.sleep(1)
    assert rig.notices(message_id) == [] and rig.r.about(BOB, message_id) == []


# --- outgoing: confirmations and their absence ----------------------------------------------------------------------


@pytest.mark.conformance("AS-3.0-2", "AS-3.2-4", "ALG-11")
def test_no_processed_mdn_earns_one_failed_dsn_after_the_timeout(rig: Rig) -> None:
    """R gets the message and stays silent: after processed_timeout alice gets one failed DSN about bob, with the
    Original Message-ID, from A's postmaster; never a second one."""
    message_id = "<t-silent@direct.a.test>"
    assert rig.send(message_id, [BOB]).ok
    rig.arrived(BOB, message_id)
    [dsn] = wait_until(lambda: rig.notices(message_id), "the timeout DSN", timeout=TIMEOUT + 20)
    assert dsn.kind == "delivery-status" and dsn.original_message_id == message_id
    [(who, outcome)] = dsn.about()
    assert who == BOB and outcome.startswith("failed 4.4.7"), outcome
    assert "no processed confirmation" in dsn.text
    for name in ("From", "To", "Date", "Message-ID"):
        assert dsn.headers.get(name), name
    failure = rig.tracked(message_id, BOB, "failed")
    assert failure is not None and "no processed confirmation" in failure
    time.sleep(SETTLE)
    assert len(rig.notices(message_id)) == 1


@pytest.mark.conformance("AS-3.2-4")
def test_processed_without_dispatched_earns_one_failed_dsn(rig: Rig) -> None:
    """alice asks for final delivery; R sends only the processed MDN. That is consumed (not a notice); after
    dispatched_timeout alice gets one failed DSN saying no dispatched confirmation came."""
    message_id = "<t-no-dispatched@direct.a.test>"
    assert rig.send(message_id, [BOB], options=FINAL).ok
    assert rig.r.answer(rig.arrived(BOB, message_id), "processed").ok
    rig.tracked(message_id, BOB, "processed")
    assert rig.notices(message_id) == []
    [dsn] = wait_until(lambda: rig.notices(message_id), "the dispatched-timeout DSN", timeout=TIMEOUT + 20)
    [(who, outcome)] = dsn.about()
    assert who == BOB and outcome.startswith("failed 4.4.7") and "no dispatched confirmation" in dsn.text, outcome
    time.sleep(SETTLE)
    assert len(rig.notices(message_id)) == 1


@pytest.mark.conformance("AS-3.2-4")
def test_a_late_dispatched_mdn_does_not_contradict_the_failure(rig: Rig) -> None:
    """The dispatched MDN arrives after alice was told it failed: A accepts and consumes it (the remote's MTA is
    not left retrying), and alice still has exactly the one failure notice."""
    message_id = "<t-late@direct.a.test>"
    assert rig.send(message_id, [BOB], options=FINAL).ok
    opened = rig.arrived(BOB, message_id)
    assert rig.r.answer(opened, "processed").ok
    wait_until(lambda: rig.notices(message_id), "the dispatched-timeout DSN", timeout=TIMEOUT + 20)
    assert rig.r.answer(opened, "dispatched", final_destination=True).ok
    time.sleep(2)
    assert [r.kind for r in rig.notices(message_id)] == ["delivery-status"]
    assert rig.states(message_id)[BOB][0] == "failed"
    assert wait_until(lambda: rig.a.queue() == [], "A's queue to drain")


@pytest.mark.conformance("AS-3.0-4", "AS-3.2-4", "AS-3.0-8")
def test_processed_and_dispatched_give_one_confirmation_and_no_dsn(rig: Rig) -> None:
    """Final delivery asked for; R answers processed, dispatched, and the dispatched again (a duplicate). alice
    gets one notice, the dispatched MDN, decrypted; bob is tracked dispatched and no DSN ever follows."""
    message_id = "<t-positive@direct.a.test>"
    assert rig.send(message_id, [BOB], options=FINAL).ok
    opened = rig.arrived(BOB, message_id)
    for disposition in ("processed", "dispatched", "dispatched"):
        assert rig.r.answer(opened, disposition, final_destination=disposition == "dispatched").ok
    [mdn] = wait_until(lambda: rig.notices(message_id), "the dispatched MDN at alice")
    assert mdn.kind == "disposition-notification" and mdn.about() == [(BOB, "dispatched")]
    rig.tracked(message_id, BOB, "dispatched")
    time.sleep(SETTLE)
    assert len(rig.notices(message_id)) == 1


@pytest.mark.conformance("AS-3.0-4", "AS-3.2-4")
def test_processed_alone_is_enough_when_no_final_delivery_was_asked(rig: Rig) -> None:
    """No Disposition-Notification-Options: the processed MDN is consumed and is the end of it; alice gets nothing
    and no timeout DSN, and bob is tracked processed, never "dispatched"."""
    message_id = "<t-processed@direct.a.test>"
    assert rig.send(message_id, [BOB]).ok
    assert rig.r.answer(rig.arrived(BOB, message_id), "processed").ok
    rig.tracked(message_id, BOB, "processed")
    time.sleep(SETTLE)
    assert rig.notices(message_id) == [] and rig.states(message_id)[BOB][0] == "processed"


@pytest.mark.parametrize("options", ["X-DIRECT-FINAL-DESTINATION-DELIVERY",
                                     "X-DIRECT-FINAL-DESTINATION-DELIVERY=optional",
                                     "X-DIRECT-FINAL-DESTINATION-DELIVERY=,,;"],
                         ids=["bare", "no-value", "garbage"])
def test_a_malformed_request_for_final_delivery_waits_for_no_dispatched_mdn(rig: Rig, options: str) -> None:
    """alice's Disposition-Notification-Options is malformed, so it asks for nothing: the processed MDN settles
    it, and no dispatched-timeout DSN is sent."""
    message_id = f"<t-bad-options-{len(options)}@direct.a.test>"
    assert rig.send(message_id, [BOB], options=options).ok
    assert rig.r.answer(rig.arrived(BOB, message_id), "processed").ok
    rig.tracked(message_id, BOB, "processed")
    time.sleep(SETTLE)
    assert rig.notices(message_id) == []


@pytest.mark.conformance("AS-3.1.2-2", "AS-3.3-1", "AS-3.0-4")
def test_a_remote_failure_after_processed_reaches_the_sender_once(rig: Rig) -> None:
    """R sends processed and then a failed DSN (mailbox full, after acceptance) that names the message only in
    In-Reply-To, as some STAs do: alice gets the DSN decrypted, bob is tracked failed with the remote's cause, and
    no timeout DSN follows."""
    message_id = "<t-remote-failed@direct.a.test>"
    assert rig.send(message_id, [BOB], options=FINAL).ok
    opened = rig.arrived(BOB, message_id)
    assert rig.r.answer(opened, "processed").ok
    rig.tracked(message_id, BOB, "processed")
    assert rig.r.answer(opened, dsn_status="5.2.2", text="mailbox full", original_field=False).ok
    [dsn] = wait_until(lambda: rig.notices(message_id), "the remote's DSN at alice")
    assert dsn.kind == "delivery-status" and dsn.about() == [(BOB, "failed 5.2.2 (mailbox full)")]
    failure = rig.tracked(message_id, BOB, "failed")
    assert failure is not None and "mailbox full" in failure
    time.sleep(SETTLE)
    assert len(rig.notices(message_id)) == 1


@pytest.mark.conformance("ALG-4", "ALG-8", "AS-3.0-4")
def test_mixed_recipients_each_get_the_right_outcome(rig: Rig) -> None:
    """alice -> bob (good), carol (untrusted), nocert (no certificate), nobody (refused by R). carol and nocert
    are refused at RCPT; R gets one copy, for bob, encrypted to the two accepted recipients and never to carol;
    alice gets one bounce, for nobody; bob's processed MDN settles him."""
    message_id = "<t-mixed@direct.a.test>"
    result = rig.send(message_id, [BOB, CAROL, NOCERT, NOBODY])
    assert sorted(result.accepted) == [BOB, NOBODY] and set(result.refused) == {CAROL, NOCERT}, result
    assert result.data is not None and result.data[0] == 250
    opened = rig.arrived(BOB, message_id)
    printed = peer.cmsprint(opened.wire)
    to = sorted(int(serial, 16) for serial in re.findall(r"serialNumber: 0x([0-9A-F]+)", printed))
    assert to == sorted(rig.certs[who].cert.serial_number for who in (BOB, NOBODY)), printed  # never carol
    assert rig.r.answer(opened, "processed").ok
    [bounce] = wait_until(lambda: rig.notices(message_id), "the bounce for nobody")
    assert outcomes([bounce]) == [(NOBODY, "failed 5.1.1")]
    rig.tracked(message_id, BOB, "processed")
    rig.tracked(message_id, NOBODY, "failed")
    assert set(rig.states(message_id)) == {BOB, NOBODY}
    time.sleep(SETTLE)
    assert len(rig.notices(message_id)) == 1


# --- incoming: what the remote sender hears -------------------------------------------------------------------------


def _incoming(rig: Rig, recipient: str, options: str | None) -> str:
    headers = {"Disposition-Notification-Options": options} if options else None
    message_id, result = rig.r.send(BOB, recipient, b"Content-Type: text/plain\r\n\r\nLab results attached.\r\n",
                                    headers=headers)
    assert result.ok, result
    return message_id


def _check_report_headers(report: Opened, sender: str) -> None:
    """AS 3.1.1 / 3.1.2: the report is a message of its own (From, To, Date, Message-ID), from the original
    recipient, with a non-null envelope sender."""
    for name in ("From", "To", "Date", "Message-ID"):
        assert report.message.get(name), f"{name} missing from {report.message}"
    assert report.return_path == sender, report.return_path


@pytest.mark.conformance("AS-3.2-1", "AS-3.0-3", "AS-3.0-8", "AS-3.1.1-4", "AS-3.1.1-5", "AS-3.1.1-1", "AS-0-1")
def test_incoming_with_final_delivery_asked_sends_processed_then_dispatched(rig: Rig) -> None:
    """bob (R) -> alice with the Guide's request: alice gets the message; R gets a processed MDN and then a
    dispatched MDN carrying X-DIRECT-FINAL-DESTINATION-DELIVERY, each signed by alice and encrypted to bob."""
    message_id = _incoming(rig, ALICE, FINAL)
    wait_until(lambda: [m for m in rig.a.maildir(ALICE) if message_id.encode() in m and b"Lab results" in m],
               "the message in alice's mailbox")
    processed, dispatched = rig.at_remote(BOB, message_id, 2)
    assert [processed.report.disposition, dispatched.report.disposition] == ["processed", "dispatched"]
    assert "x-direct-final-destination-delivery" in dispatched.report.fields
    for report in (processed, dispatched):
        assert ALICE in report.signer_names()
        _check_report_headers(report, ALICE)
    time.sleep(1)
    assert len(rig.at_remote(BOB, message_id, 2)) == 2


@pytest.mark.conformance("AS-3.2-1", "AS-3.2-2")
@pytest.mark.parametrize("options", [None, "X-DIRECT-FINAL-DESTINATION-DELIVERY",
                                     "X-DIRECT-FINAL-DESTINATION-DELIVERY=optional",
                                     "X-DIRECT-FINAL-DESTINATION-DELIVERY=,,;", "x-unknown=required,1"],
                         ids=["none", "bare", "no-value", "garbage", "unknown-required"])
def test_incoming_without_a_valid_request_gets_processed_only(rig: Rig, options: str | None) -> None:
    """No request, or a malformed one, or an unknown ``required`` option (checklist ambiguity 8: AS 3.2's processed
    MDN is sent, not RFC 3798's "failed"): R gets the processed MDN and nothing more."""
    message_id = _incoming(rig, ALICE, options)
    [processed] = rig.at_remote(BOB, message_id, 1)
    assert processed.report.disposition == "processed"
    wait_until(lambda: rig.a.queue() == [], "A's queue to drain")
    time.sleep(2)
    assert len(rig.at_remote(BOB, message_id, 1)) == 1


@pytest.mark.conformance("AS-3.3-5", "AS-3.1.2-1", "AS-3.1.2-3", "AS-3.1.2-4", "AS-3.0-7", "AS-3.3-2")
@pytest.mark.parametrize("recipient, status, cause", [(GONE, "5.2.2", "mailbox full"),
                                                      (STUCK, "4.4.1", "no such file")],
                         ids=["at-once", "after-retrying"])
def test_incoming_undeliverable_after_acceptance_sends_processed_then_failed(
        rig: Rig, recipient: str, status: str, cause: str) -> None:
    """bob -> a recipient whose delivery fails after A accepted, at once (mailbox full) or after Postfix retried
    it for the queue lifetime, with final delivery asked for: R gets the processed MDN, then a failed DSN with
    X-Original-Message-ID and the cause, signed with A's organisational certificate; never a dispatched MDN
    (however long the message sat in the queue first), and never Postfix's bounce with the decrypted content."""
    message_id = _incoming(rig, recipient, FINAL)
    processed, failed = rig.at_remote(BOB, message_id, 2)
    assert processed.report.disposition == "processed"
    assert failed.report.kind == "delivery-status"
    assert failed.report.fields.get("x-original-message-id") == message_id
    [(who, outcome)] = failed.report.about()
    assert who == recipient and outcome.startswith(f"failed {status}") and cause in outcome.lower(), outcome
    for report in (processed, failed):
        assert "direct.a.test" in report.signer_names()
        _check_report_headers(report, recipient)
        assert b"Lab results" not in report.wire
    time.sleep(2)
    assert len(rig.at_remote(BOB, message_id, 2)) == 2
    assert all(b"Lab results" not in m for m in rig.r.postfix.maildir(BOB))


# --- reports, and messages that failed verification, are never answered (AS 3.0) -----------------------------------


def _logged(rig: Rig, event: str, **fields: str | bool) -> list[str]:
    """The records of ``event`` in A's milter log (key=value, values quoted) carrying all of ``fields``."""
    wanted = [f"{k}={v}" if isinstance(v, bool) else f"{k}='{v}'" for k, v in fields.items()]
    return [line for line in rig.milter_log.read_text().splitlines()
            if line.startswith(f"event='{event}' ") and all(w in line for w in wanted)]


def _answers_at_remote(rig: Rig, message_ids: set[str], before: set[bytes]) -> list[tuple[str | None, str]]:
    """What bob received at R since ``before`` (the messages he had then) that is about one of ``message_ids``:
    a report naming it as the original, or anything else that names it (In-Reply-To, References, a returned
    header block). Each as (its Message-ID, what it is about)."""
    found = []
    for opened in rig.r.received(BOB):
        if opened.wire in before:
            continue
        about = opened.report.original_message_id if opened.report is not None else None
        named = [m for m in message_ids if m == about or m in opened.message.as_string()]
        if named:
            kind = opened.report.kind if opened.report is not None else "message"
            found.append((opened.message_id, f"{kind} about {', '.join(named)}"))
    return found


def _control(rig: Rig) -> float:
    """bob sends alice an ordinary message and gets its processed MDN back at R (the rig can answer: a silence
    elsewhere in the test is the product's doing). Returns how long the MDN took, in seconds."""
    started = time.monotonic()
    message_id = _incoming(rig, ALICE, None)
    [processed] = rig.at_remote(BOB, message_id, 1)
    assert processed.report is not None and processed.report.disposition == "processed"
    assert ALICE in processed.signer_names()
    assert _logged(rig, "mdn_sent", original_message_id=message_id), "the log names a sent MDN's original"
    return time.monotonic() - started


@pytest.mark.conformance("AS-3.0-5")
def test_no_report_is_ever_answered_with_a_report(rig: Rig) -> None:
    """alice sends bob a message (so there is tracked mail). R then sends alice, about that message and about one
    A never sent, a processed MDN, an MDN carrying Disposition-Notification-To, a failed MDN and a failed DSN
    (5.2.2). Tracking consumes only the two positive MDNs about tracked mail; the other six are delivered to alice,
    where an ordinary message would earn an MDN. None of the eight is answered: long after an ordinary message's
    MDN came back (the control), R has nothing from A about any of them, and A's log records each as a report
    received (consumed or delivered), with no MDN sent for it."""
    tracked = "<t-reports-tracked@direct.a.test>"
    assert rig.send(tracked, [BOB]).ok
    rig.arrived(BOB, tracked)
    never_sent = "<t-reports-never-sent@direct.a.test>"  # nothing at A tracks it: its reports are not consumed
    kinds: dict[str, dict[str, Any]] = {
        "processed MDN": {"disposition": "processed"},
        "MDN with Disposition-Notification-To": {"disposition": "processed",
                                                 "headers": {"Disposition-Notification-To": BOB}},
        "failed MDN": {"disposition": "failed", "text": "the recipient's system could not open it"},
        "failed DSN": {"dsn_status": "5.2.2", "text": "mailbox full"},
    }
    reports: dict[str, tuple[str, str, bool]] = {}  # its Message-ID -> what it is, about which message, consumed
    before = {o.wire for o in rig.r.received(BOB)}
    for about in (tracked, never_sent):
        for what, options in kinds.items():
            report_id, result = rig.r.report(BOB, ALICE, about, **options)
            assert result.ok, (what, about, result)
            reports[report_id] = (what, about, about == tracked and "failed" not in what)
    assert sum(consumed for _, _, consumed in reports.values()) == 2

    latency = _control(rig)
    time.sleep(max(2 * latency, 3.0))  # the reports went before the control: twice its MDN's delay after it

    answers = _answers_at_remote(rig, set(reports), before)
    assert answers == [], f"A answered reports: {answers}; they were {reports}"
    delivered = rig.a.maildir(ALICE)
    for report_id, (what, about, consumed) in reports.items():
        case = f"{what} about {about} ({report_id})"
        records = _logged(rig, "report_received", report_message_id=report_id, original_message_id=about,
                          kind="dsn" if "DSN" in what else "mdn")
        assert len(records) == 1, (case, "one report_received record", records)
        assert f"consumed={consumed}" in records[0] and f"matched={about == tracked}" in records[0], (case, records)
        assert _logged(rig, "consumed" if consumed else "processed", message_id=report_id), case
        assert _logged(rig, "mdn_sent", original_message_id=report_id) == [], case
        assert [r for r in _logged(rig, "mdn_not_sent", message_id=report_id) if "a report is never answered" in r], \
            (case, "the log says why no MDN")
        at_alice = [m for m in delivered if report_id.encode() in m]
        assert len(at_alice) == (0 if consumed else 1), case  # delivered ones took the path that answers mail
    assert rig.states(tracked)[BOB][0] == "failed"  # the failures were recorded, and told to alice (delivered)


def _forged(message_id: str, *, signer: Issued, encrypt_to: Path, tamper: bool = False) -> bytes:
    """A message from bob to alice as R's agent would send it (ScriptedHisp.send), but signed by ``signer``,
    encrypted to ``encrypt_to``, and with ``tamper`` a byte of the signed content changed after signing."""
    head = {"From": BOB, "To": ALICE, "Subject": "Referral", "Date": "Mon, 23 Nov 2026 10:00:00 +0000",
            "Message-ID": message_id, "MIME-Version": "1.0"}
    inner = ("".join(f"{k}: {v}\r\n" for k, v in head.items()).encode()
             + b"Content-Type: text/plain\r\n\r\nLab results attached.\r\n")
    signed = peer.sign(b"Content-Type: message/rfc822\r\n\r\n" + inner, signer)
    if tamper:
        changed = signed.replace(b"Lab results", b"Lab resulTs", 1)
        assert changed != signed and len(changed) == len(signed)
        signed = changed
    outer = {k: head[k] for k in ("From", "To", "Subject", "Date", "Message-ID")}
    return "".join(f"{k}: {v}\r\n" for k, v in outer.items()).encode() + peer.encrypt(signed, [encrypt_to])


@pytest.mark.conformance("AS-3.0-6")
def test_no_report_about_a_message_that_failed_verification(rig: Rig, world: World) -> None:
    """bob -> alice, three ways that fail verification at A: signed by a certificate for bob under R2 (which A
    does not trust), signed by bob with a byte of the content changed after signing, and encrypted to bob2 rather
    than alice. Each is refused at end of data with a 5xx naming the reason; none reaches alice; and long after an
    ordinary message's MDN came back (the control), R has no MDN or DSN about any of them."""
    untrusted = world.pki.leaf("bob-under-r2", world.r2, email=BOB)
    before = {o.wire for o in rig.r.received(BOB)}
    cases = {  # Message-ID -> the message, and the reply that refuses it
        "<t-unverified-untrusted@direct.b.test>": (_forged("<t-unverified-untrusted@direct.b.test>", signer=untrusted,
                                                           encrypt_to=world.alice.cert_path),
                                                   550, "5.7.1", "signer: no path to a trust anchor"),
        "<t-unverified-tampered@direct.b.test>": (_forged("<t-unverified-tampered@direct.b.test>", signer=world.bob,
                                                          encrypt_to=world.alice.cert_path, tamper=True),
                                                  554, "5.7.5", "message digest does not match"),
        "<t-unverified-not-for-alice@direct.b.test>": (_forged("<t-unverified-not-for-alice@direct.b.test>",
                                                               signer=world.bob, encrypt_to=world.bob2.cert_path),
                                                       554, "5.7.5", "not encrypted to any of the recipient"),
    }
    for message_id, (wire, code, status, reason) in cases.items():
        result = submit(rig.a.smtp_port, BOB, [ALICE], wire)
        assert result.accepted == [ALICE] and result.data is not None, (message_id, result)
        assert result.code == code and result.status == status and reason in result.data[1], (message_id, result.data)
        assert [r for r in _logged(rig, "rejected", message_id=message_id) if reason in r], message_id

    latency = _control(rig)
    time.sleep(max(2 * latency, 3.0))

    answers = _answers_at_remote(rig, set(cases), before)
    assert answers == [], f"A sent reports about messages it refused: {answers}"
    assert [m for m in rig.a.maildir(ALICE) if any(i.encode() in m for i in cases)] == []
    sent = _logged(rig, "mdn_sent") + _logged(rig, "dsn_sent")
    assert [line for line in sent if any(message_id in line for message_id in cases)] == []


# --- incoming: where the processed MDN goes (AS 3.2) ----------------------------------------------------------------


def _at_remote_about(rig: Rig, message_id: str) -> dict[str, list[Opened]]:
    """Everything in any mailbox at R that is about ``message_id`` (a report naming it as the original, or anything
    else that names it), by mailbox. Each mailbox is opened with its owner's key: anything in clear fails the test."""
    found: dict[str, list[Opened]] = {}
    for address in R_MAILBOXES:
        about = [o for o in rig.r.received(address)
                 if (o.report is not None and o.report.original_message_id == message_id)
                 or message_id in o.message.as_string()]
        if about:
            found[address] = about
    return found


def _to_alice(rig: Rig, headers: dict[str, str], mail_from: str) -> str:
    """bob (R) -> alice with ``headers`` in the signed message and ``mail_from`` as MAIL FROM; once alice has it,
    its Message-ID (a fresh one per message)."""
    message_id, result = rig.r.send(BOB, ALICE, b"Content-Type: text/plain\r\n\r\nLab results attached.\r\n",
                                    headers=headers, mail_from=mail_from)
    assert result.ok, result
    wait_until(lambda: [m for m in rig.a.maildir(ALICE) if message_id.encode() in m and b"Lab results" in m],
               "the message in alice's mailbox")
    return message_id


def _drained(rig: Rig) -> None:
    """Neither Postfix has anything left to send: what is at R now is all that will come."""
    wait_until(lambda: rig.a.queue() == [] and rig.r.postfix.queue() == [], "A's and R's queues to drain")


@pytest.mark.conformance("AS-3.2-3")
@pytest.mark.parametrize("mail_from, headers, target", [
    (BOB, {"From": f"{BOB2}, {BOB}", "Sender": BOB2}, BOB),
    ("", {"Sender": BOB2}, BOB2),
    ("", {}, BOB),
    (BOB, {"Disposition-Notification-To": BOB2}, BOB2),
], ids=["mail-from-before-sender-and-from", "null-mail-from-then-sender", "null-mail-from-then-from",
        "disposition-notification-to"])
def test_the_processed_mdn_goes_to_the_first_of_dnt_mail_from_sender_from(
        rig: Rig, mail_from: str, headers: dict[str, str], target: str) -> None:
    """bob (R) -> alice, each message signed by bob; the processed MDN goes to the first of Disposition-
    Notification-To, MAIL FROM, Sender, From (AS 3.2), and only there: R's Postfix delivers it to that address's
    mailbox (its RCPT TO), it is signed by alice, encrypted to the target's certificate alone (one RecipientInfo,
    opened with the target's key), and no other mailbox at R gets anything about the message.

    * No DNT, MAIL FROM bob, From "bob2, bob", Sender bob2: to bob. Sender and the first From both name bob2, so
      skipping MAIL FROM would show. (The routing check wants MAIL FROM among the signed From addresses, and bob
      is; a MAIL FROM not in From at all is refused as tampered routing, so (a) cannot use one.)
    * MAIL FROM <>, Sender bob2, From bob: to bob2. With a null MAIL FROM the product binds the signer to the outer
      From, and the signed message must show exactly that From (incoming._forged_author); a Sender is not checked
      against the signer, so bob may sign a message whose Sender is bob2, and bob2 gets the MDN.
    * MAIL FROM <>, no Sender, From bob: to bob.
    * DNT bob2, MAIL FROM and From bob: to bob2, encrypted to bob2's certificate (A knows it from its certificate
      files, under R1).
    """
    message_id = _to_alice(rig, headers, mail_from)
    [mdn] = rig.at_remote(target, message_id, 1)
    assert mdn.report is not None and mdn.report.kind == "disposition-notification"
    assert mdn.report.about() == [(ALICE, "processed")] and mdn.report.original_message_id == message_id
    assert ALICE in mdn.signer_names()
    wire = email.message_from_bytes(mdn.wire)
    assert wire["Delivered-To"] == target and mdn.return_path == ALICE, (wire["Delivered-To"], mdn.return_path)
    assert email.utils.parseaddr(mdn.message["To"])[1] == target, mdn.message["To"]
    printed = peer.cmsprint(mdn.wire)
    to = [int(serial, 16) for serial in re.findall(r"serialNumber: 0x([0-9A-F]+)", printed)]
    assert to == [rig.certs[target].cert.serial_number], printed  # decryptable with the target's key only
    [sent] = _logged(rig, "mdn_sent", original_message_id=message_id)
    assert f"target='{target}'" in sent and f"recipient='{ALICE}'" in sent, sent
    _drained(rig)
    time.sleep(2)
    assert _at_remote_about(rig, message_id) == {target: [mdn]}
    assert rig.notices(message_id) == []  # nor did anything about it come back to alice (a bounce of the MDN)


@pytest.mark.conformance("AS-3.2-3", "AS-3.0-7")
def test_no_mdn_when_the_dnt_target_has_no_trusted_certificate(rig: Rig) -> None:
    """bob (R) -> alice with Disposition-Notification-To carol, whose certificate chains to R2, which A does not
    trust: alice gets the message, but no MDN is sent, neither to carol (encrypted to an untrusted certificate, or in
    clear) nor to anyone further down the list (MAIL FROM and From are bob). A's log has one mdn_not_sent record
    naming the message, carol and the reason; long after an ordinary message's MDN came back (the control), no
    mailbox at R has anything about it, and nothing was logged as sent."""
    message_id = _to_alice(rig, {"Disposition-Notification-To": CAROL}, BOB)
    [record] = wait_until(lambda: _logged(rig, "mdn_not_sent", original_message_id=message_id),
                          "the mdn_not_sent record")
    assert f"target='{CAROL}'" in record and f"recipient='{ALICE}'" in record, record
    assert "no path to a trust anchor" in record, record
    latency = _control(rig)
    time.sleep(max(2 * latency, 3.0))
    _drained(rig)
    assert _at_remote_about(rig, message_id) == {}
    assert _logged(rig, "mdn_sent", original_message_id=message_id) == []
    assert rig.notices(message_id) == []
