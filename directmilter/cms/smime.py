"""S/MIME framing (RFC 5751 3.3, 3.4.3): multipart/signed and application/pkcs7-mime entities.

Direct requires the signed-then-encrypted form: an EnvelopedData whose content is a multipart/signed entity with
exactly two parts, the content and a detached signature (AS 2.4, 2.5.1; agent algorithm, Process Incoming). Both the
registered and the legacy ``x-`` media types are read (AS 2.4, 2.5.1); only the registered ones are written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from directmilter.cms import algorithms
from directmilter.cms.mime import (
    CRLF,
    Buffer,
    Chunk,
    Entity,
    decode_base64,
    decode_body,
    fold_base64,
    fold_base64_stream,
    multipart_spans,
    new_boundary,
    parse_entity,
)
from directmilter.errors import CMSError, MalformedMessage, NotEncrypted, NotSigned

SIGNATURE_TYPES = ("application/pkcs7-signature", "application/x-pkcs7-signature")
ENVELOPE_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")
_ENVELOPE_SMIME_TYPES = ("enveloped-data", "authenveloped-data")


def build_signed(content: Sequence[Chunk], signature_der: bytes, digest: str) -> list[Chunk]:
    """A multipart/signed entity, in pieces: ``content`` byte for byte, then the detached signature."""
    boundary = new_boundary(*content)
    head = b"".join(
        [
            b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; ',
            f'micalg={algorithms.micalg(digest)}; boundary="{boundary}"'.encode(),
            CRLF,
            CRLF,
            b"This is an S/MIME signed message" + CRLF,
            CRLF,
            f"--{boundary}".encode() + CRLF,
        ]
    )
    tail = b"".join(
        [
            CRLF + f"--{boundary}".encode() + CRLF,
            b'Content-Type: application/pkcs7-signature; name="smime.p7s"' + CRLF,
            b"Content-Transfer-Encoding: base64" + CRLF,
            b'Content-Disposition: attachment; filename="smime.p7s"' + CRLF,
            b"Content-Description: S/MIME Cryptographic Signature" + CRLF,
            CRLF,
            fold_base64(signature_der),
            f"--{boundary}--".encode() + CRLF,
        ]
    )
    return [head, *content, tail]


@dataclass(frozen=True)
class SignedEntity:
    """The two halves of a multipart/signed entity: the signed bytes (``source[start:end]``) and the signature."""

    source: Buffer = field(repr=False)
    start: int
    end: int
    signature_der: bytes

    @property
    def content(self) -> memoryview:
        """The exact signed bytes, as a view into the decrypted buffer (a large message is not copied)."""
        return memoryview(self.source)[self.start : self.end]


def split_signed(data: Buffer) -> SignedEntity:
    """Check the decrypted content is a proper multipart/signed entity and take it apart."""
    try:
        entity = parse_entity(data, what="decrypted content")
    except MalformedMessage as exc:
        raise NotSigned(f"decrypted content is not a MIME entity: {exc.reason}") from exc
    kind = entity.content_type
    if kind in ENVELOPE_TYPES and (entity.param("smime-type") or "").lower() == "signed-data":
        raise NotSigned("decrypted content is opaque signed-data; Direct requires multipart/signed (AS 2.5.1)")
    if kind != "multipart/signed":
        raise NotSigned(f"decrypted content is {kind}, not multipart/signed: the message is not signed (AS 2.4)")
    protocol = (entity.param("protocol") or "").lower()
    if protocol not in SIGNATURE_TYPES:
        raise NotSigned(f"multipart/signed has protocol {protocol or '(none)'!r}, not application/pkcs7-signature")
    try:
        spans, closed = multipart_spans(entity, what="multipart/signed")
        signature = (parse_entity(data, what="signature part", start=spans[1][0], end=spans[1][1])
                     if closed and len(spans) == 2 else None)
    except MalformedMessage as exc:
        raise NotSigned(f"multipart/signed is malformed: {exc.reason}") from exc
    if signature is None:
        raise NotSigned(
            f"multipart/signed must have exactly two parts and a closing boundary (has {len(spans)} parts"
            f"{'' if closed else ', unterminated'})"
        )
    if signature.content_type not in SIGNATURE_TYPES:
        raise NotSigned(f"second part of multipart/signed is {signature.content_type}, not a signature")
    try:
        der = decode_body(signature, what="signature part")
    except MalformedMessage as exc:
        raise CMSError(exc.reason) from exc
    return SignedEntity(data, spans[0][0], spans[0][1], der)


def build_enveloped(outer_headers: bytes, envelope: Iterable[Chunk], *, aead: bool = False) -> Iterator[bytes]:
    """A complete message, in pieces: the routing headers kept outside, then the base64 application/pkcs7-mime
    body made from ``envelope`` (the DER, in pieces) as it comes."""
    smime_type = "authEnveloped-data" if aead else "enveloped-data"
    yield b"".join(
        [
            outer_headers,
            b"MIME-Version: 1.0" + CRLF,
            f'Content-Type: application/pkcs7-mime; smime-type={smime_type}; name="smime.p7m"'.encode() + CRLF,
            b"Content-Transfer-Encoding: base64" + CRLF,
            b'Content-Disposition: attachment; filename="smime.p7m"' + CRLF,
            CRLF,
        ]
    )
    yield from fold_base64_stream(envelope)


def envelope_der(message: Entity, body: Iterable[Chunk] | None = None) -> bytes | bytearray:
    """The DER EnvelopedData of an incoming message, or NotEncrypted if the message is not S/MIME-encrypted.

    ``body`` is the message's body in pieces when ``message`` was parsed from its header block alone (a large
    message read from a file)."""
    kind = message.content_type
    if kind not in ENVELOPE_TYPES:
        raise NotEncrypted(f"message is {kind}, not an S/MIME encrypted message (application/pkcs7-mime)")
    smime_type = (message.param("smime-type") or "enveloped-data").lower()
    if smime_type not in _ENVELOPE_SMIME_TYPES:
        raise NotEncrypted(f"message is application/pkcs7-mime with smime-type={smime_type}, not enveloped-data")
    try:
        if body is None:
            return decode_body(message, what="encrypted body")
        if message.transfer_encoding == "base64":
            return decode_base64(body, what="encrypted body")
        if message.transfer_encoding in ("7bit", "8bit", "binary"):
            return bytearray().join(body)
        raise MalformedMessage(f"encrypted body: Content-Transfer-Encoding {message.transfer_encoding} is not "
                               "base64 or binary")
    except MalformedMessage as exc:
        raise CMSError(exc.reason) from exc
