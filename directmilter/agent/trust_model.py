"""Enforcing the trust model (Applicability Statement 4): which of an address's certificates may be used.

A certificate is usable for an address when it is bound to it (4.1: rfc822Name for address certificates, dNSName
for organisational ones) and its path leads to one of the anchors the *other* party trusts (4.2). Both directions
use this: recipients' certificates against the sender's outgoing anchors, signers' against each recipient's
incoming anchors.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from directmilter import certfacts
from directmilter.budget import WorkBudget
from directmilter.certfacts import describe_certificate
from directmilter.errors import FetchBudgetSpent, NoCertificate, PolicyViolation, TrustError
from directmilter.log import get_logger
from directmilter.memo import kept
from directmilter.trust.binding import binding_error, bound_to
from directmilter.trust.certificate_policy import CertificatePolicy
from directmilter.trust.validator import TrustValidator

log = get_logger("directmilter.trust")


def trusted_certificates(
    validator: TrustValidator,
    address: str,
    candidates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    *,
    moment: datetime | None = None,
    key_usage: frozenset[str] = frozenset(),
    revocation: str | None = None,
    email_protection: bool = False,
    policy: CertificatePolicy | None = None,
    budget: WorkBudget | None = None,
) -> tuple[list[x509.Certificate], TrustError | None]:
    """The candidates bound to ``address`` that meet ``policy`` and whose path reaches ``anchors``, and why the
    first other one failed.

    The error explains the refusal when the list is empty: the first certificate the message's fetch budget left
    unvalidated, else the first unbound or untrusted one, or :class:`NoCertificate` when there were no candidates.
    """
    trusted: list[x509.Certificate] = []
    first_error: TrustError | None = None
    for cert in candidates:
        try:
            refused = _unusable(cert, address, policy)
            if refused is not None:  # checked before the path: no network is spent on a certificate never used
                kind, reason = refused
                raise kind(reason)
            path = validator.validate(cert, anchors, intermediates, moment=moment, key_usage=key_usage,
                                      revocation_mode=revocation, budget=budget)
            not_for_email = _not_for_email(cert) if email_protection else None
            if not_for_email is not None:
                raise TrustError(not_for_email)
        except TrustError as exc:
            # The message's budget running out explains more than any one certificate's fault: it is reported.
            spent = isinstance(exc, FetchBudgetSpent) and not isinstance(first_error, FetchBudgetSpent)
            first_error = exc if spent else first_error or exc
            continue
        if path.soft_failures:
            # Soft-fail policy: accepted, but never reported as "not revoked".
            log.warning("revocation_status_undetermined", address=address, certificate=describe_certificate(cert),
                        reasons=list(path.soft_failures))
        else:
            log.debug("certificate_trusted", address=address, certificate=describe_certificate(cert),
                      revocation=path.revocation_status)
        trusted.append(cert)
    if not candidates:
        first_error = NoCertificate(f"no certificate found for {address}")
    return trusted, first_error


@kept(4096)
def _unusable(cert: x509.Certificate, address: str,
              policy: CertificatePolicy | None) -> tuple[type[TrustError], str] | None:
    """Why ``cert`` may not be used for ``address`` whatever its path: not bound to it, or refused by ``policy``.

    Both checks depend on nothing but their arguments (certificates are immutable), so the answer is kept: every
    message from one correspondent carries the same certificate.
    """
    if bound_to(cert, address) is None:
        return TrustError, binding_error(cert, address)
    violation = policy.violation(cert) if policy is not None else None
    if violation is not None:
        return PolicyViolation, f"certificate ({describe_certificate(cert)}) is refused by policy: {violation}"
    return None


@kept(1024)
def _not_for_email(cert: x509.Certificate) -> str | None:
    """With key-usage enforcement on, an extendedKeyUsage that is present must allow S/MIME (RFC 5280 4.2.1.12)."""
    try:
        usages = certfacts.extension(cert, x509.ExtendedKeyUsage)
    except certfacts.UnreadableExtensions as exc:
        return f"certificate ({describe_certificate(cert)}) cannot be read: {exc}"
    if usages is None:
        return None
    allowed = {ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
    if not allowed & set(usages):
        return f"certificate ({describe_certificate(cert)}) is not for e-mail protection (extendedKeyUsage)"
    return None
