"""Process Outgoing (agent algorithm): the sender must be configured, only trusted recipients get the message."""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from directmilter.agent.context import AgentContext
from directmilter.agent.envelope import MessageEnvelope, OutgoingMessage
from directmilter.agent.trust_model import trusted_certificates
from directmilter.budget import WorkBudget
from directmilter.errors import (
    DirectMilterError,
    NoCertificate,
    NoTrustedRecipients,
    SenderNotConfigured,
    TrustError,
)
from directmilter.keys.identity import PrivateIdentity
from directmilter.trust.binding import describe_certificate, split_address

#: A recipient certificate must allow RSA key transport when it restricts its key usage (RFC 5280 4.2.1.3).
_ENCRYPTION = frozenset({"key_encipherment"})


def process_outgoing(ctx: AgentContext, envelope: MessageEnvelope, moment: datetime | None = None,
                     budget: WorkBudget | None = None) -> OutgoingMessage:
    """Resolve keys and certificates, enforce trust, then wrap, sign and encrypt (steps 1 to 6), within
    ``budget`` (:mod:`directmilter.budget`)."""
    signers = sender_identities(ctx, envelope.sender, moment)
    accepted: list[str] = []
    certificates: list[x509.Certificate] = []
    rejected: dict[str, DirectMilterError] = {}
    for recipient in envelope.recipients:
        try:
            found = recipient_certificates(ctx, envelope.sender, recipient, moment, budget)
        except TrustError as exc:
            rejected[recipient] = exc
            continue
        accepted.append(recipient)
        certificates.extend(c for c in found if c not in certificates)
    if not accepted:
        raise NoTrustedRecipients.of(rejected)
    secured = ctx.runner.seal(envelope.message, envelope.sender, [i.certificate for i in signers], certificates,
                              budget.deadline if budget else None)
    return OutgoingMessage(
        message=secured, recipients=tuple(accepted), rejected=rejected, certificates=tuple(certificates)
    )


def sender_identities(ctx: AgentContext, sender: str, moment: datetime | None = None) -> list[PrivateIdentity]:
    """The sender's signing identities that are valid now; the sender is "not configured" without one (ALG-3)."""
    identities = ctx.config.identities_for(sender)
    if not identities:
        raise SenderNotConfigured(f"sender {sender or '<>'}: no private key and certificate configured here")
    when = moment or datetime.now(UTC)
    valid = [i for i in identities if _valid_at(i.certificate, when)]
    # Single-use certificates (issue 9): an encryption-only certificate of the sender never signs.
    signing = [i for i in valid if _may_sign(i.certificate)]
    if valid and not signing:
        raise SenderNotConfigured(
            f"sender {sender}: no certificate that allows signing (keyUsage without digitalSignature: "
            f"{describe_certificate(valid[0].certificate)})"
        )
    own = ctx.config.policy_for(sender, "own")
    refused = [(i, reason) for i in signing if (reason := own.violation(i.certificate)) is not None]
    if refused and len(refused) == len(signing):
        identity, reason = refused[0]
        raise SenderNotConfigured(f"sender {sender}: no signing certificate meets the policy for our own keys: "
                                  f"{reason} ({describe_certificate(identity.certificate)})")
    valid = [i for i in signing if all(i is not r for r, _ in refused)]
    if not valid:
        first = identities[0].certificate
        raise SenderNotConfigured(
            f"sender {sender}: signing certificate expired {first.not_valid_after_utc:%Y-%m-%d} or not yet valid "
            f"({describe_certificate(first)})"
        )
    return valid


def recipient_certificates(
    ctx: AgentContext, sender: str, recipient: str, moment: datetime | None = None, budget: WorkBudget | None = None
) -> list[x509.Certificate]:
    """The recipient's certificates the sender trusts: address certificates first, else the domain's (AS 5.2)."""
    parts = split_address(recipient)
    if parts is None:
        raise TrustError(f"recipient {recipient}: not a valid Direct address")
    anchors = ctx.anchors(sender, "outgoing")
    error: TrustError | None = None
    names = (recipient, parts[1]) if ctx.config.discovery.org_fallback else (recipient,)
    for name in names:
        lookup = ctx.source.lookup(name)
        trusted, failure = trusted_certificates(
            ctx.validator, recipient, lookup.certificates, anchors, (*ctx.intermediates, *lookup.certificates),
            moment=moment, key_usage=_ENCRYPTION, revocation=ctx.config.revocation_for(sender),
            email_protection=ctx.config.trust.enforce_key_usage, policy=ctx.config.policy_for(sender, "recipients"),
            budget=budget,
        )
        found = [c for c in trusted if isinstance(c.public_key(), rsa.RSAPublicKey)]
        if found:
            return found
        if trusted:
            failure = TrustError(f"the trusted certificates of {recipient} have no RSA key (needed for key transport)")
        if lookup.failures:
            # A source could not answer, and what it would have said may be the usable certificate: defer.
            raise type(lookup.failures[0])(f"recipient {recipient}: {lookup.failures[0].reason}")
        if error is None or isinstance(error, NoCertificate):
            error = failure
    assert error is not None
    raise type(error)(f"recipient {recipient}: {error.reason}")


def _may_sign(cert: x509.Certificate) -> bool:
    """True unless a keyUsage extension leaves out digitalSignature (RFC 5280 4.2.1.3: no extension, no limit)."""
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return bool(usage.digital_signature or usage.content_commitment)


def _valid_at(cert: x509.Certificate, when: datetime) -> bool:
    return cert.not_valid_before_utc <= when <= cert.not_valid_after_utc

