"""S/MIME framing (RFC 5751 3.3, 3.4.3): multipart/signed and application/pkcs7-mime entities.

Direct requires the signed-then-encrypted form: an EnvelopedData whose content is a multipart/signed entity with
exactly two parts, the content and a detached signature (AS 2.4, 2.5.1; agent algorithm, Process Incoming). Both the
registered and the legacy ``x-`` media types are read (AS 2.4, 2.5.1); only the registered ones are written.
"""

from __future__ import annotations

from dataclasses import dataclass

from directmilter.cms import algorithms
from directmilter.cms.mime import CRLF, Entity, decode_body, fold_base64, new_boundary, parse_entity, split_multipart
from directmilter.errors import CMSError, MalformedMessage, NotEncrypted, NotSigned

SIGNATURE_TYPES = ("application/pkcs7-signature", "application/x-pkcs7-signature")
ENVELOPE_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")
_ENVELOPE_SMIME_TYPES = ("enveloped-data", "authenveloped-data")


def build_signed(content: bytes, signature_der: bytes, digest: str) -> bytes:
    """A multipart/signed entity: ``content`` byte for byte, then the detached signature."""
    boundary = new_boundary(content)
    return b"".join(
        [
            b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; ',
            f'micalg={algorithms.micalg(digest)}; boundary="{boundary}"'.encode(),
            CRLF,
            CRLF,
            b"This is an S/MIME signed message" + CRLF,
            CRLF,
            f"--{boundary}".encode() + CRLF,
            content,
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


@dataclass(frozen=True)
class SignedEntity:
    """The two halves of a multipart/signed entity: the exact signed bytes and the DER signature."""

    content: bytes
    signature_der: bytes


def split_signed(data: bytes) -> SignedEntity:
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
        parts, closed = split_multipart(entity, what="multipart/signed")
        signature = parse_entity(parts[1], what="signature part") if closed and len(parts) == 2 else None
    except MalformedMessage as exc:
        raise NotSigned(f"multipart/signed is malformed: {exc.reason}") from exc
    if signature is None:
        raise NotSigned(
            f"multipart/signed must have exactly two parts and a closing boundary (has {len(parts)} parts"
            f"{'' if closed else ', unterminated'})"
        )
    if signature.content_type not in SIGNATURE_TYPES:
        raise NotSigned(f"second part of multipart/signed is {signature.content_type}, not a signature")
    try:
        der = decode_body(signature, what="signature part")
    except MalformedMessage as exc:
        raise CMSError(exc.reason) from exc
    return SignedEntity(content=parts[0], signature_der=der)


def build_enveloped(outer_headers: bytes, envelope_der: bytes, *, aead: bool = False) -> bytes:
    """A complete message: the routing headers kept outside, then the base64 application/pkcs7-mime body."""
    smime_type = "authEnveloped-data" if aead else "enveloped-data"
    return b"".join(
        [
            outer_headers,
            b"MIME-Version: 1.0" + CRLF,
            f'Content-Type: application/pkcs7-mime; smime-type={smime_type}; name="smime.p7m"'.encode() + CRLF,
            b"Content-Transfer-Encoding: base64" + CRLF,
            b'Content-Disposition: attachment; filename="smime.p7m"' + CRLF,
            CRLF,
            fold_base64(envelope_der),
        ]
    )


def envelope_der(message: Entity) -> bytes:
    """The DER EnvelopedData of an incoming message, or NotEncrypted if the message is not S/MIME-encrypted."""
    kind = message.content_type
    if kind not in ENVELOPE_TYPES:
        raise NotEncrypted(f"message is {kind}, not an S/MIME encrypted message (application/pkcs7-mime)")
    smime_type = (message.param("smime-type") or "enveloped-data").lower()
    if smime_type not in _ENVELOPE_SMIME_TYPES:
        raise NotEncrypted(f"message is application/pkcs7-mime with smime-type={smime_type}, not enveloped-data")
    try:
        return decode_body(message, what="encrypted body")
    except MalformedMessage as exc:
        raise CMSError(exc.reason) from exc
