"""Text and header-field helpers shared by the MDN and DSN builders.

Everything written here is 7-bit, CRLF-terminated and folded so that no line exceeds 998 octets (RFC 5322 2.1.1).
Free text (error, failure and diagnostic texts, AS 3.1.1 and 3.3) may arrive with LF, CR or CRLF line breaks,
non-ASCII characters, control characters or enormous lines: :func:`clean_lines` normalises it and
:func:`format_field` folds it, each original line starting a new continuation line.
"""

from __future__ import annotations

import re
import secrets
import textwrap
import time
import unicodedata
from datetime import UTC, datetime
from email.utils import format_datetime

from directmilter.cms.mime import CRLF

#: RFC 5322 2.1.1: lines SHOULD be at most 78 characters (folding aims for this) and MUST be at most 998.
SOFT_LIMIT = 78
HARD_LIMIT = 998
#: A word longer than this is cut (a cut reads back as a space after unfolding: nothing else keeps the MUST).
_CHUNK = 900

_NEWLINES = re.compile(r"\r\n|\r|\n")
_FIELD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*\.?$")
_ADDRESS = re.compile(r"^[\x21-\x7e]+@[\x21-\x7e]+$")
_MSG_ID = re.compile(r"<[^<>\s]+>")


def ascii_line(text: str) -> str:
    """One line of 7-bit printable text: controls and line breaks become spaces, non-ASCII a ``\\uXXXX`` escape."""
    out: list[str] = []
    for char in text:
        if char == "\t" or char in "\r\n" or unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            out.append(" ")
        elif ord(char) > 0x7E:
            out.append(char.encode("ascii", "backslashreplace").decode("ascii"))
        else:
            out.append(char)
    return "".join(out)


def clean_lines(text: str) -> list[str]:
    """Free text as non-empty 7-bit lines with single spaces: the line structure of the input is kept."""
    lines = (" ".join(ascii_line(line).split()) for line in _NEWLINES.split(text))
    return [line for line in lines if line]


def _words(line: str) -> list[str]:
    """The words of a clean line, any longer than a line can hold cut into pieces."""
    words: list[str] = []
    for word in line.split(" "):
        words.extend(word[i : i + _CHUNK] for i in range(0, len(word), _CHUNK))
    return words


def format_field(name: str, value: str) -> bytes:
    """``Name: value`` CRLF, folded at spaces (RFC 5322 2.2.3) and normalised (AS 3.1.1).

    Each line of a multi-line ``value`` starts a new continuation line; within a line, folding keeps lines to 78
    characters where the words allow and always to 998 octets. Continuation lines start with one space. An empty
    value gives ``Name:`` alone.
    """
    if not _FIELD_NAME.match(name):
        raise ValueError(f"not a header field name: {name!r}")
    physical: list[str] = []
    current = f"{name}:"
    fresh = True  # nothing after the name (or the fold) yet
    for line_number, line in enumerate(clean_lines(value)):
        if line_number:
            physical.append(current)
            current, fresh = "", True
        for word in _words(line):
            if fresh or len(current) + 1 + len(word) <= SOFT_LIMIT:
                current += " " + word
                fresh = False
            else:
                physical.append(current)
                current = " " + word
    physical.append(current)
    return "".join(line + "\r\n" for line in physical).encode("ascii")


def text_body(paragraphs: list[str], width: int = 76) -> bytes:
    """A text/plain us-ascii body: each paragraph wrapped to ``width`` (long words cut), a blank line between."""
    blocks: list[str] = []
    for paragraph in paragraphs:
        lines: list[str] = []
        for line in clean_lines(paragraph):
            lines.extend(textwrap.wrap(line, width=width, break_long_words=True, break_on_hyphens=False))
        if lines:
            blocks.append("\r\n".join(lines))
    return ("\r\n\r\n".join(blocks) + "\r\n").encode("ascii")


def check_address(address: str, what: str) -> str:
    """A bare addr-spec fit for a header: 7-bit, no spaces or brackets. Raises ValueError otherwise."""
    if not _ADDRESS.match(address) or any(c in address for c in "<>,;\"()"):
        raise ValueError(f"{what}: not a usable address: {address!r}")
    return address


def usable_address(address: str) -> bool:
    try:
        check_address(address, "address")
    except ValueError:
        return False
    return True


def check_domain(domain: str, what: str) -> str:
    if not _DOMAIN.match(domain):
        raise ValueError(f"{what}: not a domain name: {domain!r}")
    return domain.rstrip(".")


def new_message_id(domain: str) -> str:
    """A fresh ``<random.time@domain>`` Message-ID (RFC 5322 3.6.4)."""
    return f"<{secrets.token_hex(16)}.{time.time_ns()}@{check_domain(domain, 'message_id_domain')}>"


def format_date(moment: datetime | None) -> str:
    """An RFC 5322 date; ``None`` means now. A naive datetime is taken as UTC."""
    if moment is None:
        moment = datetime.now(UTC)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_datetime(moment)


def message_id_token(value: str | None) -> str | None:
    """The first ``<...>`` msg-id in a header value, for In-Reply-To (None if there is none)."""
    if value is None:
        return None
    match = _MSG_ID.search(value)
    return match.group(0) if match else None


def clean_value(value: str | None) -> str | None:
    """A header value copied from a received message, as one clean 7-bit line (None when empty)."""
    if value is None:
        return None
    cleaned = " ".join(ascii_line(value).split())
    return cleaned or None


__all__ = [
    "CRLF",
    "HARD_LIMIT",
    "SOFT_LIMIT",
    "ascii_line",
    "check_address",
    "check_domain",
    "clean_lines",
    "clean_value",
    "format_date",
    "format_field",
    "message_id_token",
    "new_message_id",
    "text_body",
    "usable_address",
]


def report_headers(sender: str, to: str, date: datetime | None, own_id: str, subject: str,
                   original_id: str | None) -> list[bytes]:
    """The RFC 5322 header fields every report carries (AS 2.2), threaded to the message it reports on."""
    headers = [
        format_field("From", sender),
        format_field("To", to),
        format_field("Date", format_date(date)),
        format_field("Message-ID", own_id),
        format_field("Subject", subject),
    ]
    in_reply_to = message_id_token(original_id)
    if in_reply_to:
        headers.append(format_field("In-Reply-To", in_reply_to))
        headers.append(format_field("References", in_reply_to))
    headers.append(format_field("Auto-Submitted", "auto-replied"))
    return headers
