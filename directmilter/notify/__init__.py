"""Mail system reports (Applicability Statement 3): building MDNs and DSNs, reading received ones.

Pure code: bytes and strings in, bytes out. Securing a report (sign and encrypt, AS 3.0) and deciding when one is
due are the agent's business; this package only writes and reads them. Every report it builds is a complete
RFC 5322 message, CRLF and 7-bit, with From, To, Date, Message-ID, Subject and In-Reply-To (AS 2.2, 3.1.1,
3.1.2), and never repeats the Subject or content of the message reported on.
"""

from __future__ import annotations

from directmilter.notify.dsn import ACTIONS, Action, DsnRecipient, build_dsn
from directmilter.notify.mdn import (
    DISPOSITIONS,
    FINAL_DESTINATION_DELIVERY,
    Disposition,
    build_mdn,
    disposition_options,
    mdn_target,
    wants_dispatched,
)
from directmilter.notify.report import (
    Kind,
    Notification,
    RecipientResult,
    is_notification,
    may_hold_report,
    parse_notification,
    returned_message_id,
)
from directmilter.notify.text import format_field, new_message_id

__all__ = [
    "ACTIONS",
    "DISPOSITIONS",
    "FINAL_DESTINATION_DELIVERY",
    "Action",
    "Disposition",
    "DsnRecipient",
    "Kind",
    "Notification",
    "RecipientResult",
    "build_dsn",
    "build_mdn",
    "disposition_options",
    "format_field",
    "is_notification",
    "may_hold_report",
    "mdn_target",
    "new_message_id",
    "parse_notification",
    "returned_message_id",
    "wants_dispatched",
]
