"""What the benchmarks share: a PKI made at run time (the test suite's), messages of a given size, timing."""

from __future__ import annotations

import base64
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import World, build_world  # noqa: E402  (the tests' PKI and configuration writer)

ALICE, BOB = "alice@direct.a.test", "bob@direct.b.test"
KIB = 1024
MIB = 1024 * KIB


def world() -> World:
    return build_world(Path(tempfile.mkdtemp(prefix="directmilter-bench-")))


def message(size: int, *, sender: str = ALICE, to: str = BOB, tag: str = "1") -> bytes:
    """A clinical-looking message of about ``size`` bytes: a text part and a base64 PDF-ish attachment."""
    head = (f"From: {sender}\r\nTo: {to}\r\nSubject: bench {tag}\r\nMessage-ID: <bench-{tag}-{os.urandom(6).hex()}"
            f"@direct.a.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n").encode()
    text = b"--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nDischarge summary attached.\r\n"
    room = max(0, size - len(head) - len(text) - 200)
    raw = os.urandom(room * 3 // 4)
    encoded = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    attachment = (b"--b1\r\nContent-Type: application/pdf; name=\"summary.pdf\"\r\n"
                  b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--b1--\r\n")
    return head + text + attachment


def timed(action: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` runs (after one warm-up run)."""
    action()
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def size_name(size: int) -> str:
    return f"{size // MIB} MiB" if size >= MIB else f"{size // KIB} KiB"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    return f"{os.cpu_count()} cores, {cpu}, Python {sys.version.split()[0]}"
