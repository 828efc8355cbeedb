"""The key=value log cannot be forged from inside a value (issue 19)."""

from __future__ import annotations

import io
import sys

import pytest
import structlog

from directmilter.log import configure, get_logger


def test_a_value_cannot_imitate_another_field_or_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Message-ID is a stranger's text: ``<x' event='mdn_sent>`` must not put ``event='mdn_sent'`` in the line
    (what an operator greps for), nor a line break. Quotes inside values are escaped, nested ones too."""
    previous = structlog.get_config()
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        configure("info")
        get_logger("test").info("report_received", message_id="<x' event='mdn_sent>\nevent='forged'",
                                results={"a'b@x.test": "processed"}, reason='recipient\'s "system"')
    finally:
        structlog.configure(**previous)  # the other tests' logging as it was, not this test's stream
    line = stream.getvalue()
    assert line.count("\n") == 1 and line.startswith("event='report_received' ")
    assert "event='mdn_sent'" not in line and "event='forged'" not in line and "a'b" not in line
    assert r"message_id='<x\x27 event=\x27mdn_sent>\nevent=\x27forged\x27'" in line
    assert r"reason='recipient\x27s \x22system\x22'" in line
