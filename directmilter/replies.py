"""The one place where errors become SMTP replies and process exit codes.

Temporary failures are 4.x.x (the sending MTA keeps the message and retries); permanent ones are 5.x.x with the
enhanced status code RFC 3463 gives their class: 5.6.x for malformed content, 5.7.x for security and policy.
Anything that is not one of our errors is an internal failure and maps to a tempfail: fail closed, never open.
"""

from __future__ import annotations

from dataclasses import dataclass

from directmilter import errors

# Exit codes from sysexits.h, which Postfix's pipe(8) and operators' scripts already understand.
EX_OK = 0
EX_DATAERR = 65
EX_NOPERM = 77
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78


@dataclass(frozen=True)
class Reply:
    code: str  # "550"
    status: str  # "5.7.1"
    exit_code: int

    @property
    def temporary(self) -> bool:
        return self.code.startswith("4")


#: Most specific first: the first class an error is an instance of decides.
_TABLE: tuple[tuple[type[BaseException], Reply], ...] = (
    (errors.ConfigError, Reply("451", "4.3.5", EX_CONFIG)),
    (errors.DependencyTimeout, Reply("451", "4.4.3", EX_TEMPFAIL)),
    (errors.TemporaryFailure, Reply("451", "4.3.0", EX_TEMPFAIL)),
    (errors.MalformedMessage, Reply("554", "5.6.0", EX_DATAERR)),
    (errors.MessageTooLarge, Reply("552", "5.3.4", EX_DATAERR)),
    (errors.ForbiddenAlgorithm, Reply("554", "5.7.5", EX_DATAERR)),
    (errors.NotEncrypted, Reply("554", "5.7.5", EX_DATAERR)),
    (errors.CMSError, Reply("554", "5.7.5", EX_DATAERR)),
    (errors.AddressSyntax, Reply("553", "5.1.3", EX_DATAERR)),
    (errors.SenderNotConfigured, Reply("550", "5.7.1", EX_NOPERM)),
    (errors.TrustError, Reply("550", "5.7.1", EX_NOPERM)),
    (errors.PermanentFailure, Reply("550", "5.7.1", EX_NOPERM)),
)
_INTERNAL = Reply("451", "4.3.0", EX_SOFTWARE)


def reply_for(error: BaseException) -> Reply:
    """The SMTP reply and exit code for ``error``; unknown exceptions are internal errors (tempfail).

    A message refused because every recipient was removed for the same kind of reason (a bad signature, say)
    gets that reason's reply: the operator and the sender learn what was wrong, not only that nobody is left."""
    if isinstance(error, errors.NoTrustedRecipients) and error.rejected:
        replies = {reply_for(cause) for cause in error.rejected.values()}
        if len(replies) == 1:
            return replies.pop()
    for kind, reply in _TABLE:
        if isinstance(error, kind):
            return reply
    return _INTERNAL


def reason_for(error: BaseException) -> str:
    """The text for the operator and the SMTP client: our reason, or a fixed phrase that leaks nothing."""
    if isinstance(error, errors.DirectMilterError):
        return error.reason
    return "internal error in the Direct security agent; the message was not processed"
