"""Run ``directmilter run`` as a child process on a loopback port, for tests against a real Postfix."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from mta import Postfix, free_port


class Milterd:
    """The milter daemon under test: started as a separate process, killed (SIGKILL saves libmilter's 5 s)."""

    def __init__(self, config: Path, log: Path, port: int | None = None, unix: Path | None = None,
                 env: dict[str, str] | None = None, command: list[str] | None = None) -> None:
        self.config = config
        self.env = env
        self.command = command or [sys.executable, "-m", "directmilter"]  # or the installed package's program
        self.log = log
        self.unix = unix
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def postfix_spec(self) -> str:
        return f"unix:{self.unix}" if self.unix else f"inet:127.0.0.1:{self.port}"

    @property
    def milter_spec(self) -> str:
        return f"unix:{self.unix}" if self.unix else f"inet:{self.port}@127.0.0.1"

    def _listening(self) -> bool:
        from directmilter.milter.systemd import connectable

        return connectable(self.milter_spec)

    def start(self, timeout: float = 15) -> Milterd:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*self.command, "--log-level", "info", "run", "-c", str(self.config),
                 "--socket", self.milter_spec],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **self.env} if self.env else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"milter exited with {self.process.returncode}: {self.log.read_text()}")
            if self._listening():
                return self
            time.sleep(0.05)
        raise AssertionError(f"milter did not listen on {self.port}: {self.log.read_text()}")

    def signal(self, number: int) -> None:
        assert self.process is not None and self.process.poll() is None, "the milter is not running"
        os.kill(self.process.pid, number)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> Milterd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serving(postfix: Postfix, config: Path, log: Path) -> Iterator[Milterd]:
    """directmilter (``config``) as ``postfix``'s milter on every path (smtpd and non-SMTP); the milter starts
    first and Postfix after it, and both stop at the end."""
    with Milterd(config, log) as milter:
        postfix.use_milter(milter.postfix_spec)
        with postfix:
            yield milter
