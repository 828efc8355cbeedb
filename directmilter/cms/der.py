"""DER by hand, for the few structures built or compared on every message (asn1crypto is pure Python and slow
there): identifier-length-contents encoding, comparing distinguished names, and certificates kept by encoding."""

from __future__ import annotations

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from directmilter.memo import kept

#: What parsing hostile ASN.1 with asn1crypto can raise besides our own errors (a wrong type where another was
#: expected surfaces as AttributeError, deep nesting as RecursionError). Each becomes a CMSError: a clean
#: rejection of the message, never an internal error that would defer it for days.
MALFORMED_INPUT = (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError, RecursionError)


def header(tag: int, length: int) -> bytes:
    """A DER identifier and definite length (X.690 8.1.3)."""
    if length < 0x80:
        return bytes((tag, length))
    size = (length.bit_length() + 7) // 8
    return bytes((tag, 0x80 | size)) + length.to_bytes(size, "big")


def tlv(tag: int, contents: bytes) -> bytes:
    return header(tag, len(contents)) + contents


def same_name(a: asn1_x509.Name, b: asn1_x509.Name) -> bool:
    """RFC 5280 7.1 name matching; the encodings are compared first, because they almost always are identical and
    the full comparison (LDAP stringprep of every attribute) costs more than the rest of verifying a signature."""
    return bool(a.dump() == b.dump() or a == b)


@kept(512)
def load_certificate(der: bytes) -> x509.Certificate:
    """A certificate from its DER (ValueError when it is none). The same few arrive in every message of a
    correspondent, so they are kept (see :mod:`directmilter.memo`): look-ups by certificate then find them too.
    Every certificate a stranger hands us is read here: cryptography's InvalidVersion is not a ValueError, and
    would pass every handler of malformed input (a 451 instead of a refusal)."""
    try:
        return x509.load_der_x509_certificate(der)
    except x509.InvalidVersion as exc:
        raise ValueError(f"not a certificate: {exc}") from None


def issued_as(cert: x509.Certificate, issuer: bytes, serial: int) -> bool:
    """Whether an issuer-and-serial-number (of a SignerInfo or RecipientInfo; ``issuer`` is the DER of its Name)
    names ``cert``."""
    if serial != cert.serial_number:
        return False
    own = _issuer(cert)
    return issuer == own or same_name(asn1_x509.Name.load(issuer), asn1_x509.Name.load(own))


@kept(512)
def _issuer(cert: x509.Certificate) -> bytes:
    return cert.issuer.public_bytes()


@kept(512)
def subject_key_identifier(cert: x509.Certificate) -> bytes | None:
    """The certificate's subjectKeyIdentifier extension, if it has one (what a [0] signer identifier names)."""
    try:
        return bytes(cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest)
    except x509.ExtensionNotFound:
        return None


@kept(512)
def public_key(cert: x509.Certificate) -> CertificatePublicKeyTypes:
    """The certificate's public key, made once per certificate rather than once per signature checked."""
    return cert.public_key()
