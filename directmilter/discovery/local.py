"""Out-of-band certificates from the configuration (Applicability Statement 2.3: "other methods")."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from cryptography import x509

from directmilter import certfacts


class LocalCertificates:
    """An index of configured certificates by the names they carry (SAN rfc822Name and dNSName)."""

    def __init__(self, certificates: Iterable[x509.Certificate], method: str = "local") -> None:
        self.method = method
        self._by_name: dict[str, list[x509.Certificate]] = defaultdict(list)
        for cert in certificates:
            for name in _names(cert):
                self._by_name[name.lower()].append(cert)

    def find(self, name: str) -> Sequence[x509.Certificate]:
        return tuple(self._by_name.get(name.lower(), ()))


def _names(cert: x509.Certificate) -> list[str]:
    found = certfacts.names(cert)
    return [*found.rfc822, *found.dns]
