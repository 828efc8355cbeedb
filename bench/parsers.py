"""Worst-case input for each parser a stranger reaches before any signature is checked, at growing sizes: the cost
per MiB stays flat when the parser is linear in its input (issue 19). Run: .venv/bin/python bench/parsers.py

Each row is the median of a few runs; "growth" is the cost of the largest input over the smallest, divided by how
much larger it is (1.0: linear; a parser quadratic in its input would show the size ratio itself, here 16).
The BER rows at 1 MiB hold more than 100,000 segments or elements, which are refused (``ber.MAX_PIECES``): their
figure is the cost of that refusal. The standard library's Content-Type reader is shown on the first shape, at the
smallest size only (it takes the square of the length: the issue's 540 KB field cost it 78 s).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from email.message import Message

from common import KIB, MIB, machine, timed

from directmilter.cms import ber, der
from directmilter.cms.fields import address_list, content_type
from directmilter.cms.mime import parse_entity, validate_structure
from directmilter.errors import DirectMilterError

SIZES = [64 * KIB, 256 * KIB, 1 * MIB]


def _swallow(action: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        try:
            return action()
        except (DirectMilterError, ValueError) as exc:  # a refusal is as good an outcome as a parse: its cost counts
            return exc
    return run


def _segments(data: bytes) -> int:
    """The BER walk of a constructed OCTET STRING (the shape of an encrypted or signed content), to its end."""
    return sum(end - start for start, end in ber.octets(data, ber.element(data, 0, len(data))))


def _multipart(n: int) -> bytes:
    """A multipart of empty parts, to the size: the delimiter scan and the part headers, MAX_HEADERS apart."""
    part = b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n"
    return b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + part * (n // len(part)) + b"--b--\r\n"


def _stdlib_content_type(value: str) -> object:
    message = Message()
    message["Content-Type"] = value
    return message.get_params()


SHAPES: list[tuple[str, Callable[[int], object], Callable[[object], object]]] = [
    ("Content-Type: semicolons in quotes", lambda n: 'multipart/signed; boundary="' + ";" * n + '"', content_type),
    ("Content-Type: escaped quotes", lambda n: 'multipart/signed; boundary="' + '\\"' * (n // 2) + '"',
     content_type),
    ("Content-Type: parameters", lambda n: "text/plain" + '; a="b"' * (n // 7), content_type),
    ("Content-Type: unterminated quotes", lambda n: "text/plain; " + 'x="' * (n // 3), content_type),
    ("Content-Type: nested comments", lambda n: "text/plain; " + "(" * n, content_type),
    ("Content-Type: punycode parameter", lambda n: "text/plain; t*=punycode''a-" + "ab" * (n // 2), content_type),
    ("From: nested comments", lambda n: "(" * n + " a@b.test", lambda t: address_list([t])),
    ("From: quoted pairs", lambda n: '"' + "\\x" * (n // 2) + '"@b.test', lambda t: address_list([t])),
    ("To: many mailboxes", lambda n: "<a@b.test>," * (n // 11), lambda t: address_list([t])),
    ("header: one folded field", lambda n: b"Subject: x" + b"\r\n y" * (n // 4) + b"\r\n\r\nbody",
     lambda d: parse_entity(d)),
    ("header: lines past the limit", lambda n: b"X: y\r\n" * (n // 6) + b"\r\nbody", lambda d: parse_entity(d)),
    ("BER: OCTET STRING, nested segments", lambda n: b"\x24\x80" * ber.MAX_NESTING + b"\x04\x01x" * (n // 3)
     + b"\x00\x00" * ber.MAX_NESTING, _segments),
    ("BER: SET of one-byte elements", lambda n: der.tlv(0x31, b"\x05\x00" * (n // 2)),
     lambda d: ber.children(d, ber.element(d, 0, len(d)), 0x31, "SET")),
    ("MIME: many parts", lambda n: _multipart(n), lambda d: validate_structure(parse_entity(d))),
    ("BER: OCTET STRING, one-byte segments", lambda n: b"\x24\x80" + b"\x04\x01x" * (n // 3) + b"\x00\x00",
     _segments),
    ("base64 body of a secured message", lambda n: base64.encodebytes(b"\x00" * (n * 3 // 4)),
     lambda d: base64.b64decode(d)),
]


def main() -> int:
    print(f"# bench/parsers.py on {machine()}")
    print(f"{'input':<36}" + "".join(f"{f'{s // KIB} KiB ms':>12}" for s in SIZES) + f"{'ms/MiB':>9}{'growth':>8}")
    worst = 0.0
    for name, make, parse in SHAPES:
        costs = []
        for size in SIZES:
            data = make(size)
            costs.append(timed(_swallow(lambda: parse(data)), 3))  # noqa: B023
        growth = (costs[-1] / costs[0]) / (SIZES[-1] / SIZES[0])
        worst = max(worst, growth)
        print(f"{name:<36}" + "".join(f"{c * 1000:12.2f}" for c in costs)
              + f"{costs[-1] * 1000 * MIB / SIZES[-1]:9.1f}{growth:8.2f}")
    sample = SHAPES[0][1](SIZES[0])
    print(f"(standard library, {SHAPES[0][0]}, {SIZES[0] // KIB} KiB: "
          f"{timed(lambda: _stdlib_content_type(sample), 1) * 1000:.0f} ms)")  # type: ignore[arg-type]
    print(f"worst growth {worst:.2f} (1.0 is linear; {SIZES[-1] // SIZES[0]} would be quadratic)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
