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
            if sum(_weight(argument) for argument in args) > KEEP_UP_TO:
                return function(*args)
            return cached(*args)

        wrapper.cache_info = cached.cache_info  # type: ignore[attr-defined]
        wrapper.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        return cast(_F, wrapper)

    return decorate


def _weight(value: object) -> int:
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    if isinstance(value, x509.Certificate):
        return len(value.public_bytes(Encoding.DER))
    if isinstance(value, tuple | frozenset):
        return sum(_weight(item) for item in value)
    return 0
