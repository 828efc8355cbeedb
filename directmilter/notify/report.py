"""multipart/report (RFC 6522): assembling the reports this STA sends, and reading the ones it receives.

Reading is lenient on purpose. The reference implementations' own notifications write ``Final-Recipient: user@host``
without the ``rfc822;`` address type, lower-case extension names, LF line ends, no closing boundary, report fields in
the part's header block, or leave out Disposition, Final-Recipient, Action or Status altogether. None of that
raises: :func:`parse_notification` returns whatever can be read, and ``None`` only when the message is not an MDN
or DSN at all (or has no readable header block).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from directmilter.cms.fields import address_list
from directmilter.cms.mime import (
    CRLF,
    Entity,
    canonicalize,
    decode_body,
    multipart_spans,
    new_boundary,
    parse_entity,
    split_multipart,
)
from directmilter.errors import MalformedMessage

Kind = Literal["mdn", "dsn"]

#: report-type parameter values and the media types of the machine-readable part, per kind (RFC 6533 adds the
#: "global" forms, which carry UTF-8).
_REPORT_TYPES: dict[str, Kind] = {
    "disposition-notification": "mdn",
    "global-disposition-notification": "mdn",
    "delivery-status": "dsn",
    "global-delivery-status": "dsn",
}
_PART_TYPES: dict[str, Kind] = {f"message/{name}": kind for name, kind in _REPORT_TYPES.items()}
#: How many wrappers (message/rfc822, multipart/signed) are looked through to find the report.
_MAX_UNWRAP = 4

_NEWLINES = re.compile(r"\r\n|\r|\n")
_FIELD_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")
_STATUS = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})")
_MSG_ID = re.compile(r"<[^<>]+>")
_TYPED = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9.+-]*)\s*;(.*)$", re.DOTALL)


# --- building ------------------------------------------------------------------------------------------------


def assemble(headers: Sequence[bytes], *, report_type: str, human: bytes, report: bytes) -> bytes:
    """A complete ``multipart/report`` message: ``headers`` (formatted fields), a text/plain part, the report part.

    ``human`` and ``report`` are CRLF-terminated 7-bit bodies. The report part's media type follows from
    ``report_type`` (``message/<report-type>``).
    """
    boundary = new_boundary(human, report)
    delimiter = b"--" + boundary.encode("ascii")
    return (
        b"".join(headers)
        + b"MIME-Version: 1.0" + CRLF
        + f"Content-Type: multipart/report; report-type={report_type};".encode("ascii") + CRLF
        + f'\tboundary="{boundary}"'.encode("ascii") + CRLF
        + b"Content-Transfer-Encoding: 7bit" + CRLF
        + CRLF
        + delimiter + CRLF
        + b"Content-Type: text/plain; charset=us-ascii" + CRLF
        + b"Content-Transfer-Encoding: 7bit" + CRLF
        + CRLF
        + human
        + CRLF + delimiter + CRLF
        + f"Content-Type: message/{report_type}".encode("ascii") + CRLF
        + b"Content-Transfer-Encoding: 7bit" + CRLF
        + CRLF
        + report
        + CRLF + delimiter + b"--" + CRLF
    )


# --- reading -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecipientResult:
    """What a report says about one recipient.

    ``result`` is the MDN disposition-type (``processed``, ``dispatched``, ``failed``, ``displayed``, ...) or the DSN
    action (``failed``, ``delayed``, ``delivered``, ...), lower-case; ``None`` when the report leaves it out.
    ``status`` is the DSN status code (``5.7.1``; ``None`` for MDNs). ``text`` is the human explanation: an MDN's
    Failure and Error fields, or a DSN's Status comment (AS 3.3), else its Diagnostic-Code.
    """

    final_recipient: str | None
    result: str | None
    status: str | None = None
    text: str | None = None
    original_recipient: str | None = None
    #: MDN disposition modifiers (``error``, ...), lower-case.
    modifiers: tuple[str, ...] = ()
    #: Every field of the recipient's block (for an MDN, of the whole report), names lower-case, first one wins.
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Notification:
    """A received MDN or DSN, as far as it could be read."""

    kind: Kind
    #: The Message-ID of the message reported on: Original-Message-ID (MDN) or X-Original-Message-ID (DSN,
    #: AS 3.1.2), else the report's In-Reply-To (AS 3.1.2 SHOULD). As written there, whitespace-trimmed.
    original_message_id: str | None
    #: The field the id came from (``original-message-id``, ``x-original-message-id`` or ``in-reply-to``).
    correlated_by: str | None
    recipients: tuple[RecipientResult, ...]
    #: ``X-`` fields of the report (per-message fields for a DSN), names lower-case.
    extensions: Mapping[str, str]
    #: The report's own Message-ID header, and the address in its From header.
    message_id: str | None
    sender: str | None
    #: Reporting-UA (MDN) or Reporting-MTA (DSN), as written.
    reporting: str | None = None
    #: Every per-message field (for an MDN, every field), names lower-case, first one wins.
    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def final_destination_delivery(self) -> bool:
        """The report carries X-DIRECT-FINAL-DESTINATION-DELIVERY (Implementation Guide for Delivery Notification)."""
        return "x-direct-final-destination-delivery" in self.extensions


def may_hold_report(content_type: str) -> bool:
    """Whether an entity of this type can be or hold a report (:func:`_find_report` looks into nothing else), so
    a caller that has only a header block knows when the body is worth reading."""
    return content_type in ("multipart/report", "message/rfc822", "multipart/signed") or content_type in _PART_TYPES


def is_notification(message: Entity | bytes) -> bool:
    """Whether a message is a mail system report, never to be answered with another report (AS 3.0).

    AS 3.0 defines mail system reports as messages in the ``multipart/report`` framework, so any
    ``multipart/report`` counts, whatever its report-type, and so does a bare ``message/disposition-notification``
    or ``message/delivery-status`` (and their RFC 6533 ``global`` forms). A wrapping ``message/rfc822`` or a
    ``multipart/signed`` around it is looked through. Unparseable input is not a notification.
    """
    try:
        found = _find_report(_entity(message))
    except MalformedMessage:
        return False
    return found is not None


def parse_notification(message: bytes | Entity) -> Notification | None:
    """Read an MDN (RFC 3798) or DSN (RFC 3464); ``None`` when the message is neither (see the module notes)."""
    try:
        found = _find_report(_entity(message))
    except MalformedMessage:
        return None
    if found is None:
        return None
    report, chain = found
    located = _locate(report)
    if located is None:
        return None
    kind, blocks = located
    header = _HeaderChain(chain)
    recipients: tuple[RecipientResult, ...]
    if kind == "mdn":
        merged = [item for block in blocks for item in block]
        per_message = _first_wins(merged)
        recipients = (_mdn_recipient(merged, per_message),) if merged else ()
        reporting = per_message.get("reporting-ua")
        primary, secondary = "original-message-id", "x-original-message-id"
    else:
        per_message_block, recipient_blocks = _split_dsn(blocks)
        per_message = _first_wins(per_message_block)
        recipients = tuple(_dsn_recipient(block) for block in recipient_blocks)
        reporting = per_message.get("reporting-mta")
        primary, secondary = "x-original-message-id", "original-message-id"
    original, source = None, None
    for name in (primary, secondary):
        if per_message.get(name):
            original, source = per_message[name], name
            break
    else:
        in_reply_to = header.get("in-reply-to")
        if in_reply_to:
            match = _MSG_ID.search(in_reply_to)
            original, source = (match.group(0) if match else in_reply_to), "in-reply-to"
    senders = [address for address in address_list(header.get_all("from")) if address]
    return Notification(
        kind=kind,
        original_message_id=original,
        correlated_by=source,
        recipients=recipients,
        extensions={name: value for name, value in per_message.items() if name.startswith("x-")},
        message_id=header.get("message-id"),
        sender=senders[0] if senders else None,
        reporting=reporting,
        fields=per_message,
    )


_RETURNED_TYPES = ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers", "message/global",
                   "message/global-headers")


def returned_message_id(message: bytes | Entity) -> str | None:
    """The Message-ID of the message a report returns (its third part, RFC 6522), for reports such as an MTA's own
    bounces that name the original only there; ``None`` when there is none or it cannot be read."""
    try:
        found = _find_report(_entity(message))
        if found is None or found[0].content_type != "multipart/report":
            return None
        parts, _ = split_multipart(found[0], what="notification")
        for part in parts:
            entity = parse_entity(part, what="notification part")
            if entity.content_type in _RETURNED_TYPES:
                returned = canonicalize(decode_body(entity, what="returned message"))
                if CRLF + CRLF not in returned:
                    returned += CRLF  # headers only: end the header block
                match = _MSG_ID.search(parse_entity(returned, what="returned message").get("message-id") or "")
                return match.group(0) if match else None
    except MalformedMessage:
        return None
    return None


WITHHELD = (b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
            b"[The message this report is about is withheld here by directmilter: the headers of Direct mail are "
            b"health data. Its queue id and the delivery status are above.]\r\n")


def withhold_returned(message: bytes) -> bytes:
    """``message`` with each part that returns a message or its headers (RFC 6522's third part) replaced by a
    note; a message that is no multipart/report keeps only its header block and the note. For the postmaster's
    copies of Postfix's reports: what they are about (queue id, recipients, status) stays, what it said goes."""
    data = canonicalize(message)
    try:
        entity = parse_entity(data, what="report")
    except MalformedMessage:
        return b"MIME-Version: 1.0\r\n" + WITHHELD  # no header block worth keeping
    if entity.content_type == "multipart/report":
        try:
            spans, _ = multipart_spans(entity, what="report")
            parts = [data[a:b] for a, b in spans]
            kept = [WITHHELD if parse_entity(part, what="report part").content_type in _RETURNED_TYPES else part
                    for part in parts]
        except MalformedMessage:
            pass
        else:
            delimiter = b"--" + (entity.param("boundary") or "").encode("utf-8")
            body = b"".join(delimiter + CRLF + part + CRLF for part in kept) + delimiter + b"--" + CRLF
            return bytes(data[: entity.body_start]) + body
    head = b"".join(h.raw for h in entity.headers
                    if h.name not in ("content-type", "content-transfer-encoding", "mime-version"))
    return head + b"MIME-Version: 1.0\r\n" + WITHHELD


def _entity(message: Entity | bytes) -> Entity:
    if isinstance(message, Entity):
        return message
    return parse_entity(canonicalize(message), what="notification")


def _find_report(entity: Entity) -> tuple[Entity, list[Entity]] | None:
    """The multipart/report (or bare report part) in ``entity`` and the entities passed on the way, outermost first."""
    chain = [entity]
    current = entity
    for _ in range(_MAX_UNWRAP + 1):
        content_type = current.content_type
        if content_type == "multipart/report" or content_type in _PART_TYPES:
            return current, chain
        if content_type == "message/rfc822":
            current = parse_entity(canonicalize(decode_body(current, what="wrapped message")), what="notification")
        elif content_type == "multipart/signed":
            parts, _ = split_multipart(current, what="notification")
            if not parts:
                return None
            current = parse_entity(parts[0], what="notification")
        else:
            return None
        chain.append(current)
    return None


def _locate(report: Entity) -> tuple[Kind, list[list[tuple[str, str]]]] | None:
    """The kind of report and the field blocks of its machine-readable part (empty when it has none)."""
    if report.content_type in _PART_TYPES:
        return _PART_TYPES[report.content_type], _part_blocks(report)
    declared = _REPORT_TYPES.get((report.param("report-type") or "").strip().lower())
    try:
        parts, _ = split_multipart(report, what="notification")
    except MalformedMessage:
        parts = []
    entities: list[Entity] = []
    for part in parts:
        try:
            entities.append(parse_entity(part, what="notification part"))
        except MalformedMessage:
            continue
    for entity in entities:
        kind = _PART_TYPES.get(entity.content_type)
        if kind is not None and (declared is None or kind == declared):
            return kind, _part_blocks(entity)
    if declared is None:
        return None
    return declared, []


def _part_blocks(part: Entity) -> list[list[tuple[str, str]]]:
    """The field blocks of a report part. Fields written in the part's own header block (as in the Java RI's
    MDNResponse.txt, which has no empty line after Content-Type) form a block of their own, the first."""
    leading = [(h.name, h.value) for h in part.headers if not h.name.startswith(("content-", "mime-version"))]
    try:
        body = decode_body(part, what="notification part")
    except MalformedMessage:
        body = part.body
    blocks = _field_blocks(body.decode("utf-8", "replace"))
    return [leading, *blocks] if leading else blocks


def _field_blocks(text: str) -> list[list[tuple[str, str]]]:
    """Blocks of ``name: value`` fields separated by empty lines; continuation lines unfolded, junk lines skipped."""
    blocks: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for line in _NEWLINES.split(text):
        if not line.strip():
            if current:
                blocks.append(current)
                current = []
        elif line[0] in " \t":
            if current:
                name, value = current[-1]
                current[-1] = (name, f"{value} {line.strip()}".strip())
        else:
            name, sep, value = line.partition(":")
            if sep and _FIELD_NAME.match(name.strip()):
                current.append((name.strip().lower(), value.strip()))
    if current:
        blocks.append(current)
    return blocks


def _first_wins(items: Sequence[tuple[str, str]]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in items:
        fields.setdefault(name, value)
    return fields


def _split_dsn(blocks: list[list[tuple[str, str]]]) -> tuple[list[tuple[str, str]], list[list[tuple[str, str]]]]:
    """Per-message block and per-recipient blocks; a first block that is plainly a recipient's is not per-message."""
    if not blocks:
        return [], []
    first = {name for name, _ in blocks[0]}
    if "reporting-mta" not in first and first & {"final-recipient", "action", "status"}:
        per_message: list[tuple[str, str]] = []
        rest = blocks
    else:
        per_message, rest = blocks[0], blocks[1:]
    recipients = [b for b in rest if {n for n, _ in b} & {"final-recipient", "original-recipient", "action", "status"}]
    return per_message, recipients


def _mdn_recipient(items: list[tuple[str, str]], fields: dict[str, str]) -> RecipientResult:
    result, modifiers = _disposition(fields.get("disposition"))
    texts = [value for name, value in items if name in ("failure", "error") and value]
    return RecipientResult(
        final_recipient=_address(fields.get("final-recipient")),
        result=result,
        text="; ".join(texts) or None,
        original_recipient=_address(fields.get("original-recipient")),
        modifiers=modifiers,
        fields=fields,
    )


def _dsn_recipient(block: list[tuple[str, str]]) -> RecipientResult:
    fields = _first_wins(block)
    action = _strip_comments(fields.get("action", "")).split()
    status_value = fields.get("status", "")
    status = _STATUS.match(status_value)
    comment = _comment(status_value)
    diagnostic = fields.get("diagnostic-code")
    if diagnostic:
        typed = _TYPED.match(diagnostic)
        diagnostic = (typed.group(2).strip() if typed else diagnostic.strip()) or None
    return RecipientResult(
        final_recipient=_address(fields.get("final-recipient")),
        result=action[0].lower() if action else None,
        status=status.group(1) if status else None,
        text=comment or diagnostic,
        original_recipient=_address(fields.get("original-recipient")),
        fields=fields,
    )


def _address(value: str | None) -> str | None:
    """The address in a Final-/Original-Recipient field: ``rfc822; a@b``, bare ``a@b`` or ``Name <a@b>``."""
    if not value:
        return None
    typed = _TYPED.match(value)
    text = (typed.group(2) if typed else value).strip()
    if "<" in text:
        found = [address for address in address_list([text]) if address]
        if found:
            return found[0]
    return text or None


def _disposition(value: str | None) -> tuple[str | None, tuple[str, ...]]:
    """``automatic-action/MDN-sent-automatically; processed/error`` -> (``processed``, (``error``,))."""
    if not value:
        return None, ()
    value = _strip_comments(value)
    _, sep, rest = value.partition(";")
    disposition = rest if sep else value
    kind, _, modifiers = disposition.partition("/")
    kind = kind.strip().lower()
    return (kind or None), tuple(m.strip().lower() for m in modifiers.split(",") if m.strip())


def _strip_comments(value: str) -> str:
    return re.sub(r"\((?:[^()\\]|\\.)*\)", " ", value)


def _comment(value: str) -> str | None:
    """The text of the first (outermost) comment in a structured value, quoted-pairs undone, unfolded."""
    start = value.find("(")
    if start < 0:
        return None
    depth, out, index = 0, [], start
    while index < len(value):
        char = value[index]
        if char == "\\" and index + 1 < len(value):
            out.append(value[index + 1])
            index += 2
            continue
        if char == "(":
            depth += 1
            if depth > 1:
                out.append(char)
        elif char == ")":
            depth -= 1
            if depth == 0:
                break
            out.append(char)
        else:
            out.append(char)
        index += 1
    text = " ".join("".join(out).split())
    return text or None


class _HeaderChain:
    """Header lookup through wrappers: the innermost entity that has the field wins."""

    def __init__(self, chain: list[Entity]) -> None:
        self._chain = list(reversed(chain))

    def get(self, name: str) -> str | None:
        for entity in self._chain:
            value = entity.get(name)
            if value is not None:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        for entity in self._chain:
            values = entity.get_all(name)
            if values:
                return values
        return []


__all__ = ["WITHHELD", "Kind", "Notification", "RecipientResult", "assemble", "is_notification", "may_hold_report",
           "parse_notification", "withhold_returned"]
