"""DER by hand, for the few structures built or compared on every message (asn1crypto is pure Python and slow
there): identifier-length-contents encoding, and comparing distinguished names."""

from __future__ import annotations

from asn1crypto import x509 as asn1_x509

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
