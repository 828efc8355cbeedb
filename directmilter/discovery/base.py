"""The interface every discovery method implements, and the chain that asks them all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509

from directmilter.errors import TemporaryFailure
from directmilter.memo import fingerprint


class CertificateSource(Protocol):
    """Finds the certificates published for a name: an address (``bob@direct.b.test``) or a domain.

    Sources return candidates; whether a candidate is bound to the name and trusted is the agent's decision, so a
    source may return whatever is published there. A source that cannot answer right now (a DNS timeout) raises
    :class:`~directmilter.errors.TemporaryFailure`; "nothing published" is an empty answer.
    """

    def find(self, name: str) -> Sequence[x509.Certificate]: ...


@dataclass(frozen=True)
class Lookup:
    """What all sources found for one name, and which of them could not answer."""

    certificates: list[x509.Certificate]
    failures: list[TemporaryFailure] = field(default_factory=list)


class ChainedSources:
    """Asks every source and merges their answers without duplicates.

    A source that fails does not stop the others: the caller decides whether what the rest found is enough (a
    trusted certificate is) or whether the failure must defer the message (nothing usable was found).
    """

    def __init__(self, *sources: CertificateSource) -> None:
        self.sources = sources

    def lookup(self, name: str) -> Lookup:
        found: dict[bytes, x509.Certificate] = {}
        failures: list[TemporaryFailure] = []
        for source in self.sources:
            try:
                certs = source.find(name)
            except TemporaryFailure as exc:
                failures.append(exc)
                continue
            for cert in certs:
                found.setdefault(fingerprint(cert), cert)
        return Lookup(list(found.values()), failures)
