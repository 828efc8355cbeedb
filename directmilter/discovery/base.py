"""The interface every discovery method implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.hashes import SHA256


class CertificateSource(Protocol):
    """Finds the certificates published for a name: an address (``bob@direct.b.test``) or a domain.

    Sources return candidates; whether a candidate is bound to the name and trusted is the agent's decision, so a
    source may return whatever is published there. A source that cannot answer right now (a DNS timeout) raises
    :class:`~directmilter.errors.TemporaryFailure`; "nothing published" is an empty answer.
    """

    def find(self, name: str) -> Sequence[x509.Certificate]: ...


class ChainedSources:
    """Asks several sources in order and returns all they found, without duplicates."""

    def __init__(self, *sources: CertificateSource) -> None:
        self.sources = sources

    def find(self, name: str) -> Sequence[x509.Certificate]:
        found: dict[bytes, x509.Certificate] = {}
        for source in self.sources:
            for cert in source.find(name):
                found.setdefault(cert.fingerprint(SHA256()), cert)
        return list(found.values())
