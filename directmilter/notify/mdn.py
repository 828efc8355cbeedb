"""Message Disposition Notifications (RFC 3798 as changed by Applicability Statement 3.1.1, 3.2 and 3.3).

:func:`build_mdn` writes the MDN a receiving STA sends; :func:`mdn_target` says where it goes (AS 3.2) and
:func:`wants_dispatched` whether the sender also asked for a dispatched MDN (Implementation Guide for Delivery
Notification in Direct). The MDN never repeats the original message's Subject, body or other headers: only its
Message-ID (in Original-Message-ID, In-Reply-To and the report's own Subject).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Literal

from directmilter.cms.fields import address_list
from directmilter.cms.mime import Entity, canonicalize, parse_entity
from directmilter.notify.report import assemble
from directmilter.notify.text import (
    check_address,
    clean_value,
    format_field,
    message_id_token,
    new_message_id,
    report_headers,
    text_body,
    usable_address,
)

Disposition = Literal["processed", "dispatched", "failed"]
DISPOSITIONS: tuple[Disposition, ...] = ("processed", "dispatched", "failed")
#: Direct's extension for final-destination delivery (Implementation Guide for Delivery Notification in Direct).
FINAL_DESTINATION_DELIVERY = "X-DIRECT-FINAL-DESTINATION-DELIVERY"
#: RFC 3798 fields an extension may not shadow.
_STANDARD_FIELDS = frozenset(
    {"reporting-ua", "mdn-gateway", "original-recipient", "final-recipient", "original-message-id", "disposition",
     "failure", "error", "warning"}
)
_SUMMARY = {
    "processed": ("was received by the recipient's security agent: the signature and the sender's certificate were "
                  "verified, and the agent has taken responsibility for delivering it."),
    "dispatched": "has been delivered to the recipient's final destination.",
    "failed": "could not be delivered.",
}


def build_mdn(
    *,
    original: Entity | bytes,
    reporting_ua: str,
    final_recipient: str,
    to: str,
    disposition: Disposition,
    error: str | None = None,
    failure: str | None = None,
    extensions: Mapping[str, str] | None = None,
    original_recipient: str | None = None,
    date: datetime | None = None,
    message_id_domain: str,
    message_id: str | None = None,
) -> bytes:
    """A complete MDN message (CRLF, 7-bit): ``multipart/report; report-type=disposition-notification``.

    ``original`` is the message reported on (its header block is enough; only its Message-ID is read).
    ``final_recipient`` is the recipient the MDN is about and its From; ``to`` is where it goes (see
    :func:`mdn_target`). ``error`` adds the ``error`` disposition-modifier and, always with it, the Error field
    (AS 3.1.1); ``failure`` is the Failure field of a failed MDN (AS 3.3). Both texts may span lines: they are
    normalised to CRLF, folded, kept 7-bit and under 998 octets a line. ``extensions`` are extension fields, e.g.
    ``{FINAL_DESTINATION_DELIVERY: ""}`` on a dispatched MDN. ``message_id`` (e.g. from
    :func:`~directmilter.notify.text.new_message_id`, so it can be logged) defaults to a fresh one at
    ``message_id_domain``. Raises ValueError on an unusable address, domain, disposition or extension name.
    """
    if disposition not in DISPOSITIONS:
        raise ValueError(f"disposition must be one of {', '.join(DISPOSITIONS)}, not {disposition!r}")
    if failure is not None and disposition != "failed":
        raise ValueError("a Failure field belongs to a failed MDN only (RFC 3798 3.2.7, AS 3.3)")
    check_address(final_recipient, "final_recipient")
    check_address(to, "to")
    if original_recipient is not None:
        check_address(original_recipient, "original_recipient")
    entity = original if isinstance(original, Entity) else parse_entity(canonicalize(original), what="original")
    original_id = clean_value(entity.get("message-id"))
    own_id = message_id if message_id is not None else new_message_id(message_id_domain)
    if message_id_token(own_id) != own_id:
        raise ValueError(f"message_id: not a <msg-id>: {own_id!r}")
    ua = clean_value(reporting_ua)
    has_error = error is not None and bool(error.strip())

    fields: list[bytes] = []
    if ua:
        fields.append(format_field("Reporting-UA", ua))
    if original_recipient is not None:
        fields.append(format_field("Original-Recipient", f"rfc822; {original_recipient}"))
    fields.append(format_field("Final-Recipient", f"rfc822; {final_recipient}"))
    if original_id:
        fields.append(format_field("Original-Message-ID", original_id))
    modifier = "/error" if has_error else ""
    fields.append(format_field("Disposition", f"automatic-action/MDN-sent-automatically; {disposition}{modifier}"))
    if failure is not None and failure.strip():
        fields.append(format_field("Failure", failure))
    if has_error:
        assert error is not None
        fields.append(format_field("Error", error))
    for name, value in (extensions or {}).items():
        if name.lower() in _STANDARD_FIELDS:
            raise ValueError(f"extension field {name!r} would shadow an RFC 3798 field")
        fields.append(format_field(name, value))

    reference = original_id or "(no Message-ID)"
    paragraphs = [
        "This is an automatically generated message disposition notification (RFC 3798).",
        f"Your message {reference} to {final_recipient} {_SUMMARY[disposition]}",
    ]
    if failure is not None and failure.strip():
        paragraphs.append("Reason: " + failure)
    if has_error:
        assert error is not None
        paragraphs.append("Error: " + error)
    paragraphs.append("This notification does not repeat the content of your message.")

    subject = f"{disposition.capitalize()}: message {reference}"
    headers = report_headers(final_recipient, to, date, own_id, subject, original_id)
    return assemble(headers, report_type="disposition-notification", human=text_body(paragraphs),
                    report=b"".join(fields))


def mdn_target(*, envelope_sender: str, headers: Entity | bytes) -> str | None:
    """Where the processed MDN goes (AS 3.2): the first usable address of Disposition-Notification-To, else MAIL
    FROM, else Sender, else From. ``envelope_sender`` may be ``""`` or ``"<>"`` (null). ``None`` if none is usable.

    A Disposition-Notification-To that holds no usable address counts as absent. Only the first address is
    returned even where a field lists several.
    """
    entity = headers if isinstance(headers, Entity) else parse_entity(canonicalize(headers), what="message")
    dnt = _first_address(entity.get_all("disposition-notification-to"))
    if dnt is not None:
        return dnt
    sender = envelope_sender.strip()
    if sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1].strip()
    if sender and usable_address(sender):
        return sender
    for name in ("sender", "from"):
        found = _first_address(entity.get_all(name))
        if found is not None:
            return found
    return None


def _first_address(values: list[str]) -> str | None:
    for address in address_list(values):
        if address and usable_address(address):
            return address
    return None


def disposition_options(headers: Entity | bytes) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Disposition-Notification-Options (RFC 3798 2.2): ``{attribute: (importance, values)}``, all lower-case.

    ``X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true`` gives
    ``{"x-direct-final-destination-delivery": ("optional", ("true",))}``. Malformed parameters are skipped.
    """
    entity = headers if isinstance(headers, Entity) else parse_entity(canonicalize(headers), what="message")
    options: dict[str, tuple[str, tuple[str, ...]]] = {}
    for value in entity.get_all("disposition-notification-options"):
        for parameter in value.split(";"):
            name, sep, rest = parameter.partition("=")
            name = name.strip().lower()
            if not sep or not name:
                continue
            importance, *values = (item.strip().lower() for item in rest.split(","))
            options.setdefault(name, (importance, tuple(v for v in values if v)))
    return options


def wants_dispatched(headers: Entity | bytes) -> bool:
    """The sender asked for final-destination delivery notification (``X-DIRECT-FINAL-DESTINATION-DELIVERY=
    optional,true``, any case; ``required,true`` too)."""
    option = disposition_options(headers).get(FINAL_DESTINATION_DELIVERY.lower())
    return option is not None and option[0] in ("optional", "required") and "true" in option[1]


__all__ = [
    "DISPOSITIONS",
    "FINAL_DESTINATION_DELIVERY",
    "Disposition",
    "build_mdn",
    "disposition_options",
    "mdn_target",
    "wants_dispatched",
]
