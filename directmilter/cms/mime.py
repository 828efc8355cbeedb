"""Byte-exact MIME: splitting entities and multiparts without re-serialising anything.

Signatures cover exact bytes (RFC 5751 3.1.1, and the agent algorithm's "wire text fidelity"), so this module never
round-trips through :mod:`email`'s object model: it finds header blocks, bodies and multipart delimiters in the
bytes as they are and hands out slices. Structured fields (Content-Type parameters, addresses) are read by
:mod:`directmilter.cms.fields`, in one pass each.
"""

from __future__ import annotations

import binascii
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from directmilter.cms.fields import address_list, content_type
from directmilter.errors import MalformedMessage
from directmilter.memo import kept

CRLF = b"\r\n"
_BARE_NEWLINE = re.compile(rb"\r\n|\r|\n")
_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:")
#: Deeper nesting than this is refused: real clinical mail nests a few levels; a bomb nests thousands.
MAX_DEPTH = 32
#: More header fields than this in one header block are refused (real mail has dozens; a bomb has millions).
MAX_HEADERS = 1000


def canonicalize(data: bytes) -> bytes:
    """Canonical line ends (RFC 5751 3.1.1): every CR, LF or CRLF becomes CRLF."""
    if b"\r" not in data:
        return data.replace(b"\n", CRLF)
    pairs = data.count(CRLF)
    if data.count(b"\r") == pairs == data.count(b"\n"):
        return data  # already canonical (the usual case on the wire): three C-speed counts, no copy
    return _BARE_NEWLINE.sub(CRLF, data)


@dataclass(frozen=True)
class Header:
    """One header field as it stands in the bytes (``raw`` includes continuation lines and the final CRLF)."""

    name: str
    raw: bytes

    @property
    def value(self) -> str:
        text = self.raw.split(b":", 1)[1].decode("ascii", "replace")
        return (re.sub(r"\r?\n(?=[ \t])", "", text) if "\n" in text[:-1] else text).strip()


#: What entities are parsed from: the bytes as received, or a decrypted buffer (bytearray) sliced without copying.
Buffer = bytes | bytearray
#: A piece of content on its way through: bytes, a decrypted buffer, or a view into either (never copied).
Chunk = bytes | bytearray | memoryview


@dataclass(frozen=True)
class Entity:
    """A MIME entity: ``raw[start:end]`` of a buffer, its header fields, and where its body begins.

    Entities nested in a multipart keep pointing into the outermost buffer: parsing a 25 MiB message with a
    25 MiB attachment copies no body (only header blocks, which are small, are copied).
    """

    raw: Buffer = field(repr=False)
    headers: tuple[Header, ...]
    body_start: int
    end: int
    _type: tuple[str, Mapping[str, str]] = field(repr=False, compare=False)

    @property
    def body(self) -> bytes:
        """A copy of the body; :attr:`body_view` when a large body must not be copied."""
        return bytes(self.raw[self.body_start : self.end])

    @property
    def body_view(self) -> memoryview:
        return memoryview(self.raw)[self.body_start : self.end]

    @property
    def content_type(self) -> str:
        return self._type[0]

    def param(self, name: str) -> str | None:
        return self._type[1].get(name.lower())

    def get(self, name: str) -> str | None:
        lowered = name.lower()
        for header in self.headers:
            if header.name == lowered:
                return header.value
        return None

    def get_all(self, name: str) -> list[str]:
        lowered = name.lower()
        return [h.value for h in self.headers if h.name == lowered]

    def addresses(self, *names: str) -> tuple[str, ...]:
        """The addresses in these address fields (``"to"``, ``"cc"``...), in order; "" for one that cannot be read."""
        wanted = {name.lower() for name in names}
        return _addresses(tuple(h.value for h in self.headers if h.name in wanted))

    @property
    def transfer_encoding(self) -> str:
        return (self.get("content-transfer-encoding") or "7bit").lower()


def parse_entity(data: Buffer, *, what: str = "message", max_headers: int = MAX_HEADERS, start: int = 0,
                 end: int | None = None) -> Entity:
    """Split ``data[start:end]`` at its first empty line and check its header fields are RFC 5322 fields."""
    stop = len(data) if end is None else end
    if data[start : min(start + 2, stop)] == CRLF:
        header_block, body_start = b"", start + 2
    else:
        blank = data.find(b"\r\n\r\n", start, stop)
        if blank < 0:
            block = bytes(data[start:stop])
            header_block, body_start = (block if block.endswith(CRLF) else block + CRLF), stop
        else:
            header_block, body_start = bytes(data[start : blank + 2]), blank + 4
    headers = _parse_header_block(header_block, what)
    if len(headers) > max_headers:
        raise MalformedMessage(f"{what}: {len(headers)} header fields, more than the limit of {max_headers}")
    content_type = next((h.value for h in headers if h.name == "content-type"), None)
    return Entity(raw=data, headers=headers, body_start=body_start, end=stop, _type=_content_type(content_type))


@kept(1024)
def _addresses(values: tuple[str, ...]) -> tuple[str, ...]:
    """:func:`address_list`, kept: the same correspondents write again and again."""
    return tuple(address_list(values))


#: A Content-Type field's type and parameters, parsed once per entity and kept: most Content-Type fields (not a
#: multipart's, whose boundary is new each time) repeat from message to message.
_content_type = kept(256)(content_type)


def _parse_header_block(block: bytes, what: str) -> tuple[Header, ...]:
    if b"\x00" in block:
        raise MalformedMessage(f"{what}: header contains a NUL byte (RFC 5322 2.2)")
    headers: list[Header] = []
    name: bytes | None = None
    start = 0
    lines = block.split(CRLF)[:-1] if block else []
    offset = 0
    for index, line in enumerate(lines):
        if line[:1] in (b" ", b"\t"):
            if name is None:
                raise MalformedMessage(f"{what}: header block starts with a continuation line (RFC 5322 2.2.3)")
        else:
            if name is not None:
                headers.append(Header(name.decode("ascii").lower(), block[start:offset]))
            if not _FIELD_NAME.match(line):
                raise MalformedMessage(
                    f"{what}: header line {index + 1} is not a 'name: value' field (RFC 5322 2.2)"
                )
            name, start = line.split(b":", 1)[0], offset
        offset += len(line) + 2
    if name is not None:
        headers.append(Header(name.decode("ascii").lower(), block[start:offset]))
    return tuple(headers)


def split_multipart(entity: Entity, *, what: str = "multipart") -> tuple[list[bytes], bool]:
    """Return a copy of each body part's bytes and whether the closing delimiter was found."""
    spans, closed = multipart_spans(entity, what=what)
    return [bytes(entity.raw[a:b]) for a, b in spans], closed


def multipart_spans(entity: Entity, *, what: str = "multipart") -> tuple[list[tuple[int, int]], bool]:
    """Where each body part lies in ``entity.raw``, and whether the closing delimiter was found.

    The CRLF before a delimiter line belongs to the delimiter (RFC 2046 5.1.1), so each part is exactly what a
    signature over it covered.
    """
    boundary = entity.param("boundary")
    if not boundary:
        raise MalformedMessage(f"{what}: {entity.content_type} has no boundary parameter (RFC 2046 5.1.1)")
    # Found with bytes.find: a regex per boundary would be compiled anew for every message (boundaries are unique).
    marker = b"--" + boundary.encode("utf-8")
    raw, first, stop = entity.raw, entity.body_start, entity.end
    spans: list[tuple[int, int]] = []
    start: int | None = None
    at = raw.find(marker, first, stop)
    while at >= 0:
        closing, after = _delimiter_line(raw, at + len(marker), stop)
        if after < 0:  # the boundary followed by something else: not a delimiter line
            at = raw.find(marker, at + 1, stop)
            continue
        # The CRLF before "--" belongs to this delimiter, so it cannot also end the previous delimiter line.
        if at == first or (raw[at - 2 : at] == CRLF and (start is None or at - 2 >= start)):
            if start is not None:
                spans.append((start, at - 2))
            if closing:
                return spans, True
            start = after
        at = raw.find(marker, after, stop)
    if start is not None:
        spans.append((start, stop))
    return spans, False


def _delimiter_line(raw: Buffer, at: int, stop: int) -> tuple[bool, int]:
    """After a boundary: whether "--" closes the multipart, and where the line ends (after its CRLF); -1 when the
    rest of the line is not optional "--", then spaces or tabs (RFC 2046 5.1.1)."""
    closing = raw[at : at + 2] == b"--" and at + 2 <= stop
    end = at + 2 if closing else at
    while end < stop and raw[end] in (0x20, 0x09):
        end += 1
    if end == stop or (end == stop - 1 and raw[end] == 0x0A):  # at the end (where a regex "$" matches)
        return closing, end
    if raw[end : end + 2] == CRLF and end + 2 <= stop:
        return closing, end + 2
    return False, -1


def validate_structure(entity: Entity, *, what: str = "message", depth: int = 0, max_depth: int = MAX_DEPTH,
                       max_headers: int = MAX_HEADERS) -> None:
    """Check an entity is well-formed MIME (Applicability Statement 2.1): multiparts closed, nesting bounded."""
    if depth > max_depth:
        raise MalformedMessage(f"{what}: MIME nesting deeper than {max_depth} levels")
    maintype = entity.content_type.split("/", 1)[0]
    limits = {"max_depth": max_depth, "max_headers": max_headers}
    if maintype == "multipart":
        spans, closed = multipart_spans(entity, what=what)
        if not closed:
            raise MalformedMessage(f"{what}: {entity.content_type} is never terminated by its closing boundary")
        if not spans:
            raise MalformedMessage(f"{what}: {entity.content_type} has no body parts")
        for number, (start, end) in enumerate(spans, 1):
            part = parse_entity(entity.raw, what=f"{what} part {number}", max_headers=max_headers, start=start,
                                end=end)
            validate_structure(part, what=what, depth=depth + 1, **limits)
    elif entity.content_type == "message/rfc822" and entity.transfer_encoding in ("7bit", "8bit", "binary"):
        attached = parse_entity(entity.raw, what=f"{what} (attached message)", max_headers=max_headers,
                                start=entity.body_start, end=entity.end)
        validate_structure(attached, what=what, depth=depth + 1, **limits)


def decode_body(entity: Entity, *, what: str) -> bytes:
    """The entity's body with its Content-Transfer-Encoding removed (base64 strictly checked)."""
    encoding = entity.transfer_encoding
    if encoding == "base64":
        view = entity.body_view
        return bytes(decode_base64((view[i : i + _BLOCK] for i in range(0, len(view), _BLOCK)), what=what))
    if encoding == "quoted-printable":
        return binascii.a2b_qp(entity.body)
    if encoding in ("7bit", "8bit", "binary"):
        return entity.body
    raise MalformedMessage(f"{what}: unknown Content-Transfer-Encoding {encoding!r}")


_BLANKS = b"\r\n\t "
_BLOCK = 1 << 20


def decode_base64(chunks: Iterable[Chunk], *, what: str) -> bytearray:
    """Strict base64 (line breaks and blanks aside) decoded piece by piece, so the encoded text is never compacted
    into one more copy of itself: a 35 MiB S/MIME body costs its 25 MiB of DER and a block."""
    decoded = bytearray()
    carry = b""
    padded = False
    try:
        for chunk in chunks:
            # One copy of each chunk (the translation); the whole 4-character groups are decoded through a view.
            compact = (chunk if isinstance(chunk, bytes | bytearray) else bytes(chunk)).translate(None, _BLANKS)
            if carry:
                compact = carry + compact
            if not compact:
                continue
            if padded:
                raise ValueError("data after the final padding")
            cut = len(compact) - len(compact) % 4
            carry = bytes(compact[cut:])
            if cut:
                decoded += binascii.a2b_base64(memoryview(compact)[:cut], strict_mode=True)
                padded = compact[cut - 1] == 0x3D  # "="
        if carry:
            raise ValueError("truncated")
    except (binascii.Error, ValueError) as exc:
        raise MalformedMessage(f"{what}: body is not valid base64") from exc
    return decoded


def fold_base64(data: bytes | bytearray, width: int = 76) -> bytes:
    """Base64 in CRLF-terminated lines of ``width`` characters: 7-bit clean, safe through any MTA."""
    encoded = binascii.b2a_base64(data, newline=False)  # one call, then a slice per line (encodebytes: a call each)
    return CRLF.join([encoded[i : i + width] for i in range(0, len(encoded), width)]) + CRLF if encoded else b""


def fold_base64_stream(chunks: Iterable[Chunk]) -> Iterator[bytes]:
    """:func:`fold_base64` of everything ``chunks`` yields, produced as it comes (whole lines of 57 input bytes)."""
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        whole = len(pending) - len(pending) % 57
        if whole >= _BLOCK:
            yield fold_base64(pending[:whole])
            del pending[:whole]
    if pending:
        yield fold_base64(pending)


def new_boundary(*avoid: Chunk) -> str:
    """A boundary that does not occur in any of ``avoid`` (128 random bits make a clash all but impossible)."""
    # A view is searched through the whole buffer it shows: a clash elsewhere costs one more draw, never a miss.
    haystacks = [chunk.obj if isinstance(chunk, memoryview) else chunk for chunk in avoid]
    while True:
        boundary = f"----=_directmilter_{secrets.token_hex(16)}"
        if not any(boundary.encode() in haystack for haystack in haystacks):  # type: ignore[operator]
            return boundary
