"""The baseline for bench/throughput.py: a pymilter milter that looks at every message and changes nothing.

Same library, same threads as directmilter. It receives the sender and the body; pymilter asks the MTA not to send
what a milter has no callback for (connect, recipients, header fields), so this is the cheapest a pymilter milter
can be, and the ratio to it counts, besides directmilter's own work, the protocol steps directmilter needs and this
one skips. Run: python bench/passthrough_milter.py SOCKET (libmilter's form: inet:PORT@127.0.0.1 or unix:/path)
"""

from __future__ import annotations

import os
import sys
from typing import Any

import Milter


class PassThrough(Milter.Base):  # type: ignore[misc]
    def __init__(self) -> None:
        self.size = 0

    @Milter.noreply  # type: ignore[misc]
    def body(self, chunk: bytes) -> int:
        self.size += len(chunk)
        return int(Milter.CONTINUE)

    def eom(self) -> int:
        return int(Milter.ACCEPT)

    def envfrom(self, *args: Any) -> int:
        self.size = 0
        return int(Milter.CONTINUE)


if __name__ == "__main__":
    Milter.factory = PassThrough
    os.umask(0)  # a unix socket Postfix's user may connect to (the bench's scratch folder is private to the run)
    Milter.runmilter("passthrough", sys.argv[1], timeout=600)
