"""The agent's inputs and outputs: the spec's MessageEnvelope, OutgoingMessage and IncomingMessage."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509

from directmilter.errors import DirectMilterError
from directmilter.spool import Message


@dataclass(frozen=True)
class MessageEnvelope:
    """A message with the SMTP envelope it travels in: decisions use these addresses, never the headers."""

    sender: str
    recipients: tuple[str, ...]
    message: Message = field(repr=False)


@dataclass(frozen=True)
class Outcome:
    """What the agent made of one message: the new message, who gets it, and who was removed and why.

    A large ``message`` is a :class:`~directmilter.spool.Spool` file, which the caller removes when done.
    ``rejected`` maps each removed recipient to the error that removed it (its ``reason`` is the operator text).
    """

    message: Message = field(repr=False)
    recipients: tuple[str, ...]
    rejected: dict[str, DirectMilterError]


@dataclass(frozen=True)
class OutgoingMessage(Outcome):
    """A secured outgoing message; ``certificates`` are the recipient certificates it was encrypted to."""

    certificates: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class IncomingMessage(Outcome):
    """A decrypted, verified and unwrapped incoming message; ``signers`` are the trusted signing certificates."""

    signers: tuple[x509.Certificate, ...] = ()
