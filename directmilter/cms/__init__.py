"""The CMS / S/MIME layer: bytes in, bytes out. No addresses, trust, configuration or I/O live here.

:func:`secure` is the whole outgoing transformation (wrap, sign, encrypt); incoming messages are taken apart in
steps (:func:`parse_secured`, :meth:`Envelope.decrypt`, :func:`read_signed`, :func:`unwrap`) because the agent
decides between the steps, per recipient.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from cryptography import x509

from directmilter.cms import algorithms
from directmilter.cms.der import MALFORMED_INPUT
from directmilter.cms.enveloped import Envelope, encrypt_stream
from directmilter.cms.mime import (
    MAX_DEPTH,
    MAX_HEADERS,
    Buffer,
    Chunk,
    Entity,
    canonicalize,
    parse_entity,
    validate_structure,
)
from directmilter.cms.signed import SignatureReport, SignatureResult, sign_detached, verify_detached
from directmilter.cms.smime import SignedEntity, build_enveloped, build_signed, envelope_der, split_signed
from directmilter.cms.wrap import unwrap, wrap
from directmilter.errors import CMSError
from directmilter.keys.identity import PrivateIdentity

__all__ = [
    "Entity",
    "Envelope",
    "Secured",
    "SignatureReport",
    "SignatureResult",
    "SignedEntity",
    "canonicalize",
    "parse_message",
    "parse_secured",
    "read_signed",
    "secure",
    "secure_stream",
    "unwrap",
    "verify_signature",
]


def parse_message(message: bytes, *, what: str = "message", max_depth: int = MAX_DEPTH,
                  max_headers: int = MAX_HEADERS) -> Entity:
    """Parse a plain RFC 5322 message and check it is well-formed MIME (Applicability Statement 2.1)."""
    entity = parse_entity(message, what=what, max_headers=max_headers)
    validate_structure(entity, what=what, max_depth=max_depth, max_headers=max_headers)
    return entity


def secure(message: Entity, signers: Sequence[PrivateIdentity], recipients: Sequence[x509.Certificate],
           **choices: str) -> bytes:
    """Wrap, sign and encrypt a message: the agent algorithm's Process Outgoing steps 4 to 6."""
    return b"".join(secure_stream(message, signers, recipients, **choices))


def secure_stream(
    message: Entity,
    signers: Sequence[PrivateIdentity],
    recipients: Sequence[x509.Certificate],
    *,
    digest: str = "sha256",
    cipher: str = "aes256-cbc",
    key_transport: str = "rsa-pkcs1v15",
    recipient_id: str = "issuer-serial",
) -> Iterator[bytes]:
    """:func:`secure`, in pieces.

    The secured message comes in pieces, made as they are taken: the message is hashed where it lies and then
    encrypted and base64-encoded a block at a time, so sealing holds the message once, not once per stage.
    """
    outer_headers, wrapped = wrap(message)
    signature = sign_detached(wrapped, signers, digest)
    signed = build_signed(wrapped, signature, digest)
    envelope = encrypt_stream(signed, sum(len(piece) for piece in signed), recipients, cipher=cipher,
                              key_transport=key_transport, recipient_id=recipient_id)
    return build_enveloped(outer_headers, envelope, aead=algorithms.cipher(cipher).aead)


@dataclass(frozen=True)
class Secured:
    """An incoming S/MIME message: its outer entity and its (not yet decrypted) envelope."""

    outer: Entity
    envelope: Envelope


def parse_secured(message: bytes, accepted_ciphers: frozenset[str] | tuple[str, ...],
                  body: Iterable[Chunk] | None = None) -> Secured:
    """Parse an incoming S/MIME message; or, with ``body`` (its body in pieces), its header block alone."""
    outer = parse_entity(message, what="message")
    return Secured(outer, Envelope.parse(envelope_der(outer, body), accepted_ciphers))


def read_signed(
    plaintext: Buffer, accepted_digests: frozenset[str] | tuple[str, ...], max_certificates: int | None = None
) -> tuple[SignedEntity, SignatureReport]:
    """Check the decrypted content is multipart/signed and verify each of its signatures (carrying at most
    ``max_certificates`` certificates)."""
    signed = split_signed(plaintext)
    return signed, verify_signature(signed.content, signed.signature_der, accepted_digests, max_certificates)


def verify_signature(
    content: Chunk, signature_der: bytes, accepted_digests: frozenset[str] | tuple[str, ...],
    max_certificates: int | None = None,
) -> SignatureReport:
    """:func:`verify_detached`, with the last line of defence: whatever is malformed is refused (CMSError, a
    5.x.x), never deferred as an internal error."""
    try:
        return verify_detached(content, signature_der, accepted_digests, max_certificates)
    except MALFORMED_INPUT as exc:
        raise CMSError(f"signature: malformed SignedData ({exc})") from exc
