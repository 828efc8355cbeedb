"""What a certificate's extensions say, read in one place, with one answer for those that cannot be read.

cryptography parses all of a certificate's extensions together, the first time any of them is asked for. A
malformed one, or one that appears twice (RFC 5280 4.2 forbids that), makes every request fail: with ValueError,
or with DuplicateExtension, which is no ValueError and so escaped the readers that caught only ValueError. A
certificate discovered or configured beside good ones then stopped the search for them, or the configuration from
loading, instead of being one certificate that binds and proves nothing. Every reader here turns both into
:class:`UnreadableExtensions` (a ValueError), and the name readers into "no names".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509

from directmilter.memo import kept

__all__ = ["Names", "UnreadableExtensions", "describe_certificate", "extension", "names", "serial_hex", "unreadable"]

E = TypeVar("E", bound=x509.ExtensionType)


class UnreadableExtensions(ValueError):
    """The certificate's extensions cannot be parsed (malformed, or one of them repeated)."""


def extension(cert: x509.Certificate, kind: type[E]) -> E | None:
    """The value of the certificate's extension of type ``kind``; None when it has none. UnreadableExtensions
    when its extensions cannot be read."""
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except (ValueError, TypeError, x509.DuplicateExtension) as exc:
        raise UnreadableExtensions(f"its extensions cannot be read: {exc}") from exc


def unreadable(cert: x509.Certificate) -> str | None:
    """Why the certificate's extensions cannot be read, or None when they can."""
    try:
        extension(cert, x509.SubjectAlternativeName)
    except UnreadableExtensions as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class Names:
    """The subjectAltName entries a Direct binding can rest on (AS 4.1): rfc822Name and dNSName, as written."""

    rfc822: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()


def names(cert: x509.Certificate) -> Names:
    """The certificate's subjectAltName names; none when it has no such extension or its extensions cannot be
    read (an unreadable certificate binds nothing)."""
    try:
        san = extension(cert, x509.SubjectAlternativeName)
    except UnreadableExtensions:
        return Names()
    if san is None:
        return Names()
    return Names(tuple(str(n) for n in san.get_values_for_type(x509.RFC822Name)),
                 tuple(str(n) for n in san.get_values_for_type(x509.DNSName)))


def _name_string(name: x509.Name) -> str:
    try:
        return name.rfc4514_string() or "(empty)"
    except (ValueError, TypeError):
        return "(unparseable name)"


def serial_hex(cert: x509.Certificate) -> str:
    """The serial number in upper-case hex, an even number of digits (``0A1B``); a negative one gets ``-``."""
    serial = cert.serial_number
    digits = format(abs(serial), "X")
    if len(digits) % 2:
        digits = "0" + digits
    return ("-" if serial < 0 else "") + digits


@kept(1024)
def describe_certificate(cert: x509.Certificate) -> str:
    """``subject CN=..., issuer CN=..., serial 0A1B`` (RFC 4514 names, hex serial), for operator messages.

    Kept per certificate (they are immutable): every message's log records describe the same few certificates."""
    return (
        f"subject {_name_string(cert.subject)}, issuer {_name_string(cert.issuer)}, serial {serial_hex(cert)}"
    )
