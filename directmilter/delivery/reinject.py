"""Queueing a finished message into Postfix through its re-injection listener, so that only we can.

Notifications are secured (or, for the hosted sender's own local DSNs, meant for this host only) before they get
here. The listener must not process them again, but it must not take mail from anyone else either: every local
account can connect to a loopback port, and a milter-free listener would put their unsigned mail into Direct
mailboxes or relay their plaintext. So the listener runs the milter with ``{daemon_name}`` =
:data:`DAEMON_NAME` (``-o milter_macro_daemon_name=DIRECTMILTER-REINJECT``), and each message we queue carries a
seal, :data:`SEAL_FIELD`: an HMAC, under a key that never leaves this process, of its envelope and body. The
milter accepts a sealed message as it is (removing the seal) and refuses everything else on that listener.
Once Postfix has accepted the message it owns the retries; a refusal or an unreachable listener is a
:class:`~directmilter.errors.TemporaryFailure` for the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import smtplib
from collections.abc import Sequence

from directmilter.errors import TemporaryFailure

#: The {daemon_name} Postfix gives the milter on the re-injection listener (master.cf.directmilter).
DAEMON_NAME = "DIRECTMILTER-REINJECT"
#: The header field that carries the seal; removed by the milter before Postfix queues the message.
SEAL_FIELD = "X-Directmilter-Queued"
#: The seal key: made at start, held by this process only (the milter that verifies is the process that queues).
_KEY = secrets.token_bytes(32)
#: Blanks and line ends do not count: SMTP and Postfix may change line ends and the final one.
_BLANKS = b" \t\r\n"


def seal(sender: str, recipients: Sequence[str], body: bytes) -> str:
    """The seal of a message: its envelope (as sent on the wire) and its body, under this process's key."""
    mac = hmac.new(_KEY, digestmod=hashlib.sha256)
    mac.update("\0".join([sender.lower(), *sorted(r.lower() for r in recipients)]).encode("utf-8", "replace"))
    mac.update(b"\0" + hashlib.sha256(body.translate(None, _BLANKS)).digest())
    return mac.hexdigest()


def is_sealed(token: str, sender: str, recipients: Sequence[str], body: bytes) -> bool:
    """Whether ``token`` is our seal of exactly this envelope and body."""
    return hmac.compare_digest(token.strip(), seal(sender, recipients, body))


def _body(message: bytes) -> bytes:
    for end in (b"\r\n\r\n", b"\n\n"):
        cut = message.find(end)
        if cut >= 0:
            return message[cut + len(end):]
    return b""


def reinject(listener: tuple[str, int], sender: str, recipients: Sequence[str], message: bytes,
             *, timeout: float = 30.0) -> None:
    host, port = listener
    sealed = f"{SEAL_FIELD}: {seal(sender, recipients, _body(message))}\r\n".encode() + message
    try:
        with smtplib.SMTP(host, port, local_hostname="directmilter.localhost", timeout=timeout) as client:
            refused = client.sendmail(sender, list(recipients), sealed)
    except (TimeoutError, smtplib.SMTPException, OSError) as exc:
        raise TemporaryFailure(f"re-injection to {host}:{port} failed: {exc}") from exc
    if refused:
        raise TemporaryFailure(f"re-injection to {host}:{port}: recipients refused: {sorted(refused)}")
