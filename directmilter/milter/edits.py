"""The header edits that turn the message Postfix holds into the one the agent produced.

Milter edits are limited to deleting, changing and appending header fields and replacing the body; this module
computes the smallest such list: headers the new message keeps verbatim stay where they are, the others are
deleted (last occurrence first, so the indexes stay valid) and the new ones appended in order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from directmilter.cms.mime import parse_entity


@dataclass(frozen=True)
class HeaderEdit:
    """Delete occurrence ``index`` (1-based) of ``name`` when ``value`` is None, else append ``name: value``."""

    name: str
    value: str | None
    index: int = 0


def header_fields(head: bytes) -> list[tuple[str, str]]:
    """The header fields of a header block as (name, value) pairs, the way a milter sees them."""
    fields = []
    for header in parse_entity(head).headers:
        name, _, value = header.raw.decode("utf-8", "surrogateescape").partition(":")
        fields.append((name, value.removeprefix(" ").removesuffix("\r\n")))
    return fields


def header_edits(original: list[tuple[str, str]], new: list[tuple[str, str]]) -> list[HeaderEdit]:
    wanted = Counter((name.lower(), value) for name, value in new)
    deletions: list[HeaderEdit] = []
    seen: Counter[str] = Counter()
    kept: Counter[tuple[str, str]] = Counter()
    for name, value in original:
        key = (name.lower(), value)
        seen[name.lower()] += 1
        if kept[key] < wanted[key]:
            kept[key] += 1
        else:
            deletions.append(HeaderEdit(name, None, seen[name.lower()]))
    additions = []
    for name, value in new:
        key = (name.lower(), value)
        if kept[key] > 0:
            kept[key] -= 1
        else:
            additions.append(HeaderEdit(name, value))
    return [*reversed(deletions), *additions]
