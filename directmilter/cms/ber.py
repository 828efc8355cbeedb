"""A BER reader for the CMS structures taken apart on every incoming message.

asn1crypto parses lazily but in pure Python, and makes an object of every level it touches: for a SignedData and
an EnvelopedData that was a third of the Python work of opening a message. These functions only find where each
element lies in the buffer (:class:`Element`: spans, no copies); the few values read (OIDs, integers, octet
strings) are taken out where they lie, and asn1crypto is used for what is rare (names in error messages,
algorithm parameters).

Everything here is strict about what it walks: lengths must lie inside the enclosing element, indefinite lengths
must end inside it, nesting is bounded. A violation is a :class:`BERError` (a ``ValueError``), which the callers
turn into a clean rejection of the message.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

#: Constructed encodings nest a few levels in real CMS; deeper is an attack on the recursion (and, since an
#: indefinite length is found by walking what it holds, on the time spent walking).
MAX_NESTING = 16
#: More pieces than this in one element (children of a constructed element, segments of an OCTET STRING) are
#: refused. Streaming senders cut content into segments of a few KiB (64 MiB in 1 KiB segments is 65,536); a
#: stranger's one-byte segments, or a SET of a million empty elements, would cost a worker seconds per MiB.
MAX_PIECES = 100_000

Buffer = bytes | bytearray

SEQUENCE, SET, INTEGER, OCTET_STRING, OID = 0x30, 0x31, 0x02, 0x04, 0x06


class BERError(ValueError):
    """The bytes are not the BER of what was expected; the message says where it went wrong."""


class Element(NamedTuple):
    """One BER element: identifier octet, the span of its contents and of its whole encoding."""

    tag: int
    start: int
    end: int
    first: int
    after: int


def _head(der: Buffer, at: int, limit: int) -> tuple[int, int, int | None]:
    """The identifier, where the contents start, and their length (None: indefinite) of the element at ``at``."""
    if at + 2 > limit:
        raise BERError("truncated: a BER element runs past its end")
    tag, size = der[at], der[at + 1]
    if tag & 0x1F == 0x1F:
        raise BERError("a high tag number, which CMS never uses")
    start = at + 2
    if size == 0x80:  # indefinite length: constructed contents up to an end-of-contents marker
        if not tag & 0x20:
            raise BERError("a primitive element with an indefinite length")
        return tag, start, None
    if size > 0x80:
        count = size & 0x7F
        if count > 8 or start + count > limit:
            raise BERError("truncated: a BER length runs past its end")
        length, start = int.from_bytes(der[start : start + count], "big"), start + count
    else:
        length = size
    if start + length > limit:
        raise BERError("truncated: a BER element runs past its end")
    return tag, start, length


def _end_of_contents(der: Buffer, position: int, limit: int) -> bool:
    if position + 2 > limit:  # the end-of-contents marker must lie within the enclosing element
        raise BERError("truncated: an indefinite length has no end-of-contents marker")
    return der[position] == 0 and der[position + 1] == 0


def element(der: Buffer, at: int, limit: int, depth: int = 0) -> Element:
    """The element whose encoding starts at ``at`` and must end by ``limit``."""
    if depth > MAX_NESTING:
        raise BERError(f"BER encodings nest deeper than {MAX_NESTING} levels")
    tag, start, length = _head(der, at, limit)
    if length is not None:
        return Element(tag, start, start + length, at, start + length)
    position = start
    for _ in range(MAX_PIECES + 1):
        if _end_of_contents(der, position, limit):
            return Element(tag, start, position, at, position + 2)
        position = element(der, position, limit, depth + 1).after
    raise BERError(f"an indefinite-length element holds more than {MAX_PIECES} elements")


def top(der: Buffer, tag: int, what: str) -> Element:
    """The element at the start of ``der`` (what follows it is ignored, as CMS readers do), which must be ``tag``."""
    found = element(der, 0, len(der))
    expect(found, tag, what)
    return found


def children(der: Buffer, parent: Element, tag: int, what: str) -> list[Element]:
    """The elements a constructed ``parent`` holds; ``parent`` must have identifier ``tag``."""
    expect(parent, tag, what)
    found: list[Element] = []
    position, end = parent.start, parent.end
    while position < end:
        if len(found) == MAX_PIECES:
            raise BERError(f"{what}: more than {MAX_PIECES} elements")
        child = element(der, position, end)
        found.append(child)
        position = child.after
    return found


def expect(found: Element, tag: int, what: str) -> None:
    if found.tag != tag:
        raise BERError(f"{what}: expected identifier {tag:#04x}, found {found.tag:#04x}")


def octets(der: Buffer, found: Element) -> Iterator[tuple[int, int]]:
    """The spans of an OCTET STRING's value, primitive or cut into constructed segments (BER, X.690 8.7.3), at
    most :data:`MAX_PIECES` of them.

    One pass over the segments, however deep they nest: an indefinite-length level is read up to its
    end-of-contents marker as it goes, not first walked to find its end (which costs a pass per level)."""
    if not found.tag & 0x20:
        yield found.start, found.end
        return
    pieces = 0
    # Each level being read: [next position, its end (None: up to an end-of-contents marker), the limit it is in].
    levels: list[list[int | None]] = [[found.start, found.end, found.end]]
    while levels:
        level = levels[-1]
        position, end, limit = level
        assert position is not None and limit is not None
        if end is None:
            if _end_of_contents(der, position, limit):
                levels.pop()
                if levels:
                    levels[-1][0] = position + 2  # the enclosing level goes on after the marker
                continue
        elif position >= end:
            levels.pop()
            continue
        within = limit if end is None else end
        tag, start, length = _head(der, position, within)
        if tag not in (OCTET_STRING, OCTET_STRING | 0x20):
            raise BERError(f"a constructed OCTET STRING holds identifier {tag:#04x}")
        pieces += 1
        if pieces > MAX_PIECES:
            raise BERError(f"an OCTET STRING cut into more than {MAX_PIECES} segments")
        if tag & 0x20 and len(levels) >= MAX_NESTING:
            raise BERError(f"BER encodings nest deeper than {MAX_NESTING} levels")
        if length is None:
            levels.append([start, None, within])  # where the enclosing level goes on is known at its marker
            continue
        level[0] = start + length
        if tag & 0x20:
            levels.append([start, start + length, start + length])
        else:
            yield start, start + length


def octet_string(der: Buffer, found: Element, what: str, implicit: int = OCTET_STRING) -> bytes:
    """The value of an OCTET STRING, or of one implicitly tagged ``implicit`` (primitive or constructed)."""
    if found.tag & ~0x20 != implicit:
        raise BERError(f"{what}: expected an OCTET STRING, found identifier {found.tag:#04x}")
    return b"".join(bytes(der[a:z]) for a, z in octets(der, found))


def integer(der: Buffer, found: Element, what: str) -> int:
    """The value of a (primitive) INTEGER."""
    if found.tag != INTEGER or found.start == found.end:
        raise BERError(f"{what}: expected an INTEGER, found identifier {found.tag:#04x}")
    return int.from_bytes(der[found.start : found.end], "big", signed=True)


def encoding(der: Buffer, found: Element) -> bytes:
    """The whole encoding of an element (identifier, length, contents), as bytes."""
    return bytes(der[found.first : found.after])


def oid(der: Buffer, found: Element, what: str) -> bytes:
    """The whole encoding of an OBJECT IDENTIFIER: compared as bytes, named only when a message needs it."""
    if found.tag != OID or found.start == found.end:
        raise BERError(f"{what}: expected an OBJECT IDENTIFIER, found identifier {found.tag:#04x}")
    return encoding(der, found)


class Identifier(NamedTuple):
    """Whom a SignerInfo or RecipientInfo names (RFC 5652 5.3, 6.2.1): an issuer (the DER of its Name) and serial
    number, or a subject key identifier."""

    issuer: bytes | None
    serial: int | None
    key_identifier: bytes | None


def identifier(der: Buffer, found: Element, what: str) -> Identifier:
    """A SignerIdentifier / RecipientIdentifier: IssuerAndSerialNumber, or [0] SubjectKeyIdentifier."""
    if found.tag == SEQUENCE:
        named = children(der, found, SEQUENCE, "IssuerAndSerialNumber")
        if len(named) != 2:
            raise BERError("IssuerAndSerialNumber does not hold an issuer and a serial number")
        expect(named[0], SEQUENCE, "IssuerAndSerialNumber issuer")
        return Identifier(encoding(der, named[0]), integer(der, named[1], "IssuerAndSerialNumber serial"), None)
    if found.tag in (0x80, 0xA0):
        return Identifier(None, None, octet_string(der, found, "SubjectKeyIdentifier", implicit=0x80))
    raise BERError(f"a {what} has identifier {found.tag:#04x}")


def algorithm(der: Buffer, found: Element, what: str) -> tuple[bytes, Element | None]:
    """An AlgorithmIdentifier: the encoding of its OID, and its parameters if it has any."""
    parts = children(der, found, SEQUENCE, what)
    if not parts:
        raise BERError(f"{what} is empty")
    return oid(der, parts[0], what), parts[1] if len(parts) > 1 else None
