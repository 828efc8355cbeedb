"""Structured header fields read in one pass: Content-Type parameters (RFC 2045 5.1, RFC 2231) and address lists
(RFC 5322 3.4).

These fields come from strangers and are read before any signature is checked, so their cost must follow their
length. The standard library's readers do not: its parameter splitter rescans the rest of the field for every
quote (a 540 KB Content-Type cost a crypto worker 78 s), and its address reader recurses into nested comments
(a few thousand ``(`` in a From field raise RecursionError). Each reader here walks its input once, left to right,
with a counter for comment depth instead of recursion; nothing in it backtracks.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from urllib.parse import unquote_to_bytes

from directmilter.memo import kept

#: The default type of an entity without a (readable) Content-Type field (RFC 2045 5.2).
DEFAULT_TYPE = "text/plain"

_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"  # RFC 2045 token: any CHAR but SPACE, CTLs and tspecials
_TYPE = re.compile(rf"({_TOKEN})\s*/\s*({_TOKEN})")
_PLAIN_RUN = re.compile(r'[^"(;\\]+')  # what the Content-Type splitter copies without looking closer
#: RFC 2231 parameter names: ``name*`` (extended), ``name*N`` (a continuation), ``name*N*`` (both).
_STARRED = re.compile(r"([^*]+)\*(\d{1,3})?(\*)?")
_SPACE = " \t\r\n"
#: Everything up to a space (exactly :data:`_SPACE`: the regex ``\s`` would also stop at U+001C..U+001F and other
#: Unicode spaces the tokenizer does not skip, and the atom would be empty) or a special.
_ATOM = re.compile(r'[^ \t\r\n()<>\[\]:;@\\,."]+')


def _comment_end(text: str, at: int) -> int:
    """The index after the comment opening at ``text[at]``: nested comments by a depth count, quoted pairs skipped;
    an unterminated comment runs to the end."""
    depth, i, n = 0, at, len(text)
    while i < n:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def _quoted_end(text: str, at: int) -> tuple[int, str]:
    """The index after the quoted-string opening at ``text[at]``, and its content with quoted pairs undone."""
    out: list[str] = []
    i, n = at + 1, len(text)
    while i < n:
        char = text[i]
        if char == '"':
            return i + 1, "".join(out)
        if char == "\\":
            if i + 1 == n:  # a backslash that quotes nothing ends the (unterminated) string
                break
            out.append(text[i + 1])
            i += 2
            continue
        run = i
        while i < n and text[i] not in '"\\':
            i += 1
        out.append(text[run:i])
    return n, "".join(out)


# --- Content-Type -----------------------------------------------------------------------------------------------


def _split_parameters(value: str) -> list[tuple[str, str | None]]:
    """The field split at each ``;`` outside quoted strings, comments dropped: (piece, the content of its quoted
    string if it has one, quoted pairs undone)."""
    pieces: list[tuple[str, str | None]] = []
    buffer: list[str] = []
    quoted: str | None = None
    i, n = 0, len(value)
    while i < n:
        char = value[i]
        if char == ";":
            pieces.append(("".join(buffer), quoted))
            buffer, quoted = [], None
            i += 1
        elif char == '"':
            i, quoted = _quoted_end(value, i)
            buffer.append('""')
        elif char == "(":
            i = _comment_end(value, i)
            buffer.append(" ")
        elif char == "\\":
            buffer.append(value[i + 1 : i + 2])
            i += 2
        else:
            match = _PLAIN_RUN.match(value, i)
            assert match is not None
            buffer.append(match.group())
            i = match.end()
    pieces.append(("".join(buffer), quoted))
    return pieces


def _decode(data: bytes, charset: str) -> str:
    """``data`` in the charset a stranger named when it is one of :func:`_linear_charset`'s, else in US-ASCII."""
    return data.decode(charset if _linear_charset(charset) else "us-ascii", "replace")


@kept(64)
def _linear_charset(charset: str) -> bool:
    """UTF-8 and the single-byte charsets (ISO 8859, Windows code pages): what parameters are written in, and
    decoders linear in their input. Python's codec registry also holds transforms (rot13, base64, zlib) and
    punycode, whose decoder takes the square of its input's length (320 KB: 6.5 s)."""
    try:
        name = codecs.lookup(charset).name
    except (LookupError, ValueError):  # unknown, or a NUL in the name
        return False
    return name in ("ascii", "utf-8", "latin-1") or name.startswith(("iso8859-", "cp125"))


def _collapse(segments: Mapping[str, dict[int, tuple[str, bool]]]) -> Iterator[tuple[str, str]]:
    """RFC 2231 continuations (``name*0``, ``name*1*``...) joined, and extended values (``charset'lang'%XX``)
    decoded."""
    for name, parts in segments.items():
        ordered = [parts[k] for k in sorted(parts)]
        if not any(extended for _, extended in ordered):
            yield name, "".join(text for text, _ in ordered)
            continue
        charset = "us-ascii"
        data = bytearray()
        for index, (text, extended) in enumerate(ordered):
            if not extended:
                data += text.encode("utf-8", "replace")
                continue
            if index == 0 and text.count("'") >= 2:
                charset, _, text = text.split("'", 2)
                charset = charset or "us-ascii"
            data += unquote_to_bytes(text)
        yield name, _decode(bytes(data), charset)


def content_type(value: str | None) -> tuple[str, Mapping[str, str]]:
    """A Content-Type field's type (lower case; ``text/plain`` when absent or unreadable) and parameters (names
    lower case, the first of each name kept, RFC 2231 continuations and charsets undone)."""
    if value is None:
        return DEFAULT_TYPE, MappingProxyType({})
    pieces = _split_parameters(value)
    head = _TYPE.fullmatch(pieces[0][0].strip())
    kind = f"{head.group(1)}/{head.group(2)}".lower() if head else DEFAULT_TYPE
    params: dict[str, str] = {}
    continued: dict[str, dict[int, tuple[str, bool]]] = {}
    for piece, quoted in pieces[1:]:
        name, _, text = piece.partition("=")
        name = name.strip().lower()
        if not name:
            continue
        text = quoted if quoted is not None else text.strip()
        starred = _STARRED.fullmatch(name)
        if starred is None:
            params.setdefault(name, text)
            continue
        base, number, star = starred.groups()
        extended = star is not None or number is None
        continued.setdefault(base, {}).setdefault(int(number or 0), (text, extended))
    for name, text in _collapse(continued):
        params.setdefault(name, text)
    return kind, MappingProxyType(params)


# --- addresses --------------------------------------------------------------------------------------------------


def _address_tokens(text: str) -> Iterator[tuple[str, str]]:
    """("word", atom), ("quoted", content), ("literal", [domain literal]) and ("special", one of ``<>:;@,.``);
    white space and comments dropped."""
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in _SPACE:
            i += 1
        elif char == "(":
            i = _comment_end(text, i)
        elif char == '"':
            i, content = _quoted_end(text, i)
            yield "quoted", content
        elif char == "[":
            close = text.find("]", i)
            end = n if close < 0 else close + 1
            yield "literal", text[i:end]
            i = end
        elif char in "<>:;@,.":
            yield "special", char
            i += 1
        elif char in ")]\\":
            yield "special", char  # stray: makes the mailbox unreadable
            i += 1
        else:
            match = _ATOM.match(text, i)
            assert match is not None
            yield "word", match.group()
            i = match.end()


_NEEDS_QUOTES = re.compile(r'[^!#$%&\'*+\-/0-9=?A-Z^_`a-z{|}~.]')


def _addr_spec(tokens: list[tuple[str, str]]) -> str:
    """``local@domain`` from an addr-spec's tokens; a lone word as it is; "" when the tokens are no addr-spec."""
    out: list[str] = []
    previous = ""
    for kind, token in tokens:
        if kind in ("word", "quoted", "literal"):
            if previous == "word":
                return ""  # two words in a row: a display name without angle brackets, or junk
            out.append(f'"{token}"' if kind == "quoted" and (_NEEDS_QUOTES.search(token) or not token) else token)
            previous = "word"
        elif token in ".@":
            out.append(token)
            previous = token
        else:
            return ""
    spec = "".join(out)
    local, at, domain = spec.rpartition("@")
    if at and (not local or not domain or "@" in local.replace('"', "")):
        return "" if '"' not in local else spec
    return spec


def address_list(values: Iterable[str]) -> list[str]:
    """The addresses (addr-specs) of the mailboxes in these address fields, in order: ``Name <a@b>``, ``a@b``,
    groups (``team: a@b, c@d;``) and source routes (``<@relay:a@b>``) read; "" for a mailbox that cannot be read.
    Empty groups and empty list elements give nothing."""
    found: list[str] = []
    for value in values:
        current: list[tuple[str, str]] = []
        angle: list[tuple[str, str]] | None = None
        in_angle = broken = False

        def flush() -> None:
            nonlocal current, angle, broken
            tokens = angle if angle is not None else current
            if tokens or angle is not None:
                found.append("" if broken else _addr_spec(tokens))
            current, angle, broken = [], None, False

        for kind, token in _address_tokens(value):
            if in_angle:
                assert angle is not None
                if token == ">" and kind == "special":
                    in_angle = False
                elif token == ":" and kind == "special":
                    angle.clear()  # a source route (RFC 5322 4.4, obs-route): only the address after it counts
                elif token != "," or kind != "special":
                    angle.append((kind, token))
                continue
            if kind == "special" and token in ",;":
                flush()
            elif kind == "special" and token == ":":
                current = []  # a group's display name
            elif kind == "special" and token == "<":
                broken |= angle is not None  # a second <...> in one mailbox: which one is meant is anybody's guess
                in_angle, angle = True, []
            elif angle is not None:
                continue  # words after the closing ">" (obsolete trailing phrases) do not change the address
            else:
                current.append((kind, token))
        flush()
    return found


__all__ = ["DEFAULT_TYPE", "address_list", "content_type"]
