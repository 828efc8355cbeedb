"""The baseline for bench/throughput.py: a pymilter milter that looks at every message and changes nothing.

It receives the envelope, headers and body like directmilter does (same library, same threads), so the ratio to
it measures what directmilter's own work costs. Run: python bench/passthrough_milter.py SOCKET (libmilter's form:
inet:PORT@127.0.0.1 or unix:/path)
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
