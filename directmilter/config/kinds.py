"""The kinds of value a configuration key holds: how each is read from TOML, checked, and shown.

A setting is declared once, in :mod:`directmilter.config.model`, with its kind; the loader, the error messages
(``file: [table].key: reason``), ``check-config``'s lines and the key list the documentation is checked against
all come from that declaration. A kind reads a value that is present (an absent key takes the declared default,
unless the kind says otherwise in :meth:`Kind.absent`) and raises :class:`Invalid` with the reason; the loader adds
the file and the key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from directmilter.keys.load import toml_type

__all__ = ["Invalid", "Kind", "Reading"]


class Invalid(Exception):
    """A value that is not what its key holds; ``at`` (``[index]``, for an item of an array) follows the key."""

    def __init__(self, reason: str, at: str = "") -> None:
        super().__init__(reason)
        self.reason, self.at = reason, at


class Reading(Protocol):
    """What a kind may ask of the loader: where relative paths start, and what Postfix's default would be."""

    def resolve(self, text: str) -> Path: ...


class Kind(Protocol):
    def read(self, value: object, reading: Reading) -> Any: ...

    def absent(self, default: Any, reading: Reading) -> Any: ...

    def show(self, value: Any) -> str: ...


def typed(value: object, kind: type[Any]) -> Any:
    """``value`` when it has exactly the TOML type ``kind`` (a boolean is no integer here)."""
    if type(value) is not kind:
        raise Invalid(f"must be {toml_type(kind())}, not {toml_type(value)}")
    return value


def strings(value: object) -> list[str]:
    """An array of non-empty strings."""
    if not isinstance(value, list):
        raise Invalid(f"must be an array of strings, not {toml_type(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise Invalid(f"must be a string, not {toml_type(item)}", f"[{index}]")
        if not item.strip():
            raise Invalid("must not be empty", f"[{index}]")
    return value


class _Base:
    def absent(self, default: Any, reading: Reading) -> Any:
        return default

    def show(self, value: Any) -> str:
        return "none" if value is None else str(value)


@dataclass(frozen=True)
class Flag(_Base):
    def read(self, value: object, reading: Reading) -> bool:
        flag: bool = typed(value, bool)
        return flag

    def show(self, value: Any) -> str:
        return "true" if value else "false"


@dataclass(frozen=True)
class Text(_Base):
    """A string; ``check`` returns why a value is refused (None: accepted)."""

    check: Callable[[str], str | None] | None = None

    def read(self, value: object, reading: Reading) -> str:
        text: str = typed(value, str)
        if self.check is not None and (problem := self.check(text)) is not None:
            raise Invalid(problem)
        return text

    def show(self, value: Any) -> str:
        return "none" if value is None else repr(value) if value == "" else str(value)


@dataclass(frozen=True)
class Choice(_Base):
    options: tuple[str, ...]

    def read(self, value: object, reading: Reading) -> str:
        text: str = typed(value, str)
        if text not in self.options:
            raise Invalid(f"{text!r}: expected one of {', '.join(self.options)}")
        return text


@dataclass(frozen=True)
class Positive(_Base):
    """A number above zero; ``whole``: kept as an int (a fractional value is cut)."""

    whole: bool = False

    def read(self, value: object, reading: Reading) -> float | int:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise Invalid(f"must be a positive number, not {value!r}")
        return int(value) if self.whole else float(value)

    def show(self, value: Any) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Whole(_Base):
    """An integer from ``low`` to ``high``; ``refusal`` says why another is refused (``{value}`` in it)."""

    low: int
    high: int | None
    refusal: str

    def read(self, value: object, reading: Reading) -> int:
        number: int = typed(value, int)
        if number < self.low or (self.high is not None and number > self.high):
            raise Invalid(self.refusal.format(value=number))
        return number


@dataclass(frozen=True)
class Octal(_Base):
    """A file mode written as an octal string ("0660")."""

    def read(self, value: object, reading: Reading) -> int:
        text: str = typed(value, str)
        if not re.fullmatch(r"0?[0-7]{3}", text):
            raise Invalid(f"{text!r}: an octal mode such as \"0660\"")
        return int(text, 8)

    def show(self, value: Any) -> str:
        return f"{value:04o}"


@dataclass(frozen=True)
class Strings(_Base):
    """An array of non-empty strings; ``check`` returns why an item is refused."""

    check: Callable[[str], str | None] | None = None

    def read(self, value: object, reading: Reading) -> tuple[str, ...]:
        items = strings(value)
        for index, item in enumerate(items):
            if self.check is not None and (problem := self.check(item)) is not None:
                raise Invalid(problem, f"[{index}]")
        return tuple(items)

    def show(self, value: Any) -> str:
        return ", ".join(value) or "none"


@dataclass(frozen=True)
class Networks(_Base):
    """IP networks or addresses (an address is its /32 or /128)."""

    def read(self, value: object, reading: Reading) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        found = []
        for index, text in enumerate(strings(value)):
            try:
                found.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise Invalid(f"{text!r} is not an IP address or network (e.g. 10.1.0.0/16 or ::1/128)",
                              f"[{index}]") from None
        return tuple(found)

    def show(self, value: Any) -> str:
        return ", ".join(str(n) for n in value) or "none"


@dataclass(frozen=True)
class HostPort(_Base):
    """``HOST:PORT`` (an IPv6 host in brackets); empty: none. ``what`` names the listener in the refusal."""

    what: str = ""

    def read(self, value: object, reading: Reading) -> tuple[str, int] | None:
        text: str = typed(value, str)
        if not text:
            return None
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise Invalid(f"{text!r}: expected HOST:PORT{' ' + self.what if self.what else ''}")
        return host.strip("[]"), int(port)

    def show(self, value: Any) -> str:
        return "none" if value is None else f"{value[0]}:{value[1]}"


_SERVER = re.compile(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([0-9.]+):(\d+)|([0-9a-fA-F:.]+)")


@dataclass(frozen=True)
class Servers(_Base):
    """DNS servers: IP addresses, each optionally with ``:port`` (53)."""

    def read(self, value: object, reading: Reading) -> tuple[tuple[str, int], ...]:
        servers = []
        for index, text in enumerate(strings(value)):
            match = _SERVER.fullmatch(text.strip())
            try:
                if match is None:
                    raise ValueError(text)
                host = match.group(1) or match.group(3) or match.group(5)
                servers.append((str(ipaddress.ip_address(host)), int(match.group(2) or match.group(4) or "53")))
            except ValueError:
                raise Invalid(f"{text!r}: an IP address, optionally :port", f"[{index}]") from None
        return tuple(servers)

    def show(self, value: Any) -> str:
        return ", ".join(f"{host}:{port}" for host, port in value) or "the system resolver"


@dataclass(frozen=True)
class Folder(_Base):
    """A path (relative to the configuration's folder); empty: none."""

    def read(self, value: object, reading: Reading) -> Path | None:
        text: str = typed(value, str)
        return reading.resolve(text) if text else None


@dataclass(frozen=True)
class Algorithm(_Base):
    """One algorithm name of ``allowed`` (case-insensitive); ``forbidden`` says why a known-bad one is refused."""

    allowed: tuple[str, ...]
    forbidden: Callable[[str], str | None] = lambda name: None

    def read(self, value: object, reading: Reading) -> str:
        return self.name(typed(value, str))

    def name(self, value: str) -> str:
        name = value.strip().lower()
        reason = self.forbidden(name)
        if reason is not None:
            raise Invalid(f"{value!r} is refused: {reason}; use one of {', '.join(self.allowed)}")
        if name not in self.allowed:
            raise Invalid(f"unknown algorithm {value!r}; use one of {', '.join(self.allowed)}")
        return name


@dataclass(frozen=True)
class Algorithms(_Base):
    """A non-empty set of :class:`Algorithm` names."""

    one: Algorithm

    def read(self, value: object, reading: Reading) -> frozenset[str]:
        names = strings(value)
        if not names:
            raise Invalid(f"must not be empty; use some of {', '.join(self.one.allowed)}")
        found = set()
        for index, name in enumerate(names):
            try:
                found.add(self.one.name(name))
            except Invalid as exc:
                raise Invalid(exc.reason, f"[{index}]") from None
        return frozenset(found)

    def show(self, value: Any) -> str:
        return ", ".join(sorted(value))


def matching(pattern: str, refusal: str) -> Callable[[str], str | None]:
    """A check that refuses a text ``pattern`` does not match entirely; ``refusal`` may name it as ``{value!r}``."""
    compiled = re.compile(pattern)

    def check(text: str) -> str | None:
        return None if compiled.fullmatch(text) else refusal.format(value=text)

    return check


def prefixed(prefixes: Sequence[str], refusal: str) -> Callable[[str], str | None]:
    def check(text: str) -> str | None:
        return None if text.startswith(tuple(prefixes)) else refusal.format(value=text)

    return check


@dataclass(frozen=True)
class PostfixDirectory(_Base):
    """Postfix's configuration directory: as set ("none": no Postfix), else ``default`` when it has a main.cf."""

    default: Path

    def read(self, value: object, reading: Reading) -> Path | None:
        text: str = typed(value, str)
        if text == "none":
            return None
        if not text:
            return self.absent(None, reading)
        directory = reading.resolve(text)
        if not (directory / "main.cf").is_file():
            raise Invalid(f"{directory}: no main.cf there")
        return directory

    def absent(self, default: Any, reading: Reading) -> Path | None:
        return self.default if (self.default / "main.cf").is_file() else None
