"""Message wrapping (RFC 5751 3.1, Applicability Statement 2.4): the whole message travels inside the encryption.

Outgoing, the original message becomes a ``message/rfc822`` entity, so Subject and every other header are protected;
only the routing headers a mail system needs stay outside. Bcc is removed from both (AS 2.2). Incoming, a wrapped
message is delivered as the inner message; an unwrapped one (older agents) keeps the outer headers with the signed
entity as its content (agent algorithm, Process Incoming, step 6).
"""

from __future__ import annotations

from directmilter.cms.mime import CRLF, Entity, decode_body, parse_entity
from directmilter.cms.smime import SignedEntity

#: Headers that stay readable outside the envelope: what MTAs, tracking and MDNs need, and nothing more.
ROUTING_HEADERS = frozenset(
    {
        "return-path",
        "received",
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "disposition-notification-to",
        "disposition-notification-options",
    }
)
_DROPPED = frozenset({"bcc", "resent-bcc"})
_TRACE = frozenset({"received", "return-path"})
_MIME_HEADERS = ("mime-version", "content-")
_BLOCK = 1 << 20


def wrap(message: Entity) -> tuple[bytes, list[bytes | memoryview]]:
    """Return (outer routing headers, the message/rfc822 entity to sign, in pieces: the body is not copied)."""
    outer = b"".join(h.raw for h in message.headers if h.name in ROUTING_HEADERS)
    inner_headers = b"".join(h.raw for h in message.headers if h.name not in _DROPPED)
    body = message.body_view
    eight_bit = not inner_headers.isascii() or not all(
        bytes(body[i : i + _BLOCK]).isascii() for i in range(0, len(body), _BLOCK))
    header = b"Content-Type: message/rfc822" + CRLF
    if eight_bit:
        header += b"Content-Transfer-Encoding: 8bit" + CRLF
    return outer, [header + CRLF + inner_headers + CRLF, body]


def unwrap(outer: Entity, signed: SignedEntity) -> list[bytes | memoryview]:
    """The message to deliver, in pieces, from the outer message and the verified content of its multipart/signed.

    A wrapped message is delivered as it lies in the decrypted buffer (a view, no copy).
    """
    inner = parse_entity(signed.source, what="signed content", start=signed.start, end=signed.end)
    if inner.content_type == "message/rfc822":
        if inner.transfer_encoding in ("7bit", "8bit", "binary"):
            message = parse_entity(signed.source, what="wrapped message", start=inner.body_start, end=inner.end)
            content: bytes | memoryview = inner.body_view
        else:
            decoded = decode_body(inner, what="wrapped message")
            message, content = parse_entity(decoded, what="wrapped message"), decoded
        # Trace fields added in transit (RFC 5321 4.4) stay on top; the sender's own copies are not repeated.
        own = {h.raw for h in message.headers}
        trace = b"".join(h.raw for h in outer.headers if h.name in _TRACE and h.raw not in own)
        return [trace, content]
    kept = b"".join(h.raw for h in outer.headers if not h.name.startswith(_MIME_HEADERS))
    return [kept + b"MIME-Version: 1.0" + CRLF, signed.content]
