"""Answers kept for inputs that come back message after message: certificates, header values, policies.

Every message of a correspondent carries the same certificates and much the same header fields, so the work done
on them (parsing, binding, policy checks) is kept by value in a bounded LRU. What one kept input may weigh is
bounded too: a certificate or a header value of a hostile message can be megabytes, and a few hundred of those
kept would be gigabytes. Heavier inputs are worked on every time and never kept.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from cryptography import x509
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import Encoding

#: The most one call's arguments may weigh (bytes of certificates, characters of text) for its answer to be kept.
#: Real certificates weigh 1 to 3 KiB, real header values well under 1 KiB.
KEEP_UP_TO = 16 * 1024

_F = TypeVar("_F", bound=Callable[..., Any])


def kept(maxsize: int) -> Callable[[_F], _F]:
    """:func:`functools.lru_cache` for a pure function of immutable values, which keeps no heavy argument."""

    def decorate(function: _F) -> _F:
        cached = functools.lru_cache(maxsize=maxsize)(function)

        @functools.wraps(function)
        def wrapper(*args: Any) -> Any:
            if _weight(args) > KEEP_UP_TO:
                return function(*args)
            return cached(*args)

        wrapper.cache_info = cached.cache_info  # type: ignore[attr-defined]
        wrapper.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        return cast(_F, wrapper)

    return decorate


#: Certificate objects known to be light, by identity (each entry holds its certificate, so the id cannot be
#: reused while it is here). Weighing a certificate means encoding it again (5 us, the most expensive step of a
#: kept call); the same few objects come back message after message. Bounded in total weight.
_light: dict[int, tuple[x509.Certificate, int]] = {}
_LIGHT_TOTAL = 4 * 1024 * 1024
_light_total = 0


def _weight(value: object) -> int:
    kind = type(value)
    if kind is str or kind is bytes or kind is bytearray:
        return len(value)  # type: ignore[arg-type]
    if isinstance(value, x509.Certificate):
        return _certificate_weight(value)
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    if isinstance(value, tuple | frozenset):
        total = 0
        for item in value:
            total += _weight(item)
        return total
    return 0


def _certificate_weight(cert: x509.Certificate) -> int:
    global _light_total
    entry = _light.get(id(cert))
    if entry is not None and entry[0] is cert:
        return entry[1]
    weight = len(cert.public_bytes(Encoding.DER))
    if weight <= KEEP_UP_TO:
        if _light_total + weight > _LIGHT_TOTAL:
            _light.clear()  # threads may race on the total: it only ever bounds, roughly, what is held
            _light_total = 0
        _light[id(cert)] = (cert, weight)
        _light_total += weight
    return weight


@kept(1024)
def fingerprint(cert: x509.Certificate) -> bytes:
    """The SHA-256 of the certificate's DER, which certificates are told apart and cached by. Kept: cryptography
    encodes the certificate anew for each fingerprint (8 us), and discovery and validation take several per
    message."""
    return cert.fingerprint(SHA256())
