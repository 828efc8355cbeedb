"""Sealing and opening in worker processes, so a milter uses every core.

pymilter runs one thread per SMTP connection, and they share one GIL: with the crypto in those threads, a
two-core HISP runs at one core's speed. :class:`WorkerPool` sends :func:`~directmilter.agent.crypto.seal` and
:func:`~directmilter.agent.crypto.open_message` to a pool of processes. Each worker loads the same configuration
file itself (private keys never cross a process boundary); what crosses is bytes, certificates (as DER) and
errors. Workers are started with ``spawn`` (the milter process has threads, which ``fork`` would copy
half-way).

A message over 1 MiB crosses through a file rather than the pipe (pickling would hold it twice more in each
process): a 0600 file in the temporary folder (private to the service under systemd's PrivateTmp), removed by
the side that reads it, at once.

Fail closed: a worker that dies (the pool breaks) or does not answer in time is a
:class:`~directmilter.errors.TemporaryFailure`, so the message is deferred, and the next call gets a fresh pool.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

from directmilter.agent.crypto import Opened, open_message, register_pickling, seal
from directmilter.config import Config, load_config
from directmilter.errors import DirectMilterError, TemporaryFailure
from directmilter.log import get_logger

log = get_logger("directmilter.workers")

T = TypeVar("T")

_config: Config | None = None  # in a worker: the configuration it loaded

#: Messages larger than this go between the processes through a file.
SPOOL_OVER = 1 << 20


@dataclass(frozen=True)
class _Spooled:
    path: str


def _send(data: bytes) -> bytes | _Spooled:
    if len(data) <= SPOOL_OVER:
        return data
    descriptor, path = tempfile.mkstemp(prefix="directmilter-")  # mode 0600
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
    return _Spooled(path)


def _discard(item: bytes | _Spooled) -> None:
    """A spooled message the worker did not take (it died, or timed out) is not left behind."""
    if isinstance(item, _Spooled):
        Path(item.path).unlink(missing_ok=True)


def _discard_late(future: concurrent.futures.Future[Any]) -> None:
    """A result nobody waits for any more: remove the files it spooled (decrypted content among them)."""
    if future.cancelled() or future.exception() is not None:
        return
    result = future.result()
    for item in (result, *(c.message for c in getattr(result, "contents", ()))):
        _discard(item)


def _receive(item: bytes | _Spooled) -> bytes:
    if isinstance(item, bytes):
        return item
    try:
        return Path(item.path).read_bytes()
    finally:
        Path(item.path).unlink(missing_ok=True)


def _start_worker(path: str, log_level: str, json_logs: bool) -> None:
    global _config
    from directmilter.log import configure

    configure(log_level, json=json_logs)
    register_pickling()
    _config = load_config(Path(path))


def _seal(message: bytes | _Spooled, sender: str, signers: Sequence[x509.Certificate],
          recipients: Sequence[x509.Certificate]) -> bytes | _Spooled:
    assert _config is not None
    return _send(seal(_config, _receive(message), sender, signers, recipients))


def _open(message: bytes | _Spooled, recipients: Sequence[str]) -> Opened:
    assert _config is not None
    opened = open_message(_config, _receive(message), recipients)
    contents = tuple(replace(c, message=_send(c.message)) for c in opened.contents)  # type: ignore[arg-type]
    return replace(opened, contents=contents)


class WorkerPool:
    def __init__(self, config: Config, processes: int, *, timeout: float = 120.0, log_level: str = "info",
                 json_logs: bool = False) -> None:
        self.config = config
        self.processes = processes
        self.timeout = timeout
        self._initargs = (str(config.path), log_level, json_logs)
        register_pickling()
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    self.processes, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker, initargs=self._initargs)
            return self._pool

    def _call(self, what: str, function: Callable[..., T], *args: Any) -> T:
        pool = self._executor()
        try:
            future = pool.submit(function, *args)
            return future.result(self.timeout)
        except DirectMilterError:
            raise
        except concurrent.futures.TimeoutError:
            future.add_done_callback(_discard_late)  # what the worker spools after we gave up is removed too
            raise TemporaryFailure(f"{what}: no worker answered within {self.timeout:g} s") from None
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None  # the next call starts a fresh pool
            pool.shutdown(wait=False, cancel_futures=True)
            log.error("worker_pool_broken", what=what)
            raise TemporaryFailure(f"{what}: a crypto worker process died") from None
        except Exception as exc:  # a bug in a worker: defer, never accept
            raise TemporaryFailure(f"{what}: internal error in a crypto worker ({type(exc).__name__})") from exc

    def seal(self, message: bytes, sender: str, signers: Sequence[x509.Certificate],
             recipients: Sequence[x509.Certificate]) -> bytes:
        item = _send(message)
        try:
            return _receive(self._call("signing and encrypting", _seal, item, sender, tuple(signers),
                                       tuple(recipients)))
        finally:
            _discard(item)

    def open(self, message: bytes, recipients: Sequence[str]) -> Opened:
        item = _send(message)
        try:
            opened = self._call("decrypting and verifying", _open, item, tuple(recipients))
        finally:
            _discard(item)
        try:
            contents = tuple(replace(c, message=_receive(c.message)) for c in opened.contents)
        finally:
            for content in opened.contents:
                _discard(content.message)
        return replace(opened, contents=contents)

    def warm_up(self) -> None:
        """Start every worker now rather than on the first message."""
        pool = self._executor()
        for future in [pool.submit(_noop) for _ in range(self.processes)]:
            future.result(self.timeout)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _noop() -> None:
    return None

