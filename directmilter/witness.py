"""Evidence that Postfix kept a message we accepted: a witness recipient whose copy comes back to us.

A milter's "accept" at end of message is not Postfix's: a milter after ours may still refuse the message, or the
queue file may fail to be written, and the milter protocol tells the earlier milters nothing of it (no abort
follows; tried on Postfix 3.7). A processed MDN sent on our accept then confirms a message the HISP refused, and
the replay record made the client's retry of it a "replay": dropped, the message lost.

So at end of message we add one recipient, ``commit+<token>@directmilter.invalid``, which Postfix's transport_maps
sends to its own re-injection listener (``directmilter.invalid smtp:[127.0.0.1]:10026``): it is there, and only
there, once Postfix has the message in its queue. Our milter on that listener recognises the address at RCPT
time, releases the MDNs and confirms the replay record of that message, and discards the witness transaction
(Postfix sees a successful delivery: no bounce, no DSN). The token is 128 random bits: nobody can forge a
witness for a message they did not see. A witness that never comes means Postfix refused the message after us:
a copy of the message arriving meanwhile waits for the witness up to :data:`SETTLE` (it is a replay if Postfix
kept the first, the only copy if Postfix refused it: neither delivering nor dropping it at once is safe), and is
delivered if none came; the MDNs of a message without its witness are dropped after :data:`WAIT`.
"""

from __future__ import annotations

import re
import secrets

__all__ = ["DOMAIN", "SETTLE", "WAIT", "address", "new_token", "token_of"]

#: The reserved domain (RFC 2606) Postfix's transport_maps must route to the re-injection listener.
DOMAIN = "directmilter.invalid"
#: Seconds after which a message whose witness has not come is taken as refused by Postfix after us.
WAIT = 3600.0
#: Seconds a copy of a message whose witness has not come yet waits for it: a queued message's witness takes
#: well under a second on a loopback; none by then, the earlier copy was refused and this one is its retry. A
#: witness slower than this (a Postfix queue far behind) costs a duplicate delivery, never a lost message.
SETTLE = 10.0

_ADDRESS = re.compile(r"<?commit\+([0-9a-f]{32})@directmilter\.invalid>?", re.IGNORECASE)


def new_token() -> str:
    return secrets.token_hex(16)


def address(token: str) -> str:
    return f"commit+{token}@{DOMAIN}"


def token_of(recipient: str) -> str | None:
    """The token of a witness address (as RCPT TO spells it), or None for any other address."""
    found = _ADDRESS.fullmatch(recipient.strip())
    return found.group(1).lower() if found else None
