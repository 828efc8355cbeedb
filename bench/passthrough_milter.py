"""The baseline for bench/throughput.py: a pymilter milter that looks at every message and changes nothing.

It receives the envelope, headers and body like directmilter does (same library, same threads), so the ratio to
it measures what directmilter's own work costs. Run: python bench/passthrough_milter.py PORT
"""

from __future__ import annotations

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
    Milter.runmilter("passthrough", f"inet:{sys.argv[1]}@127.0.0.1", timeout=600)
