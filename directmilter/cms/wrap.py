"""Message wrapping (RFC 5751 3.1, Applicability Statement 2.4): the whole message travels inside the encryption.

Outgoing, the original message becomes a ``message/rfc822`` entity, so Subject and every other header are protected;
only the routing headers a mail system needs stay outside. Bcc is removed from both (AS 2.2). Incoming, a wrapped
message is delivered as the inner message; an unwrapped one (older agents) keeps the outer headers with the signed
entity as its content (agent algorithm, Process Incoming, step 6).
"""

from __future__ import annotations

from directmilter.cms.mime import CRLF, Entity, decode_body, parse_entity

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


def wrap(message: Entity) -> tuple[bytes, bytes]:
    """Return (outer routing headers, the message/rfc822 entity to sign)."""
    outer = b"".join(h.raw for h in message.headers if h.name in ROUTING_HEADERS)
    inner_headers = b"".join(h.raw for h in message.headers if h.name not in _DROPPED)
    inner = inner_headers + CRLF + message.body
    eight_bit = not inner.isascii()
    header = b"Content-Type: message/rfc822" + CRLF
    if eight_bit:
        header += b"Content-Transfer-Encoding: 8bit" + CRLF
    return outer, header + CRLF + inner


def unwrap(outer: Entity, signed_content: bytes) -> bytes:
    """The message to deliver, from the outer message and the verified content of its multipart/signed."""
    inner = parse_entity(signed_content, what="signed content")
    if inner.content_type == "message/rfc822":
        message = decode_body(inner, what="wrapped message")
        # Trace fields added in transit (RFC 5321 4.4) stay on top; the sender's own copies are not repeated.
        own = {h.raw for h in parse_entity(message, what="wrapped message").headers}
        trace = b"".join(h.raw for h in outer.headers if h.name in _TRACE and h.raw not in own)
        return trace + message
    kept = b"".join(h.raw for h in outer.headers if not h.name.startswith(_MIME_HEADERS))
    return kept + b"MIME-Version: 1.0" + CRLF + signed_content
