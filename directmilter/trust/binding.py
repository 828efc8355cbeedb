"""Certificate-to-entity binding (Applicability Statement 4.1, 4.1.1, 4.1.2).

A certificate is *bound* to a Direct address in one of two ways:

- **address-bound** (4.1.1): the subjectAltName holds an rfc822Name equal to the address, compared
  case-insensitively (local part included: the AS overrides RFC 5280's exact local-part match), and every
  ``emailAddress`` attribute of the subject DN (legacy, deprecated by RFC 5280) equals the address as well;
- **organisation-bound** (4.1.2): the subjectAltName holds a dNSName equal to the address's domain, compared
  case-insensitively and exactly: no wildcards, no parent or child domains. The subject ``emailAddress`` rule
  does not apply to organisation certificates.

Names that appear only in the subject (CN, emailAddress) never bind: a certificate without a matching
subjectAltName entry is not bound, whatever its subject says (vector V6).

When a certificate satisfies both definitions, :func:`bound_to` answers :attr:`Binding.ADDRESS`. A
certificate whose rfc822Name matches but whose subject emailAddress does not is still organisation-bound if it
also names the domain in a dNSName: 4.1.2 states its condition alone.
"""

from __future__ import annotations

import enum

from cryptography import x509
from cryptography.x509.oid import NameOID

from directmilter import certfacts
from directmilter.certfacts import describe_certificate as describe_certificate  # still imported from here


class Binding(enum.Enum):
    """How a certificate is bound to an address."""

    ADDRESS = "address"
    """Address-bound: SAN rfc822Name (AS 4.1.1)."""

    ORGANIZATION = "organization"
    """Organisation-bound: SAN dNSName of the address's domain (AS 4.1.2)."""


def _fold(value: str) -> str:
    return value.strip().lower()


def split_address(address: str) -> tuple[str, str] | None:
    """``local@domain`` -> (local, domain); None when the address has no ``@`` or an empty part.

    The split is at the last ``@`` (a quoted local part may contain one).
    """
    local, sep, domain = address.strip().rpartition("@")
    if not sep or not local or not domain:
        return None
    return local, domain


def _rfc822_names(cert: x509.Certificate) -> tuple[str, ...]:
    return certfacts.names(cert).rfc822


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    return certfacts.names(cert).dns


def _subject_email_addresses(cert: x509.Certificate) -> list[str]:
    try:
        attributes = cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)
    except ValueError:
        return ["<unparseable>"]
    return [a.value if isinstance(a.value, str) else a.value.decode("latin-1") for a in attributes]


def _domain_matches(dns_name: str, domain: str) -> bool:
    return _fold(dns_name).rstrip(".") == _fold(domain).rstrip(".") and bool(_fold(domain).rstrip("."))


def bound_to_domain(cert: x509.Certificate, domain: str) -> bool:
    """True when the certificate is organisation-bound to ``domain``: a SAN dNSName equal to it (AS 4.1.2).

    The comparison is case-insensitive and exact (a trailing root dot is ignored); ``*.domain``, a parent
    domain and a child domain all fail.
    """
    return any(_domain_matches(name, domain) for name in _dns_names(cert))


def _address_bound(cert: x509.Certificate, address: str) -> bool:
    wanted = _fold(address)
    if not any(_fold(name) == wanted for name in _rfc822_names(cert)):
        return False
    return all(_fold(email) == wanted for email in _subject_email_addresses(cert))


def bound_to(cert: x509.Certificate, address: str) -> Binding | None:
    """How ``cert`` is bound to the Direct ``address`` (a bare addr-spec), or None when it is not bound."""
    parts = split_address(address)
    if parts is None:
        return None
    if _address_bound(cert, address):
        return Binding.ADDRESS
    if bound_to_domain(cert, parts[1]):
        return Binding.ORGANIZATION
    return None


def certificate_names(cert: x509.Certificate) -> str:
    """The names that could bind the certificate, e.g. ``rfc822Name carol@x.test, dNSName x.test``."""
    parts = [f"rfc822Name {n}" for n in _rfc822_names(cert)]
    parts += [f"dNSName {n}" for n in _dns_names(cert)]
    if not parts:
        parts.append("no subjectAltName rfc822Name or dNSName")
    parts += [f"subject emailAddress {e}" for e in _subject_email_addresses(cert)]
    return ", ".join(parts)


def binding_error(cert: x509.Certificate, address: str) -> str:
    """Why ``cert`` is not bound to ``address``, for the SMTP reply and the log.

    Example: ``certificate (subject CN=carol, issuer CN=R, serial 0A) is not bound to bob@direct.b.test
    (its names: rfc822Name carol@direct.b.test)``.
    """
    reason = f"certificate ({describe_certificate(cert)}) is not bound to {address}"
    if split_address(address) is None:
        return f"{reason}: not a Direct address"
    wanted = _fold(address)
    detail = ""
    if any(_fold(n) == wanted for n in _rfc822_names(cert)):
        others = [e for e in _subject_email_addresses(cert) if _fold(e) != wanted]
        if others:
            detail = f": its subject emailAddress {', '.join(others)} does not match (AS 4.1.1)"
    return f"{reason}{detail} (its names: {certificate_names(cert)})"
