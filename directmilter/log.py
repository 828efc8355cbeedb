"""Structured logging: one event per decision, key=value or JSON, never message content.

Events carry addresses, queue ids, Message-IDs, certificate subjects/serials and reasons. Bodies, Subjects and
any other header content are health data and are never passed to the logger (the tests grep for a canary).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


class _Quoted(str):
    """A string that renders with no quote inside its quotes: Message-IDs, addresses and reasons come from
    strangers, and ``<x' event='mdn_sent>`` would otherwise read as a record of its own to ``grep``."""

    __slots__ = ()

    def __repr__(self) -> str:
        # repr escapes control characters and backslashes; the quotes are set aside first, so it escapes none
        marked = str(self).replace("\x01", "\x02").replace("'", "\x01").replace('"', "\x02")
        return "'" + str.__repr__(marked)[1:-1].replace("\\x01", "\\x27").replace("\\x02", "\\x22") + "'"


def _quoted(value: Any) -> Any:
    if isinstance(value, str):
        return _Quoted(value)
    if isinstance(value, dict):
        return {_quoted(k): _quoted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_quoted(v) for v in value] if isinstance(value, list) else tuple(map(_quoted, value))
    return value


def _no_quotes_in_values(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    return {key: _quoted(value) for key, value in event.items()}


def configure(level: str = "info", *, json: bool = False) -> None:
    """Send structlog events to stderr at ``level``; call once at program start."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.processors.KeyValueRenderer(
        key_order=["event"], sort_keys=False
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *(() if json else (_no_quotes_in_values,)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
