"""Delivery Status Notifications (RFC 3464 as changed by Applicability Statement 3.1.2 and 3.3).

The per-message block always carries X-Original-Message-ID when the original had a Message-ID (AS 3.1.2), and
In-Reply-To repeats it for legacy correlation. Explanatory text goes both into the Status comment (AS 3.3) and
into Diagnostic-Code, normalised like an MDN's error text (AS 3.1.1).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from directmilter.notify.report import assemble
from directmilter.notify.text import (
    check_address,
    check_domain,
    clean_lines,
    clean_value,
    format_date,
    format_field,
    message_id_token,
    new_message_id,
    report_headers,
    text_body,
)

Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]
ACTIONS: tuple[Action, ...] = ("failed", "delayed", "delivered", "relayed", "expanded")
_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_REPLY_CODE = {"2": "250", "4": "450", "5": "550"}


@dataclass(frozen=True)
class DsnRecipient:
    """One recipient's outcome: ``status`` is an RFC 3463 code (``5.7.1``); ``diagnostic`` free text (no PHI)."""

    address: str
    action: Action
    status: str
    diagnostic: str | None = None
    original_recipient: str | None = None


def build_dsn(
    *,
    reporting_mta: str,
    original_message_id: str | None,
    original_sender: str,
    from_address: str,
    recipients: Sequence[DsnRecipient | tuple[str, str, str, str | None]],
    date: datetime | None = None,
    arrival_date: datetime | None = None,
    original_envelope_id: str | None = None,
    message_id_domain: str,
    message_id: str | None = None,
) -> bytes:
    """A complete DSN message (CRLF, 7-bit): ``multipart/report; report-type=delivery-status``.

    It goes to ``original_sender`` from ``from_address``. ``recipients`` are :class:`DsnRecipient` or
    ``(address, action, status, diagnostic)`` tuples. ``arrival_date`` (Arrival-Date) and ``original_envelope_id``
    (Original-Envelope-Id, the ENVID) are written only when given. Raises ValueError on an unusable address,
    domain, action or status, or on an empty recipient list.
    """
    mta = check_domain(reporting_mta, "reporting_mta")
    check_address(original_sender, "original_sender")
    check_address(from_address, "from_address")
    entries = [r if isinstance(r, DsnRecipient) else DsnRecipient(r[0], _action(r[1]), r[2], r[3]) for r in recipients]
    if not entries:
        raise ValueError("a DSN needs at least one recipient")
    original_id = clean_value(original_message_id)
    own_id = message_id if message_id is not None else new_message_id(message_id_domain)
    if message_id_token(own_id) != own_id:
        raise ValueError(f"message_id: not a <msg-id>: {own_id!r}")

    per_message = [format_field("Reporting-MTA", f"dns; {mta}")]
    if original_envelope_id is not None and clean_value(original_envelope_id):
        per_message.append(format_field("Original-Envelope-Id", clean_value(original_envelope_id) or ""))
    if original_id:
        per_message.append(format_field("X-Original-Message-ID", original_id))
    if arrival_date is not None:
        per_message.append(format_field("Arrival-Date", format_date(arrival_date)))
    blocks = [b"".join(per_message)]
    lines = []
    for entry in entries:
        blocks.append(_recipient_block(entry))
        text = " ".join(clean_lines(entry.diagnostic or ""))
        lines.append(f"{entry.address}: {entry.action} ({entry.status}){': ' + text if text else ''}")

    reference = original_id or "(no Message-ID)"
    actions = {entry.action for entry in entries}
    headline = ("could not be delivered to" if "failed" in actions
                else "is delayed for" if "delayed" in actions else "has this status for")
    human = text_body([
        f"This is an automatically generated delivery status notification (RFC 3464) from {mta}.",
        f"Your message {reference} {headline} the following recipients:",
        "\n".join(lines),
        "This notification does not repeat the content of your message.",
    ])
    subject = ("Delivery failure" if "failed" in actions
               else "Delivery delayed" if "delayed" in actions else "Delivery status")
    headers = report_headers(from_address, original_sender, date, own_id, f"{subject}: message {reference}",
                             original_id)
    return assemble(headers, report_type="delivery-status", human=human, report=b"\r\n".join(blocks))


def _action(value: str) -> Action:
    for action in ACTIONS:
        if value == action:
            return action
    raise ValueError(f"DSN action must be one of {', '.join(ACTIONS)}, not {value!r}")


def _recipient_block(entry: DsnRecipient) -> bytes:
    check_address(entry.address, "recipient")
    _action(entry.action)
    if not _STATUS.match(entry.status):
        raise ValueError(f"not an RFC 3463 status code: {entry.status!r}")
    fields = []
    if entry.original_recipient is not None:
        original = check_address(entry.original_recipient, "original_recipient")
        fields.append(format_field("Original-Recipient", f"rfc822; {original}"))
    fields.append(format_field("Final-Recipient", f"rfc822; {entry.address}"))
    fields.append(format_field("Action", entry.action))
    text = "\n".join(clean_lines(entry.diagnostic or ""))
    if text:
        escaped = re.sub(r"([()\\])", r"\\\1", text)
        fields.append(format_field("Status", f"{entry.status} ({escaped})"))
        fields.append(format_field("Diagnostic-Code", f"smtp; {_REPLY_CODE[entry.status[0]]} {entry.status} {text}"))
    else:
        fields.append(format_field("Status", entry.status))
    return b"".join(fields)


__all__ = ["ACTIONS", "Action", "DsnRecipient", "build_dsn"]
