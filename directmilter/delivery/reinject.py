"""Queueing a finished message into Postfix through its milter-free loopback listener.

Notifications are secured by the agent before they get here, so the listener must not run milters again
(``-o smtpd_milters= -o receive_override_options=no_milters``). Once Postfix has accepted the message it owns the
retries; a refusal or an unreachable listener is a :class:`~directmilter.errors.TemporaryFailure` for the caller.
"""

from __future__ import annotations

import smtplib
from collections.abc import Sequence

from directmilter.errors import TemporaryFailure


def reinject(listener: tuple[str, int], sender: str, recipients: Sequence[str], message: bytes,
             *, timeout: float = 30.0) -> None:
    host, port = listener
    try:
        with smtplib.SMTP(host, port, local_hostname="directmilter.localhost", timeout=timeout) as client:
            refused = client.sendmail(sender, list(recipients), message)
    except (TimeoutError, smtplib.SMTPException, OSError) as exc:
        raise TemporaryFailure(f"re-injection to {host}:{port} failed: {exc}") from exc
    if refused:
        raise TemporaryFailure(f"re-injection to {host}:{port}: recipients refused: {sorted(refused)}")
