"""Process Incoming (agent algorithm): deliver only to intended recipients who trust the sender."""

from __future__ import annotations

from datetime import datetime
from email.utils import getaddresses

from cryptography import x509

from directmilter import cms
from directmilter.agent.context import AgentContext
from directmilter.agent.envelope import IncomingMessage, MessageEnvelope
from directmilter.agent.trust_model import trusted_certificates
from directmilter.errors import (
    CMSError,
    DecryptionFailed,
    DirectMilterError,
    NoTrustedRecipients,
    SignatureInvalid,
    TrustError,
)

#: With key-usage enforcement on (AS 4.1.3), a signer's certificate must allow digital signatures.
_SIGNING = frozenset({"digital_signature"})


def process_incoming(ctx: AgentContext, envelope: MessageEnvelope, moment: datetime | None = None) -> IncomingMessage:
    """Decrypt per recipient, verify the signatures, enforce each recipient's anchors, unwrap (steps 1 to 6).

    Problems of the message as a whole (not S/MIME, malformed CMS, a forbidden cipher) raise; problems that
    concern one recipient (no key, not encrypted to it, signer not trusted by it) remove that recipient.
    """
    crypto = ctx.config.crypto
    secured = cms.parse_secured(_normalise(envelope.message), crypto.accept_ciphers)
    opened: dict[tuple[int, ...], bytes | DirectMilterError] = {}
    verified: dict[bytes, tuple[cms.SignedEntity, cms.SignatureReport] | DirectMilterError] = {}
    accepted: list[str] = []
    rejected: dict[str, DirectMilterError] = {}
    signers: list[x509.Certificate] = []
    delivered: bytes | None = None
    for recipient in envelope.recipients:
        try:
            plaintext = _decrypt_for(ctx, secured, recipient, opened)
            if plaintext not in verified:
                verified[plaintext] = _verify(plaintext, crypto.accept_digests)
            signed = verified[plaintext]
            if isinstance(signed, DirectMilterError):
                raise signed
            entity, report = signed
            sender = envelope.sender or _header_sender(secured.outer)
            trusted = _trusted_signers(ctx, sender, recipient, report, moment)
        except (CMSError, TrustError) as exc:
            rejected[recipient] = type(exc)(f"recipient {recipient}: {exc.reason}")
            continue
        message = cms.unwrap(secured.outer, entity.content)
        if delivered is not None and message != delivered:
            # One SMTP transaction delivers one body: an envelope that opens differently per recipient is refused.
            rejected[recipient] = CMSError(f"recipient {recipient}: the envelope opens to different content")
            continue
        accepted.append(recipient)
        signers.extend(c for c in trusted if c not in signers)
        delivered = message
    if delivered is None:
        raise NoTrustedRecipients.of(rejected)
    return IncomingMessage(
        message=delivered, recipients=tuple(accepted), rejected=rejected, signers=tuple(signers)
    )


def _normalise(message: bytes) -> bytes:
    """Canonical CRLF; white space before the first header (seen in the Java RI's own vectors) is dropped."""
    return cms.canonicalize(message).lstrip(b" \t")


def _decrypt_for(
    ctx: AgentContext, secured: cms.Secured, recipient: str, opened: dict[tuple[int, ...], bytes | DirectMilterError]
) -> bytes:
    identities = ctx.config.identities_for(recipient)
    if not identities:
        raise DecryptionFailed("no private key configured for this recipient")
    key = tuple(id(i) for i in identities)
    if key not in opened:
        try:
            opened[key] = secured.envelope.decrypt(identities)
        except CMSError as exc:
            opened[key] = exc
    result = opened[key]
    if isinstance(result, DirectMilterError):
        raise result
    return result


def _verify(
    plaintext: bytes, accept_digests: frozenset[str]
) -> tuple[cms.SignedEntity, cms.SignatureReport] | DirectMilterError:
    try:
        return cms.read_signed(plaintext, accept_digests)
    except CMSError as exc:
        return exc


def _trusted_signers(
    ctx: AgentContext, sender: str, recipient: str, report: cms.SignatureReport, moment: datetime | None
) -> list[x509.Certificate]:
    """Signers whose signature is valid, bound to the sender and trusted by this recipient (ALG-16)."""
    valid = report.valid
    if not valid:
        first = report.results[0].error
        assert first is not None
        raise first
    anchors = ctx.anchors(recipient, "incoming")
    pool = (*report.certificates, *ctx.intermediates)
    candidates = [r.certificate for r in valid if r.certificate is not None]
    enforce = ctx.config.trust.enforce_key_usage
    trusted, error = trusted_certificates(ctx.validator, sender, candidates, anchors, pool, moment=moment,
                                          revocation=ctx.config.revocation_for(recipient),
                                          key_usage=_SIGNING if enforce else frozenset(), email_protection=enforce)
    if trusted:
        return trusted
    if error is None:
        raise SignatureInvalid("no valid signature")
    raise type(error)(f"signer: {error.reason}")


def _header_sender(outer: cms.Entity) -> str:
    """For a null MAIL FROM (legacy notifications), the header From stands in for the envelope sender."""
    found = getaddresses(outer.get_all("from"))
    return found[0][1] if found else ""
