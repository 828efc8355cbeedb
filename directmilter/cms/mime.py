"""Byte-exact MIME: splitting entities and multiparts without re-serialising anything.

Signatures cover exact bytes (RFC 5751 3.1.1, and the agent algorithm's "wire text fidelity"), so this module never
round-trips through :mod:`email`'s object model: it finds header blocks, bodies and multipart delimiters in the
bytes as they are and hands out slices. :mod:`email` is used only to parse header *parameters*, which it does well.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass, field
from email.message import Message
from email.utils import collapse_rfc2231_value

from directmilter.errors import MalformedMessage

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
        return re.sub(r"\r?\n(?=[ \t])", "", text).strip()


@dataclass(frozen=True)
class Entity:
    """A MIME entity: its header fields and its body, both slices of the original bytes."""

    raw: bytes
    headers: tuple[Header, ...]
    body: bytes
    _params: Message = field(repr=False, compare=False)

    @property
    def content_type(self) -> str:
        return self._params.get_content_type()

    def param(self, name: str) -> str | None:
        value = self._params.get_param(name)
        if value is None:
            return None
        return str(collapse_rfc2231_value(value))

    def get(self, name: str) -> str | None:
        lowered = name.lower()
        for header in self.headers:
            if header.name == lowered:
                return header.value
        return None

    def get_all(self, name: str) -> list[str]:
        lowered = name.lower()
        return [h.value for h in self.headers if h.name == lowered]

    @property
    def transfer_encoding(self) -> str:
        return (self.get("content-transfer-encoding") or "7bit").lower()


def parse_entity(data: bytes, *, what: str = "message", max_headers: int = MAX_HEADERS) -> Entity:
    """Split an entity at its first empty line and check its header fields are RFC 5322 fields."""
    if data.startswith(CRLF):
        header_block, body = b"", data[2:]
    else:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            header_block, body = (data if data.endswith(CRLF) else data + CRLF), b""
        else:
            header_block, body = data[: end + 2], data[end + 4 :]
    headers = _parse_header_block(header_block, what)
    if len(headers) > max_headers:
        raise MalformedMessage(f"{what}: {len(headers)} header fields, more than the limit of {max_headers}")
    params = Message()
    content_type = next((h.value for h in headers if h.name == "content-type"), None)
    if content_type is not None:
        params["Content-Type"] = content_type
    return Entity(raw=data, headers=headers, body=body, _params=params)


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
    """Return the exact bytes of each body part and whether the closing delimiter was found.

    The CRLF before a delimiter line belongs to the delimiter (RFC 2046 5.1.1), so each part is exactly what a
    signature over it covered.
    """
    boundary = entity.param("boundary")
    if not boundary:
        raise MalformedMessage(f"{what}: {entity.content_type} has no boundary parameter (RFC 2046 5.1.1)")
    # A literal prefix lets the regex engine skip ahead fast; "at a line start" is checked by hand.
    delimiter = re.compile(rb"--" + re.escape(boundary.encode("utf-8")) + rb"(--)?[ \t]*(?:\r\n|$)")
    body = entity.body
    parts: list[bytes] = []
    start: int | None = None
    for match in delimiter.finditer(body):
        at = match.start()
        # The CRLF before "--" belongs to this delimiter, so it cannot also end the previous delimiter line.
        if at != 0 and (body[at - 2 : at] != CRLF or (start is not None and at - 2 < start)):
            continue
        if start is not None:
            parts.append(body[start : at - 2])
        if match.group(1):
            return parts, True
        start = match.end()
    if start is not None:
        parts.append(body[start:])
    return parts, False


def validate_structure(entity: Entity, *, what: str = "message", depth: int = 0, max_depth: int = MAX_DEPTH,
                       max_headers: int = MAX_HEADERS) -> None:
    """Check an entity is well-formed MIME (Applicability Statement 2.1): multiparts closed, nesting bounded."""
    if depth > max_depth:
        raise MalformedMessage(f"{what}: MIME nesting deeper than {max_depth} levels")
    maintype = entity.content_type.split("/", 1)[0]
    limits = {"max_depth": max_depth, "max_headers": max_headers}
    if maintype == "multipart":
        parts, closed = split_multipart(entity, what=what)
        if not closed:
            raise MalformedMessage(f"{what}: {entity.content_type} is never terminated by its closing boundary")
        if not parts:
            raise MalformedMessage(f"{what}: {entity.content_type} has no body parts")
        for number, part in enumerate(parts, 1):
            validate_structure(parse_entity(part, what=f"{what} part {number}", max_headers=max_headers), what=what,
                               depth=depth + 1, **limits)
    elif entity.content_type == "message/rfc822" and entity.transfer_encoding in ("7bit", "8bit", "binary"):
        validate_structure(parse_entity(entity.body, what=f"{what} (attached message)", max_headers=max_headers),
                           what=what, depth=depth + 1, **limits)


def decode_body(entity: Entity, *, what: str) -> bytes:
    """The entity's body with its Content-Transfer-Encoding removed (base64 strictly checked)."""
    encoding = entity.transfer_encoding
    if encoding == "base64":
        compact = re.sub(rb"[\r\n\t ]+", b"", entity.body)
        try:
            return base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MalformedMessage(f"{what}: body is not valid base64") from exc
    if encoding == "quoted-printable":
        return binascii.a2b_qp(entity.body)
    if encoding in ("7bit", "8bit", "binary"):
        return entity.body
    raise MalformedMessage(f"{what}: unknown Content-Transfer-Encoding {encoding!r}")


def fold_base64(data: bytes, width: int = 76) -> bytes:
    """Base64 in CRLF-terminated lines of ``width`` characters: 7-bit clean, safe through any MTA."""
    if width == 76:  # base64.encodebytes writes 76-character lines, in C
        return base64.encodebytes(data).replace(b"\n", CRLF)
    encoded = base64.b64encode(data)
    return b"".join(encoded[i : i + width] + CRLF for i in range(0, len(encoded), width))


def new_boundary(*avoid: bytes) -> str:
    """A boundary that does not occur in any of ``avoid`` (128 random bits make a clash all but impossible)."""
    while True:
        boundary = f"----=_directmilter_{secrets.token_hex(16)}"
        if not any(boundary.encode() in chunk for chunk in avoid):
            return boundary

