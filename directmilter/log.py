"""Structured logging: one event per decision, key=value or JSON, never message content.

Events carry addresses, queue ids, Message-IDs, certificate subjects/serials and reasons. Bodies, Subjects and
any other header content are health data and are never passed to the logger (the tests grep for a canary).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


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
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
