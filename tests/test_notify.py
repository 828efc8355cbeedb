"""Mail system reports (directmilter.notify): MDNs and DSNs built, read back, checked against Python's own parser,
and the reference implementations' notification vectors read (shared/vectors, INDEX.md section C)."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime
from email.message import Message

import pytest
from conftest import CANARY, plain_message, vectors_or_skip
from hypothesis import given, settings
from hypothesis import strategies as st

from directmilter.cms.mime import parse_entity
from directmilter.notify import (
    FINAL_DESTINATION_DELIVERY,
    DsnRecipient,
    build_dsn,
    build_mdn,
    disposition_options,
    format_field,
    is_notification,
    mdn_target,
    new_message_id,
    parse_notification,
    wants_dispatched,
)

conformance = pytest.mark.conformance

ALICE = "alice@direct.a.test"
BOB = "bob@direct.b.test"
BOB2 = "bob2@direct.b.test"
ORIGINAL_ID = "<test-1@direct.a.test>"
WHEN = datetime(2026, 11, 23, 10, 5, tzinfo=UTC)
#: An error text as bad as they come: bare LF, bare CR, CRLF, a 2000-character word, a long run of words,
#: non-ASCII, a control character, parentheses and a backslash.
NASTY = ("first line\nsecond line\rthird line\r\nfourth " + "y" * 2000 + " " + "word " * 400
         + "caf\u00e9 bell\x07 (paren) back\\slash")

JAVA_MESSAGES = "DirectProjectJavaRI-agent/org/nhindirect/stagent"
GATEWAY_MESSAGES = "DirectProjectJavaRI-gateway/messages"
COMMON_MESSAGES = "nhin-d/java/direct-common/src/test/resources/messages"
DOTNET_DSN = "nhin-d-dotnet/unittests/common/DsnTestMessages"
REPORT_VECTORS = [
    f"{JAVA_MESSAGES}/MDNMessage.txt",
    f"{JAVA_MESSAGES}/MDNMessageNonCanonicalized.txt",
    f"{JAVA_MESSAGES}/MDNResponse.txt",
    f"{JAVA_MESSAGES}/DSNMessage.txt",
    f"{GATEWAY_MESSAGES}/MDNDispatchedMessage.txt",
    f"{COMMON_MESSAGES}/MDNDispatchedTimeAndReliable.txt",
    f"{COMMON_MESSAGES}/MDNDispatchedTimeAndReliableLowerCaseOption.txt",
    f"{COMMON_MESSAGES}/MDNMessageNoDisp.txt",
    f"{COMMON_MESSAGES}/MDNMessageNoFinalRecip.txt",
    f"{COMMON_MESSAGES}/MDNMessageFriendlyNameFinalRecip.txt",
    f"{COMMON_MESSAGES}/MDNMessageOrigInReplyTo.txt",
    f"{COMMON_MESSAGES}/DSNMessage.txt",
    f"{COMMON_MESSAGES}/DSNMessageNoActionOrStatus.txt",
    f"{DOTNET_DSN}/DSNMessage.txt",
]
RI_ORIGINAL_ID = "<9501051053.aa04167@IETF.CNR I.Reston.VA.US>"
RI_SENDER = "externUser1@starugh-stateline.com"


def vector(relative: str) -> bytes:
    path = vectors_or_skip() / relative
    if not path.is_file():
        pytest.skip(f"vector {relative} missing from {vectors_or_skip()} (see its INDEX.md)")
    return path.read_bytes()


def mdn(disposition: str = "processed", **overrides: object) -> bytes:
    arguments: dict[str, object] = {
        "original": plain_message(sender=BOB, to=ALICE),
        "reporting_ua": "mx.a.test; directmilter",
        "final_recipient": ALICE,
        "to": BOB,
        "disposition": disposition,
        "date": WHEN,
        "message_id_domain": "direct.a.test",
    }
    arguments.update(overrides)
    return build_mdn(**arguments)  # type: ignore[arg-type]


def dsn(**overrides: object) -> bytes:
    arguments: dict[str, object] = {
        "reporting_mta": "mx.a.test",
        "original_message_id": ORIGINAL_ID,
        "original_sender": BOB,
        "from_address": "postmaster@direct.a.test",
        "recipients": [(ALICE, "failed", "5.2.2", "mailbox full: ask the recipient to make room, then resend")],
        "date": WHEN,
        "message_id_domain": "direct.a.test",
    }
    arguments.update(overrides)
    return build_dsn(**arguments)  # type: ignore[arg-type]


def strict_parse(message: bytes) -> Message:
    """Python's parser with every defect an exception; every header of every part is read (header defects are
    found lazily)."""
    parsed = email.message_from_bytes(message, policy=email.policy.strict)
    for part in parsed.walk():
        assert not part.defects, part.defects
        for name, value in part.items():
            assert not getattr(value, "defects", ()), (name, value.defects)
    default = email.message_from_bytes(message, policy=email.policy.default)
    for part in default.walk():
        assert not part.defects, part.defects
    return parsed


def assert_wire_clean(message: bytes) -> None:
    """CRLF only, 7-bit, no line over 998 octets, and every header continuation line starts with whitespace."""
    assert b"\n" not in message.replace(b"\r\n", b"")
    assert b"\r" not in message.replace(b"\r\n", b"")
    assert all(byte < 0x80 for byte in message)
    lines = message.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    for block in _header_blocks(message):
        for line in block:
            assert line[:1] in (b" ", b"\t") or re.match(rb"^[\x21-\x39\x3b-\x7e]+:", line), line


def _header_blocks(message: bytes) -> list[list[bytes]]:
    """Header blocks of the message, its parts and the report's field blocks (all are RFC 5322-style fields)."""
    blocks: list[list[bytes]] = []
    top = parse_entity(message)
    blocks.append(top.raw[: len(top.raw) - len(top.body)].split(b"\r\n")[:-2])
    boundary = top.param("boundary")
    assert boundary
    for part in top.body.split(b"--" + boundary.encode())[1:-1]:
        head, _, body = part.strip(b"\r\n").partition(b"\r\n\r\n")
        blocks.append(head.split(b"\r\n"))
        if b"message/" in head:
            blocks.extend(block.split(b"\r\n") for block in body.split(b"\r\n\r\n") if block.strip())
    return blocks


def report_fields(message: bytes) -> str:
    """The machine-readable part of a built report, as text."""
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    return parsed.get_payload()[1].as_string()  # type: ignore[index,no-any-return]


# --- MDN -----------------------------------------------------------------------------------------------------


@conformance("AS-3.0-1")
def test_processed_mdn_structure() -> None:
    message = mdn()
    assert_wire_clean(message)
    parsed = strict_parse(message)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "disposition-notification"
    human, report = parsed.get_payload()  # type: ignore[misc]
    assert human.get_content_type() == "text/plain"
    assert report.get_content_type() == "message/disposition-notification"
    fields = report.get_payload()[0]  # Python reads the fields as the headers of an inner message
    assert fields["Final-Recipient"] == f"rfc822; {ALICE}"
    assert fields["Original-Message-ID"] == ORIGINAL_ID
    assert fields["Disposition"] == "automatic-action/MDN-sent-automatically; processed"
    assert fields["Reporting-UA"] == "mx.a.test; directmilter"
    assert "Error" not in fields and "Failure" not in fields
    for header in ("From", "To", "Date", "Message-ID", "Subject", "In-Reply-To", "MIME-Version"):
        assert parsed[header], header
    assert parsed["From"] == ALICE and parsed["To"] == BOB
    assert parsed["In-Reply-To"] == ORIGINAL_ID
    assert parsed["Subject"] == f"Processed: message {ORIGINAL_ID}"
    assert parsed["Date"].datetime == WHEN
    assert re.fullmatch(r"<[0-9a-f]+\.\d+@direct\.a\.test>", parsed["Message-ID"])


@conformance("AS-3.0-1")
@pytest.mark.parametrize("disposition", ["processed", "dispatched", "failed"])
def test_mdn_round_trip(disposition: str) -> None:
    own_id = new_message_id("direct.a.test")
    message = mdn(disposition, message_id=own_id)
    strict_parse(message)
    notification = parse_notification(message)
    assert notification is not None
    assert notification.kind == "mdn"
    assert notification.original_message_id == ORIGINAL_ID
    assert notification.correlated_by == "original-message-id"
    assert notification.message_id == own_id
    assert notification.sender == ALICE
    assert notification.reporting == "mx.a.test; directmilter"
    [result] = notification.recipients
    assert (result.final_recipient, result.result, result.status, result.text) == (ALICE, disposition, None, None)
    assert result.modifiers == ()


def test_dispatched_mdn_with_final_destination_extension() -> None:
    message = mdn("dispatched", extensions={FINAL_DESTINATION_DELIVERY: ""})
    strict_parse(message)
    assert b"\r\nX-DIRECT-FINAL-DESTINATION-DELIVERY:\r\n" in message
    notification = parse_notification(message)
    assert notification is not None
    assert notification.final_destination_delivery
    assert notification.recipients[0].result == "dispatched"


@conformance("AS-3.1.1-2")
def test_error_modifier_always_comes_with_the_error_field() -> None:
    message = mdn("failed", error="content rule: application/x-unknown is not accepted here")
    strict_parse(message)
    fields = report_fields(message)
    assert "Disposition: automatic-action/MDN-sent-automatically; failed/error" in fields
    assert "Error: content rule: application/x-unknown is not accepted here" in fields
    notification = parse_notification(message)
    assert notification is not None
    assert notification.recipients[0].modifiers == ("error",)
    assert notification.recipients[0].text == "content rule: application/x-unknown is not accepted here"
    # No error text, no modifier: "/error" never appears without its field.
    for plain in (mdn("failed"), mdn("processed"), mdn("failed", error="  \n ")):
        assert b"/error" not in plain and b"\r\nError:" not in plain


@conformance("AS-3.1.1-3", "AS-3.3-4")
def test_error_and_failure_text_are_normalised() -> None:
    message = mdn("failed", error=NASTY, failure=NASTY)
    assert_wire_clean(message)
    strict_parse(message)
    notification = parse_notification(message)
    assert notification is not None
    fields = notification.recipients[0].fields
    for name in ("error", "failure"):
        # Unfolded, the text reads as its words: line breaks became folds, the long word was cut (not lost).
        words = fields[name].split()
        assert words[:5] == ["first", "line", "second", "line", "third"]
        assert "".join(w for w in words if set(w) == {"y"}) == "y" * 2000
        assert words[-4:] == ["caf\\xe9", "bell", "(paren)", "back\\slash"]
    assert notification.recipients[0].text is not None
    # Each line of the original text starts its own (continuation) line.
    assert b"\r\nError: first line\r\n second line\r\n third line\r\n fourth" in message


@conformance("AS-3.3-2")
def test_failed_mdn_carries_failure_text() -> None:
    reason = "mailbox full: the recipient's mailbox has no room; resend later or contact the recipient's HISP"
    message = mdn("failed", failure=reason)
    assert f"Failure: {reason[:60]}" in report_fields(message)
    notification = parse_notification(message)
    assert notification is not None and notification.recipients[0].text == reason


def test_no_subject_or_content_of_the_original_in_any_report() -> None:
    original = plain_message(sender=BOB, to=ALICE, body=f"body {CANARY}\r\n".encode())
    assert CANARY.encode() in original
    reports = [mdn(d, original=original) for d in ("processed", "dispatched", "failed")]
    reports.append(mdn("failed", original=parse_entity(original), failure="x", error="y"))
    reports.append(dsn(original_message_id=parse_entity(original).get("message-id")))
    for report in reports:
        assert CANARY.encode() not in report
        assert b"Patient" not in report


def test_mdn_with_a_legacy_message_id() -> None:
    """The RI writes Message-IDs without angle brackets: echoed in Original-Message-ID, no In-Reply-To."""
    original = b"From: x@y.test\r\nmessage-id: 0c796d0e-4c76-43e8-be40-2cd5e30c1005\r\n\r\n"
    message = mdn(original=original)
    strict_parse(message)
    assert b"Original-Message-ID: 0c796d0e-4c76-43e8-be40-2cd5e30c1005\r\n" in message
    assert b"In-Reply-To" not in message
    notification = parse_notification(message)
    assert notification is not None
    assert notification.original_message_id == "0c796d0e-4c76-43e8-be40-2cd5e30c1005"
    # No Message-ID at all: no Original-Message-ID field (RFC 3798 3.2.5), still a valid MDN.
    message = mdn(original=b"From: x@y.test\r\n\r\n")
    strict_parse(message)
    assert b"Original-Message-ID" not in message and b"In-Reply-To" not in message


def test_mdn_from_lf_only_original_and_naive_date() -> None:
    message = mdn(original=b"Message-ID: <a@b.test>\nSubject: s\n\nbody\n", date=datetime(2026, 1, 2, 3, 4))
    assert_wire_clean(message)
    parsed = strict_parse(message)
    assert parsed["Date"].datetime == datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    assert parsed["In-Reply-To"] == "<a@b.test>"


@pytest.mark.parametrize(
    "overrides",
    [
        {"to": "bob@direct.b.test\r\nBcc: eve@evil.test"},
        {"final_recipient": "Alice <alice@direct.a.test>"},
        {"final_recipient": ""},
        {"disposition": "displayed"},
        {"disposition": "processed", "failure": "not for a processed MDN"},
        {"extensions": {"Disposition": "x"}},
        {"extensions": {"Bad Name": "x"}},
        {"message_id_domain": "bad domain"},
        {"message_id": "no-brackets@x"},
    ],
)
def test_mdn_refuses_bad_input(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        mdn(**overrides)


# --- DSN -----------------------------------------------------------------------------------------------------


@conformance("AS-3.0-2", "AS-3.1.2-1", "AS-3.3-2")
def test_dsn_structure() -> None:
    message = dsn(arrival_date=WHEN)
    assert_wire_clean(message)
    parsed = strict_parse(message)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    human, report = parsed.get_payload()  # type: ignore[misc]
    assert human.get_content_type() == "text/plain"
    assert report.get_content_type() == "message/delivery-status"
    per_message, *per_recipient = report.get_payload()  # Python splits delivery-status into field blocks
    assert per_message["Reporting-MTA"] == "dns; mx.a.test"
    assert per_message["X-Original-Message-ID"] == ORIGINAL_ID
    assert per_message["Arrival-Date"] == "Mon, 23 Nov 2026 10:05:00 +0000"
    [recipient] = per_recipient
    assert recipient["Final-Recipient"] == f"rfc822; {ALICE}"
    assert recipient["Action"] == "failed"
    assert recipient["Status"].startswith("5.2.2 (mailbox full")
    assert recipient["Diagnostic-Code"].startswith("smtp; 550 5.2.2 mailbox full")
    for header in ("From", "To", "Date", "Message-ID", "Subject", "In-Reply-To", "MIME-Version"):
        assert parsed[header], header
    assert parsed["To"] == BOB and parsed["In-Reply-To"] == ORIGINAL_ID
    assert parsed["Subject"] == f"Delivery failure: message {ORIGINAL_ID}"


@conformance("AS-3.0-2", "AS-3.1.2-1")
def test_dsn_round_trip_several_recipients() -> None:
    message = dsn(recipients=[
        DsnRecipient(ALICE, "failed", "5.7.1", "signer not trusted (no path to an anchor)\nresend signed"),
        DsnRecipient("al2@direct.a.test", "delayed", "4.4.1", original_recipient="al2@direct.a.test"),
        ("al3@direct.a.test", "delivered", "2.0.0", None),
    ])
    strict_parse(message)
    notification = parse_notification(message)
    assert notification is not None
    assert notification.kind == "dsn"
    assert notification.original_message_id == ORIGINAL_ID
    assert notification.correlated_by == "x-original-message-id"
    assert notification.reporting == "dns; mx.a.test"
    assert notification.sender == "postmaster@direct.a.test"
    assert [(r.final_recipient, r.result, r.status) for r in notification.recipients] == [
        (ALICE, "failed", "5.7.1"),
        ("al2@direct.a.test", "delayed", "4.4.1"),
        ("al3@direct.a.test", "delivered", "2.0.0"),
    ]
    assert notification.recipients[0].text == "signer not trusted (no path to an anchor) resend signed"
    assert notification.recipients[1].text is None
    assert notification.recipients[1].original_recipient == "al2@direct.a.test"


@conformance("AS-3.3-4")
def test_dsn_text_is_normalised() -> None:
    message = dsn(recipients=[(ALICE, "failed", "5.7.1", NASTY)])
    assert_wire_clean(message)
    strict_parse(message)
    notification = parse_notification(message)
    assert notification is not None
    text = notification.recipients[0].text
    assert text is not None and text.startswith("first line second line third line fourth y")
    assert text.endswith("(paren) back\\slash")


@pytest.mark.parametrize(
    "overrides",
    [
        {"recipients": []},
        {"recipients": [(ALICE, "bounced", "5.0.0", None)]},
        {"recipients": [(ALICE, "failed", "5.0", None)]},
        {"recipients": [("not an address", "failed", "5.0.0", None)]},
        {"reporting_mta": "mx a"},
        {"original_sender": "bob@x\nBcc: e@f"},
    ],
)
def test_dsn_refuses_bad_input(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        dsn(**overrides)


# --- reading -------------------------------------------------------------------------------------------------


@conformance("AS-3.1.2-2")
def test_dsn_without_x_original_message_id_correlates_by_in_reply_to() -> None:
    message = dsn(original_message_id="<other@direct.a.test>")
    message = message.replace(b"X-Original-Message-ID: <other@direct.a.test>\r\n", b"")
    message = message.replace(b"In-Reply-To: <other@direct.a.test>", f"In-Reply-To: {ORIGINAL_ID}".encode())
    assert b"X-Original-Message-ID" not in message
    notification = parse_notification(message)
    assert notification is not None
    assert (notification.original_message_id, notification.correlated_by) == (ORIGINAL_ID, "in-reply-to")


@conformance("AS-3.1.2-2")
def test_dsn_vector_correlation() -> None:
    data = vector(f"{COMMON_MESSAGES}/DSNMessage.txt")
    notification = parse_notification(data)
    assert notification is not None
    assert (notification.original_message_id, notification.correlated_by) == (RI_ORIGINAL_ID, "x-original-message-id")
    stripped = re.sub(rb"X-Original-Message-Id:[^\n]*\n", b"", data)
    stripped = stripped.replace(b"MIME-Version: 1.0\n", b"MIME-Version: 1.0\nIn-Reply-To: <legacy@example.org>\n")
    notification = parse_notification(stripped)
    assert notification is not None
    assert (notification.original_message_id, notification.correlated_by) == ("<legacy@example.org>", "in-reply-to")


@conformance("AS-3.0-1", "AS-3.0-2")
@pytest.mark.parametrize("relative", REPORT_VECTORS)
def test_every_vector_report_is_read(relative: str) -> None:
    data = vector(relative)
    assert is_notification(data)
    notification = parse_notification(data)
    assert notification is not None
    kind = "mdn" if "MDN" in relative.rsplit("/", 1)[1] else "dsn"
    assert notification.kind == kind
    assert notification.message_id is not None and notification.sender is not None
    assert len(notification.recipients) == 1
    [result] = notification.recipients
    name = relative.rsplit("/", 1)[1]
    if kind == "mdn":
        expected_recipient = {
            "MDNMessageNonCanonicalized.txt": "llindsey@messaging.cernerdemos.com",
            "MDNResponse.txt": None,
            "MDNMessageNoFinalRecip.txt": None,
        }.get(name, RI_SENDER)
        assert result.final_recipient == expected_recipient  # written without "rfc822;", or with a friendly name
        expected = None if name == "MDNMessageNoDisp.txt" else "dispatched" if "Dispatched" in name else "processed"
        assert result.result == expected
        if name != "MDNResponse.txt":
            assert notification.original_message_id == RI_ORIGINAL_ID
        if "Dispatched" in name:
            assert notification.final_destination_delivery  # upper- and lower-case extension names alike
    else:
        assert result.final_recipient == "Carol@Ivory.EDU"
        assert result.original_recipient == "Carol@Ivory.EDU"
        if "NoActionOrStatus" in name:
            assert (result.result, result.status) == (None, None)
        else:
            assert (result.result, result.status) == ("failed", "5.0.0")
        assert result.text == "550 error - no such recipient"
        assert notification.reporting == "dns; Example.ORG"


def test_vector_in_reply_to_fallback_for_mdn() -> None:
    notification = parse_notification(vector(f"{COMMON_MESSAGES}/MDNMessageOrigInReplyTo.txt"))
    assert notification is not None
    assert (notification.original_message_id, notification.correlated_by) == (RI_ORIGINAL_ID, "in-reply-to")


@pytest.mark.parametrize(
    "relative",
    [
        f"{GATEWAY_MESSAGES}/PlainOutgoingMessage.txt",
        f"{GATEWAY_MESSAGES}/PlainIncomingMessage.txt",
        f"{GATEWAY_MESSAGES}/PlainUntrustedReliableOutgoingMessage.txt",
        f"{JAVA_MESSAGES}/MultipartMimeMessage.txt",
        "nhin-d-dotnet/unittests/agent/TestMessages/simple.eml",
    ],
)
def test_vector_plain_messages_are_not_reports(relative: str) -> None:
    data = vector(relative)
    assert not is_notification(data)
    assert parse_notification(data) is None


def test_disposition_variants() -> None:
    base = mdn()
    for written, expected, modifiers in [
        (b"manual-action/MDN-sent-manually; displayed", "displayed", ()),
        (b"automatic-action/MDN-sent-automatically;PROCESSED/Error, warning", "processed", ("error", "warning")),
        (b"automatic-action/MDN-sent-automatically (comment); failed", "failed", ()),
        (b"dispatched", "dispatched", ()),
    ]:
        message = base.replace(b"automatic-action/MDN-sent-automatically; processed", written)
        notification = parse_notification(message)
        assert notification is not None
        assert (notification.recipients[0].result, notification.recipients[0].modifiers) == (expected, modifiers)


def test_report_type_and_part_detection() -> None:
    message = mdn()
    upper = message.replace(b"report-type=disposition-notification", b"report-type=Disposition-Notification")
    assert parse_notification(upper) is not None
    missing = message.replace(b"report-type=disposition-notification;", b"")
    notification = parse_notification(missing)
    assert notification is not None and notification.kind == "mdn"  # found by its message/disposition-notification part
    other = message.replace(b"report-type=disposition-notification", b"report-type=feedback-report").replace(
        b"message/disposition-notification", b"message/feedback-report")
    assert parse_notification(other) is None
    assert is_notification(other)  # AS 3.0: any multipart/report is a mail system report


def test_is_notification() -> None:
    assert is_notification(mdn())
    assert is_notification(parse_entity(dsn()))
    assert not is_notification(plain_message())
    assert not is_notification(b"")
    assert not is_notification(b"\x00garbage")
    bare = b"Content-Type: message/disposition-notification\r\n\r\nDisposition: automatic-action/x; processed\r\n"
    assert is_notification(bare)
    notification = parse_notification(bare)
    assert notification is not None and notification.recipients[0].result == "processed"
    assert is_notification(b"Content-Type: Message/Delivery-Status\r\n\r\nReporting-MTA: dns; x\r\n")
    # Looked through a message/rfc822 wrapper and a multipart/signed (the shapes of a decrypted Direct message).
    wrapped = b"Content-Type: message/rfc822\r\n\r\n" + mdn()
    assert is_notification(wrapped)
    wrapped_notification = parse_notification(wrapped)
    assert wrapped_notification is not None and wrapped_notification.sender == ALICE
    signed = (b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; '
              b'boundary="s"\r\n\r\n--s\r\n' + wrapped + b"\r\n--s\r\nContent-Type: application/pkcs7-signature"
              b"\r\n\r\nAAAA\r\n--s--\r\n")
    assert is_notification(signed)
    signed_notification = parse_notification(signed)
    assert signed_notification is not None and signed_notification.original_message_id == ORIGINAL_ID
    # A report attached to an ordinary message is not itself a report.
    attached = (b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n--m\r\nContent-Type: text/plain\r\n\r\nhi\r\n'
                b"--m\r\nContent-Type: message/rfc822\r\n\r\n" + mdn() + b"\r\n--m--\r\n")
    assert not is_notification(attached)
    assert parse_notification(attached) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_parse_never_raises_on_garbage(data: bytes) -> None:
    parse_notification(data)
    is_notification(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_parse_never_raises_on_damaged_reports(data: st.DataObject) -> None:
    message = bytearray(data.draw(st.sampled_from([mdn(), dsn(), mdn("failed", error="e")])))
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(message) - 1))
        message[position] = data.draw(st.sampled_from(b"\r\n:;()<>-\\ \x00\x80xX"))
    parse_notification(bytes(message))
    is_notification(bytes(message))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=3000))
def test_format_field_is_always_wire_clean(text: str) -> None:
    field = format_field("Error", text)
    assert field.startswith(b"Error:") and field.endswith(b"\r\n")
    assert all(byte < 0x80 for byte in field)
    lines = field.split(b"\r\n")[:-1]
    assert all(len(line) <= 998 for line in lines)
    assert all(line[:1] == b" " and line.strip() for line in lines[1:])
    assert b"\r" not in field.replace(b"\r\n", b"") and b"\n" not in field.replace(b"\r\n", b"")


# --- where the MDN goes, and what was asked for --------------------------------------------------------------


def headers(*lines: str) -> bytes:
    return ("".join(line + "\r\n" for line in lines) + "Subject: s\r\n\r\nbody\r\n").encode()


@conformance("AS-3.2-3")
@pytest.mark.parametrize(
    ("envelope_sender", "lines", "expected"),
    [
        # (a) no Disposition-Notification-To: the MAIL FROM
        (BOB, [f"From: {BOB2}", f"Sender: {BOB2}"], BOB),
        (f"<{BOB}>", [f"From: {BOB2}"], BOB),
        # (b) MAIL FROM <> with a Sender
        ("<>", [f"From: Bob <{BOB}>", f"Sender: {BOB2}"], BOB2),
        ("", [f"From: {BOB}", f"Sender: Bob Two <{BOB2}>"], BOB2),
        # (c) MAIL FROM <> and no Sender: the From
        ("<>", [f"From: Bob <{BOB}>"], BOB),
        # Disposition-Notification-To comes first, its first address only
        (BOB, [f"From: {BOB}", f"Disposition-Notification-To: Two <{BOB2}>, {BOB}"], BOB2),
        ("<>", [f"Disposition-Notification-To: {BOB2}"], BOB2),
        # an unusable Disposition-Notification-To counts as absent
        (BOB, ["Disposition-Notification-To: undisclosed-recipients:;", f"From: {BOB2}"], BOB),
        # nothing usable at all
        ("<>", ["From: undisclosed-recipients:;"], None),
        ("", ["To: x@y.test"], None),
    ],
)
def test_mdn_target_order(envelope_sender: str, lines: list[str], expected: str | None) -> None:
    raw = headers(*lines)
    assert mdn_target(envelope_sender=envelope_sender, headers=parse_entity(raw)) == expected
    assert mdn_target(envelope_sender=envelope_sender, headers=raw) == expected


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true", True),
        ("x-direct-final-destination-delivery=Optional,TRUE", True),
        ("signed-receipt-protocol=optional,pkcs7-signature; X-DIRECT-FINAL-DESTINATION-DELIVERY=required,true", True),
        ("X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,false", False),
        ("X-DIRECT-FINAL-DESTINATION-DELIVERY", False),
        ("signed-receipt-protocol=optional,pkcs7-signature", False),
        (None, False),
    ],
)
def test_wants_dispatched(options: str | None, expected: bool) -> None:
    raw = headers(f"From: {BOB}", *([f"Disposition-Notification-Options: {options}"] if options else []))
    assert wants_dispatched(parse_entity(raw)) is expected
    assert wants_dispatched(raw) is expected


def test_disposition_options_parsed() -> None:
    raw = headers("Disposition-Notification-Options: signed-receipt-protocol=optional,pkcs7-signature,x;"
                  " X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true")
    assert disposition_options(raw) == {
        "signed-receipt-protocol": ("optional", ("pkcs7-signature", "x")),
        "x-direct-final-destination-delivery": ("optional", ("true",)),
    }


def test_wants_dispatched_vector() -> None:
    data = vector(f"{GATEWAY_MESSAGES}/PlainUntrustedReliableOutgoingMessage.txt")
    assert wants_dispatched(data)
    assert not wants_dispatched(vector(f"{GATEWAY_MESSAGES}/PlainOutgoingMessage.txt"))


def test_the_postmasters_copy_keeps_the_report_and_loses_the_returned_message() -> None:
    """Issue 19: withhold_returned replaces RFC 6522's third part (message/rfc822, text/rfc822-headers) with a
    note and keeps everything else byte for byte; a message that is no report keeps its header block only."""
    from directmilter.notify.report import WITHHELD, withhold_returned

    head = b"From: MAILER-DAEMON@mx.a.test\r\nSubject: Postmaster Copy\r\nMIME-Version: 1.0\r\n"
    human = b"Content-Type: text/plain\r\n\r\nQueue id ABC: delivery to gone@direct.a.test failed."
    status = b"Content-Type: message/delivery-status\r\n\r\nFinal-Recipient: rfc822; gone@direct.a.test\r\n" \
             b"Action: failed\r\nStatus: 5.2.2"
    for returned_type in (b"text/rfc822-headers", b"message/rfc822"):
        returned = b"Content-Type: " + returned_type + b"\r\n\r\nSubject: secret diagnosis\r\nFrom: bob@x.test"
        report = (head + b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n"
                  + b"".join(b"--b\r\n" + p + b"\r\n" for p in (human, status, returned)) + b"--b--\r\n")
        stripped = withhold_returned(report)
        assert b"secret diagnosis" not in stripped and WITHHELD in stripped
        assert human in stripped and status in stripped and stripped.startswith(head)
        assert parse_notification(stripped) is not None  # still a report anyone can read
    plain = head + b"Content-Type: text/plain\r\n\r\nSubject: secret diagnosis\r\n"
    stripped = withhold_returned(plain)
    assert b"secret diagnosis" not in stripped and b"Subject: Postmaster Copy" in stripped
    assert stripped.endswith(WITHHELD) and b"text/plain\r\n\r\nSubject" not in stripped
