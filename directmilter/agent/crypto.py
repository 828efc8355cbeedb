"""The CPU-heavy half of the agent: sealing (wrap, sign, encrypt) and opening (decrypt, verify, unwrap).

The agent's decisions (who is configured, whose certificates are trusted) need discovery, trust anchors and the
validator's caches, and stay in the calling process. What they lead to is pure crypto on bytes: these functions
take the configuration (for our private keys) and bytes and certificates, and return bytes, certificates and
errors, all of which pickle (the configuration with :func:`register_pickling`). So they can run in worker processes
(:mod:`directmilter.agent.workers`): pymilter's threads share one GIL, and RSA, AES, hashing and MIME work on a
large message would otherwise use one core however many there are.
"""

from __future__ import annotations

import copyreg
import hashlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from types import MappingProxyType
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from directmilter import cms, spool
from directmilter.budget import Deadline
from directmilter.cms.mime import CRLF, Chunk
from directmilter.config import Config, Limits
from directmilter.errors import CMSError, DecryptionFailed, DirectMilterError, MalformedMessage, TemporaryFailure
from directmilter.keys.identity import PrivateKey
from directmilter.spool import Message

__all__ = ["CryptoRunner", "InProcess", "Opened", "OpenedContent", "open_message", "seal"]


def _certificate_from_der(der: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(der)


def _reduce_certificate(cert: x509.Certificate) -> tuple[object, tuple[bytes]]:
    return _certificate_from_der, (cert.public_bytes(serialization.Encoding.DER),)


def _private_key_from_der(der: bytes) -> PrivateKey:
    # The process that pickled the key loaded and checked it: OpenSSL's RSA key check (most of the cost of loading
    # a key) is not repeated.
    key = serialization.load_der_private_key(der, None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return key


def _reduce_private_key(key: PrivateKey) -> tuple[object, tuple[bytes]]:
    return _private_key_from_der, (key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()),)


def _mapping_proxy(items: dict[object, object]) -> MappingProxyType[object, object]:
    return MappingProxyType(items)


def _reduce_mapping_proxy(proxy: MappingProxyType[object, object]) -> tuple[object, tuple[dict[object, object]]]:
    return _mapping_proxy, (dict(proxy),)


def register_pickling() -> None:
    """Let certificates (as DER), our private keys (as PKCS#8 DER) and so the whole configuration cross to a
    worker process; cryptography's Rust objects and read-only mappings do not pickle by themselves. The keys only
    ever go down the pipe to the workers the milter spawned itself."""
    from cryptography.hazmat.bindings._rust import openssl as rust_openssl
    from cryptography.hazmat.bindings._rust import x509 as rust_x509

    copyreg.pickle(rust_x509.Certificate, _reduce_certificate)  # type: ignore[arg-type]
    copyreg.pickle(rust_openssl.rsa.RSAPrivateKey, _reduce_private_key)  # type: ignore[arg-type]
    copyreg.pickle(rust_openssl.ec.ECPrivateKey, _reduce_private_key)  # type: ignore[arg-type]
    copyreg.pickle(MappingProxyType, _reduce_mapping_proxy)  # type: ignore[arg-type]


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# --- sealing -------------------------------------------------------------------------------------------------


def join(pieces: Iterable[Chunk]) -> bytes:
    return b"".join(pieces)


#: What becomes of the pieces of a new message: joined bytes in the caller's process; in a worker, a spool file
#: once it is large (:func:`directmilter.spool.collect`).
Emit = Callable[[Iterable[Chunk]], Message]


def seal(config: Config, message: Message, sender: str, signers: Sequence[x509.Certificate],
         recipients: Sequence[x509.Certificate], emit: Emit = join, deadline: Deadline | None = None) -> Message:
    """Process Outgoing steps 4 to 6 with the sender's keys whose certificates are ``signers``, checking
    ``deadline`` between the steps (so a worker stops on a message the milter gave up)."""
    wanted = {_der(c) for c in signers}
    identities = [i for i in config.identities_for(sender) if _der(i.certificate) in wanted]
    if not identities:
        # The agent chose signers this configuration does not hold (a caller mixing generations): never unsigned.
        raise TemporaryFailure(f"sender {sender}: the signing keys chosen are not in this configuration")
    crypto = config.crypto
    _check(deadline, "reading the message to sign")
    entity = prepare(cms.canonicalize(spool.read(message)), sender, config.limits)
    _check(deadline, "signing and encrypting")
    return emit(cms.secure_stream(entity, identities, recipients, digest=crypto.digest, cipher=crypto.cipher,
                           key_transport=crypto.key_transport, recipient_id=crypto.recipient_id))


def prepare(raw: bytes, sender: str, limits: Limits = Limits()) -> cms.Entity:  # noqa: B008 (frozen)
    """Check the message is RFC 5322 + MIME (AS 2.1) and carries the 2.2 headers, adding Date/Message-ID if absent."""
    entity = cms.parse_message(raw, max_depth=limits.max_mime_depth, max_headers=limits.max_headers)
    if entity.get("from") is None:
        raise MalformedMessage("message has no From header (Applicability Statement 2.2)")
    added = b""
    if entity.get("date") is None:
        added += b"Date: " + format_datetime(datetime.now(UTC)).encode() + CRLF
    if entity.get("message-id") is None:
        domain = sender.rpartition("@")[2] or "localhost"
        added += f"Message-ID: <{uuid.uuid4().hex}@{domain}>".encode() + CRLF
    return cms.parse_message(added + raw, max_depth=limits.max_mime_depth,
                             max_headers=limits.max_headers) if added else entity


# --- opening -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenedContent:
    """One decrypted content: its signatures' results, the certificates it carried, and the unwrapped message."""

    report: cms.SignatureReport
    message: Message


@dataclass(frozen=True)
class Opened:
    """What each recipient's keys opened: an index into ``contents``, or why it could not be opened or verified."""

    header_sender: str
    contents: tuple[OpenedContent, ...]
    by_recipient: dict[str, int | DirectMilterError]


def open_message(config: Config, message: Message, recipients: Sequence[str], emit: Emit = join,
                 deadline: Deadline | None = None) -> Opened:
    """Decrypt per recipient, verify the signatures, unwrap (Process Incoming's crypto; trust is the caller's),
    checking ``deadline`` before each decryption and verification.

    Problems of the message as a whole (not S/MIME, malformed CMS, a forbidden cipher) raise; problems that
    concern one recipient's keys or what they open are that recipient's entry.
    """
    crypto = config.crypto
    secured = _parse_secured(message, crypto.accept_ciphers)
    contents: list[OpenedContent] = []
    by_plaintext: dict[bytes, int | DirectMilterError] = {}  # by digest: each different content verified once
    by_keys: dict[tuple[int, ...], int | DirectMilterError] = {}
    by_recipient: dict[str, int | DirectMilterError] = {}
    keyed = {recipient: config.identities_for(recipient) for recipient in recipients}
    # Only recipients with different keys can open different contents: with one set of keys, no digest (0.6 ms/MiB).
    several = len({tuple(id(i) for i in identities) for identities in keyed.values() if identities}) > 1
    for recipient, identities in keyed.items():
        if not identities:
            by_recipient[recipient] = DecryptionFailed("no private key configured for this recipient")
            continue
        keys = tuple(id(i) for i in identities)
        if keys not in by_keys:
            _check(deadline, "decrypting")
            try:
                plaintext = secured.envelope.decrypt(identities)
            except CMSError as exc:
                by_keys[keys] = exc
            else:
                digest = hashlib.sha256(plaintext).digest() if several else b""
                if digest not in by_plaintext:
                    _check(deadline, "verifying the signatures")
                    by_plaintext[digest] = _verify(secured, plaintext, crypto.accept_digests, contents,
                                                   config.limits.max_certificates, emit)
                by_keys[keys] = by_plaintext[digest]
        by_recipient[recipient] = by_keys[keys]
    found = secured.outer.addresses("from")
    return Opened(found[0] if found else "", tuple(contents), by_recipient)


def _check(deadline: Deadline | None, doing: str) -> None:
    if deadline is not None:
        deadline.check(doing)


def _parse_secured(message: Message, ciphers: frozenset[str]) -> cms.Secured:
    """A large message is read from its file: the header block, then the body a block at a time into the DER."""
    if isinstance(message, spool.Spool):
        head = spool.head(message)
        if head.endswith(b"\r\n\r\n"):
            return cms.parse_secured(head.lstrip(b" \t"), ciphers, spool.blocks(message, start=len(head)))
    return cms.parse_secured(cms.canonicalize(spool.read(message)).lstrip(b" \t"), ciphers)


def _verify(secured: cms.Secured, plaintext: bytearray, accept_digests: frozenset[str],
            contents: list[OpenedContent], limit: int, emit: Emit) -> int | DirectMilterError:
    try:
        entity, report = cms.read_signed(plaintext, accept_digests, limit)
    except CMSError as exc:
        return exc
    contents.append(OpenedContent(report, emit(cms.unwrap(secured.outer, entity))))
    return len(contents) - 1


# --- where it runs -------------------------------------------------------------------------------------------


class CryptoRunner(Protocol):
    """Where sealing and opening run. The messages they return that are :class:`~directmilter.spool.Spool` files
    belong to the caller, who removes them."""

    def seal(self, message: Message, sender: str, signers: Sequence[x509.Certificate],
             recipients: Sequence[x509.Certificate], deadline: Deadline | None = None) -> Message: ...

    def open(self, message: Message, recipients: Sequence[str], deadline: Deadline | None = None) -> Opened: ...

    def close(self) -> None: ...


class InProcess:
    """The crypto in the calling thread (the command line, tests, and a milter configured with no workers)."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def seal(self, message: Message, sender: str, signers: Sequence[x509.Certificate],
             recipients: Sequence[x509.Certificate], deadline: Deadline | None = None) -> Message:
        return seal(self.config, message, sender, signers, recipients, deadline=deadline)

    def open(self, message: Message, recipients: Sequence[str], deadline: Deadline | None = None) -> Opened:
        return open_message(self.config, message, recipients, deadline=deadline)

    def close(self) -> None:
        pass
