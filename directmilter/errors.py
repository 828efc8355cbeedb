"""The one error hierarchy of directmilter.

Every failure the product can meet is one of these types. Each carries a message written for the HISP operator
(addresses, certificate subject/issuer/serial, algorithm names, file and key names) and never any message content.
Whether a failure is temporary (the sender should retry: 4.x.x) or permanent (5.x.x) is decided by the type, and
the translation into SMTP replies and process exit codes happens in one place: :mod:`directmilter.replies`.
"""

from __future__ import annotations


class DirectMilterError(Exception):
    """Base of all errors directmilter raises on purpose."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


# --- configuration -------------------------------------------------------------------------------------------


class ConfigError(DirectMilterError):
    """The configuration (or a file it names) is unusable; the message names the file and the key."""


# --- temporary: retry later ----------------------------------------------------------------------------------


class TemporaryFailure(DirectMilterError):
    """A dependency failed (DNS, LDAP, HTTP, an internal error): the message must be deferred, never accepted."""


class DependencyTimeout(TemporaryFailure):
    """A dependency did not answer in time."""


class WorkTimeExceeded(DependencyTimeout):
    """The message's time ([limits] max_seconds) ran out: mostly a slow dependency's doing, so a retry may pass."""


class DeliveryUndecided(TemporaryFailure):
    """A copy of this message was accepted moments ago and the MTA has not yet said it kept it (the commit
    witness): delivered now it may be a replay, dropped it may be lost; the retry finds the question settled."""


class RevocationUnavailable(TemporaryFailure):
    """Under a hard-fail policy, a certificate's revocation status could not be determined (CRL/OCSP down)."""


# --- permanent: the message (or one recipient) is refused ----------------------------------------------------


class PermanentFailure(DirectMilterError):
    """The message cannot be processed as it is; retrying will not help."""


class MalformedMessage(PermanentFailure):
    """The input is not a valid RFC 5322 / MIME message (Applicability Statement 2.1)."""


class MessageTooLarge(PermanentFailure):
    """The message is larger than ``[limits] max_message_size``."""


class CMSError(PermanentFailure):
    """A CMS / S/MIME structure is malformed, truncated or inconsistent."""


class ForbiddenAlgorithm(CMSError):
    """The message uses an algorithm the Applicability Statement forbids (2.6, 2.7): MD5, 3DES, DES, RC2, ..."""


class NotEncrypted(CMSError):
    """An incoming Direct message is not an S/MIME EnvelopedData."""


class NotSigned(CMSError):
    """The decrypted content is not a well-formed multipart/signed entity (agent algorithm, Process Incoming)."""


class NoSignerCertificate(CMSError):
    """A SignerInfo refers to a certificate the SignedData does not carry (AS 2.5.2, 4.2.2)."""


class SignatureInvalid(CMSError):
    """A signature or its message digest does not verify: the content was changed or the signature is broken."""


class DecryptionFailed(CMSError):
    """None of the recipient's private keys opens the envelope."""


class NotEncryptedForRecipient(DecryptionFailed):
    """The envelope has no RecipientInfo for any of the recipient's certificates."""


class TrustError(PermanentFailure):
    """A certificate is not trusted: no path to an anchor, expired, revoked, not bound to the address, ..."""


class NoCertificate(TrustError):
    """No certificate could be found for an address."""


class CertificateExpired(TrustError):
    """A certificate of the path is outside its validity period at the validation time: expired or not yet valid."""


class CertificateRevoked(TrustError):
    """A certificate of the path is revoked (CRL or OCSP)."""


class PolicyViolation(TrustError):
    """A trusted certificate that the hosted party's certificate policy does not accept (key size, usage, ...)."""


class NoTrustPath(TrustError):
    """No path from the certificate to one of the configured trust anchors (or no anchors configured at all)."""


class FetchBudgetSpent(TrustError):
    """A certificate's path needs more AIA, CRL or OCSP downloads than the message has left ([limits]
    max_fetches, max_fetches_per_host): the message is made so, retrying changes nothing."""


class TamperedRouting(PermanentFailure):
    """The envelope does not match the protected headers: a recipient or the sender the signed message does not name
    (routing-tamper detection, as the Java reference implementation does by default)."""


class AddressSyntax(PermanentFailure):
    """An envelope address we will not interpret on our own: routing syntax (``%``, ``!``, a source route) the MTA
    did not resolve for us, unbalanced quotes, no domain (see :mod:`directmilter.addresses`)."""


class ClearCopyForbidden(PermanentFailure):
    """The MTA would copy or forward decrypted Direct mail to an address off the Direct domains hosted here (its
    virtual aliases, aliases, always_bcc, recipient or sender bcc maps), or hand plaintext to a remote one."""


class SubmissionForbidden(PermanentFailure):
    """A hosted sender's mail from a path that may not submit for it (not authenticated, not a submission
    listener, a local submission that is not allowed): signing it would let anyone sign as that user."""


class DuplicateMessage(PermanentFailure):
    """The same message was already accepted for this recipient: a replay is not delivered twice."""


class SenderNotConfigured(PermanentFailure):
    """The envelope sender has no usable private key and certificate here (agent algorithm, Process Outgoing)."""


class NoTrustedRecipients(PermanentFailure):
    """Every recipient was removed; the whole message is refused."""

    def __init__(self, reason: str, rejected: dict[str, DirectMilterError]) -> None:
        super().__init__(reason)
        self.rejected = rejected

    def __reduce__(self) -> tuple[type[NoTrustedRecipients], tuple[str, dict[str, DirectMilterError]]]:
        return type(self), (self.reason, self.rejected)  # crosses from a worker process intact

    @classmethod
    def of(cls, rejected: dict[str, DirectMilterError]) -> NoTrustedRecipients:
        """One reason when every recipient fell for the same one, else each recipient's reason."""
        reasons = list(dict.fromkeys(exc.reason for exc in rejected.values()))
        if len(reasons) == 1:
            return cls(reasons[0], rejected)
        return cls("no recipient can receive the message: " + "; ".join(reasons), rejected)

