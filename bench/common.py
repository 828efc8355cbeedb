"""What the benchmarks share: a PKI made at run time (the test suite's), messages of a given size, timing."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import World, attached_message, build_world  # noqa: E402  (the tests' PKI, configuration, messages)

message = attached_message

ALICE, BOB = "alice@direct.a.test", "bob@direct.b.test"
KIB = 1024
MIB = 1024 * KIB


def world() -> World:
    return build_world(Path(tempfile.mkdtemp(prefix="directmilter-bench-")))


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
