"""Process Incoming (agent algorithm): deliver only to intended recipients who trust the sender."""

from __future__ import annotations

from datetime import datetime

from cryptography import x509

from directmilter import cms, spool
from directmilter.agent.context import AgentContext
from directmilter.agent.crypto import Opened
from directmilter.agent.envelope import IncomingMessage, MessageEnvelope
from directmilter.agent.trust_model import trusted_certificates
from directmilter.budget import WorkBudget
from directmilter.cms.mime import parse_entity
from directmilter.errors import (
    CMSError,
    DirectMilterError,
    NoTrustedRecipients,
    SignatureInvalid,
    TamperedRouting,
    TrustError,
)
from directmilter.spool import Message

#: With key-usage enforcement on (AS 4.1.3), a signer's certificate must allow digital signatures.
_SIGNING = frozenset({"digital_signature"})


def process_incoming(ctx: AgentContext, envelope: MessageEnvelope, moment: datetime | None = None,
                     *, check_routing: bool = True, budget: WorkBudget | None = None) -> IncomingMessage:
    """Decrypt per recipient, verify the signatures, enforce each recipient's anchors, unwrap (steps 1 to 6).

    Problems of the message as a whole (not S/MIME, malformed CMS, a forbidden cipher) raise; problems that
    concern one recipient (no key, not encrypted to it, signer not trusted by it) remove that recipient.
    ``budget`` bounds the time and fetches spent (:mod:`directmilter.budget`).
    """
    opened = ctx.runner.open(envelope.message, envelope.recipients, budget.deadline if budget else None)
    result: IncomingMessage | None = None
    try:
        result = _decide(ctx, envelope, opened, moment, check_routing, budget)
        return result
    finally:
        for content in opened.contents:  # what nobody gets (all of it, on a refusal) is not left on disk
            if result is None or content.message is not result.message:
                spool.remove(content.message)


def _decide(ctx: AgentContext, envelope: MessageEnvelope, opened: Opened, moment: datetime | None,
            check_routing: bool, budget: WorkBudget | None) -> IncomingMessage:
    accepted: list[str] = []
    rejected: dict[str, DirectMilterError] = {}
    signers: list[x509.Certificate] = []
    delivered: int | None = None
    for recipient in envelope.recipients:
        try:
            index = opened.by_recipient[recipient]
            if isinstance(index, DirectMilterError):
                raise index
            content = opened.contents[index]
            sender = envelope.sender or opened.header_sender
            trusted = _trusted_signers(ctx, sender, recipient, content.report, moment, budget)
        except (CMSError, TrustError) as exc:
            rejected[recipient] = type(exc)(f"recipient {recipient}: {exc.reason}")
            continue
        tampered = _routing_tampered(ctx, envelope.sender, recipient, content.message) if check_routing else None
        if tampered is None and not envelope.sender:
            tampered = _forged_author(ctx, recipient, sender, content.message)
        if tampered is not None:
            rejected[recipient] = tampered
            continue
        if delivered is not None and index != delivered:
            # One SMTP transaction delivers one body: an envelope that opens differently per recipient is refused.
            rejected[recipient] = CMSError(f"recipient {recipient}: the envelope opens to different content")
            continue
        accepted.append(recipient)
        signers.extend(c for c in trusted if c not in signers)
        delivered = index
    if delivered is None:
        raise NoTrustedRecipients.of(rejected)
    return IncomingMessage(
        message=opened.contents[delivered].message, recipients=tuple(accepted), rejected=rejected,
        signers=tuple(signers),
    )


def _trusted_signers(
    ctx: AgentContext, sender: str, recipient: str, report: cms.SignatureReport, moment: datetime | None,
    budget: WorkBudget | None,
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
                                          key_usage=_SIGNING if enforce else frozenset(), email_protection=enforce,
                                          policy=ctx.config.policy_for(recipient, "signers"), budget=budget)
    if trusted:
        return trusted
    if error is None:
        raise SignatureInvalid("no valid signature")
    raise type(error)(f"signer: {error.reason}")


def _routing_tampered(ctx: AgentContext, sender: str, recipient: str, message: Message) -> TamperedRouting | None:
    """Routing-tamper detection (on unless ``routing_check = false`` for the recipient's domain or address).

    The envelope is not protected, the wrapped headers are: a RCPT TO the signed message does not name in To, Cc
    or Bcc, or a MAIL FROM that is not one of its From addresses (Sender does not count: it would let a message
    show anyone as its author), was changed in transit. A null MAIL FROM
    (legacy notifications) is not compared. Senders that drop Bcc from the protected message (as directmilter does,
    so recipients do not see each other) make a Bcc recipient unlisted: refused here when the check is on.
    """
    if not ctx.config.checks_routing(recipient):
        return None
    listed = _named(ctx, recipient, message, "to", "cc", "bcc")
    if isinstance(listed, TamperedRouting):
        return listed
    if ctx.config.mailbox(recipient) not in listed:
        return TamperedRouting(f"recipient {recipient}: not named in the signed message's To, Cc or Bcc "
                               "(the envelope was changed in transit, or the recipient was Bcc'd)")
    authors = _named(ctx, recipient, message, "from")
    if isinstance(authors, TamperedRouting):
        return authors
    if sender and ctx.config.mailbox(sender) not in authors:
        # Only From: a Sender field naming the MAIL FROM would let a message show anyone as its author.
        return TamperedRouting(f"recipient {recipient}: MAIL FROM {sender} is not the signed message's From "
                               "(the envelope was changed in transit)")
    return None


def _named(ctx: AgentContext, recipient: str, message: Message, *fields: str) -> set[str] | TamperedRouting:
    """The mailboxes (see Config.mailbox) the delivered message's header names in ``fields``."""
    try:
        inner = parse_entity(spool.head(message), what="delivered message")
    except DirectMilterError:
        return TamperedRouting(f"recipient {recipient}: the protected headers cannot be read to check routing")
    return {ctx.config.mailbox(a) for a in inner.addresses(*fields)}


def _forged_author(ctx: AgentContext, recipient: str, bound: str, message: Message) -> TamperedRouting | None:
    """With a null MAIL FROM the signer is bound to the outer From; the message delivered must show that From and
    no other, or a community member could sign mail that shows anyone as its author (and gets the MDN)."""
    authors = _named(ctx, recipient, message, "from")
    if isinstance(authors, TamperedRouting):
        return authors
    if authors != {ctx.config.mailbox(bound)}:
        return TamperedRouting(f"recipient {recipient}: null MAIL FROM, and the delivered From "
                               f"({', '.join(sorted(authors)) or 'none'}) is not the signer's address {bound}")
    return None
