"""Sealing and opening in worker processes, so a milter uses every core.

pymilter runs one thread per SMTP connection, and they share one GIL: with the crypto in those threads, a
two-core HISP runs at one core's speed. :class:`WorkerPool` sends :func:`~directmilter.agent.crypto.seal` and
:func:`~directmilter.agent.crypto.open_message` to a pool of processes. Each worker is given the milter's
configuration, the generation that owns the pool, when it starts (its private keys as PKCS#8 DER, down the pipe
to the worker and nowhere else); a worker that read the file itself could hold another generation's keys, or
none when the file no longer loads. What crosses per message is bytes, certificates (as DER) and errors.
Workers are started with ``spawn`` (the milter process has threads, which ``fork`` would copy half-way).

A message over 1 MiB crosses as a :class:`~directmilter.spool.Spool` file rather than through the pipe (pickling
would hold it twice more in each process), both ways: the worker reads the milter's spool a block at a time and
writes the new message into a spool of its own, which the caller then owns.

Fail closed: a worker that dies (the pool breaks) or does not answer in time is a
:class:`~directmilter.errors.TemporaryFailure`, so the message is deferred, and the next call gets a fresh pool.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from multiprocessing import resource_tracker
from typing import Any, TypeVar

from cryptography import x509

from directmilter import spool
from directmilter.agent.crypto import Opened, open_message, register_pickling, seal
from directmilter.budget import Deadline
from directmilter.config import Config
from directmilter.errors import DirectMilterError, TemporaryFailure
from directmilter.log import get_logger
from directmilter.spool import Message

log = get_logger("directmilter.workers")

T = TypeVar("T")

_config: Config | None = None  # in a worker: the configuration it loaded

def _crossing(message: Message) -> tuple[Message, bool]:
    """The message as it crosses to a worker, and whether a file was made for the crossing (to remove after)."""
    if isinstance(message, bytes) and len(message) > spool.SPOOL_OVER:
        return spool.collect((message,)), True
    return message, False


def _discard_late(future: concurrent.futures.Future[Any]) -> None:
    """A result nobody waits for any more: remove the files it spooled (decrypted content among them)."""
    if future.cancelled() or future.exception() is not None:
        return
    result = future.result()
    for item in (result, *(c.message for c in getattr(result, "contents", ()))):
        if isinstance(item, spool.Spool):
            spool.remove(item)


def _adopted(result: Any) -> Any:
    """What a worker spooled, now the caller's (:func:`directmilter.spool.adopt`)."""
    if isinstance(result, Opened):
        return replace(result, contents=tuple(replace(c, message=spool.adopt(c.message)) for c in result.contents))
    return spool.adopt(result) if isinstance(result, spool.Spool) else result


def _die_with(parent: int, every: float = 0.5) -> None:
    """A worker holds every private key: it must not outlive the milter that started it (SIGKILL, a crash, a
    SIGTERM that skipped the clean-up). When the parent is gone the worker is adopted by another process; then it
    exits. (PR_SET_PDEATHSIG would follow the thread that happened to start the worker, not the milter.)"""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _start_resource_tracker() -> None:
    """multiprocessing's resource tracker (which the pool's queues need) unblocks SIGINT and SIGTERM in the thread
    that starts it, and so in the pool's own threads started after: the milter, which leaves those signals to
    libmilter's signal thread, would then die of a SIGTERM instead of stopping cleanly. Start it here, keeping the
    thread's signal mask."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _start_worker(config: Config, log_level: str, json_logs: bool, parent: int = 0) -> None:
    global _config
    from directmilter.log import configure

    # The milter blocks the signals it waits for, and a spawned process inherits that mask through exec: a
    # worker must stay one that SIGTERM stops.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if parent:
        _die_with(parent)

    configure(log_level, json=json_logs)
    register_pickling()
    # The milter's own configuration, as it loaded it (not the file again: the file may have changed since, or
    # no longer load, and a worker must hold the keys and settings of the generation that uses it).
    _config = config


def _seal(message: Message, sender: str, signers: Sequence[x509.Certificate],
          recipients: Sequence[x509.Certificate], deadline: Deadline | None) -> Message:
    assert _config is not None
    return seal(_config, message, sender, signers, recipients, emit=spool.collect, deadline=deadline)


def _open(message: Message, recipients: Sequence[str], deadline: Deadline | None) -> Opened:
    assert _config is not None
    return open_message(_config, message, recipients, emit=spool.collect, deadline=deadline)


class WorkerPool:
    def __init__(self, config: Config, processes: int, *, timeout: float = 120.0, log_level: str = "info",
                 json_logs: bool = False, inline_below: int = 0) -> None:
        """Messages under ``inline_below`` bytes are handled in the calling thread: the round trip to a worker
        (pickling, three thread hand-offs, the pipe) would cost more than sealing or opening them."""
        self.config = config
        self.inline_below = inline_below
        self.processes = processes
        self.timeout = timeout
        register_pickling()  # before the configuration is pickled for the workers
        self._initargs = (config, log_level, json_logs, os.getpid())
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                _start_resource_tracker()
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    self.processes, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker, initargs=self._initargs)
            return self._pool

    def _call(self, what: str, deadline: Deadline | None, function: Callable[..., T], *args: Any) -> T:
        """Run ``function`` in a worker, waiting until ``deadline`` at most; the worker looks at the same deadline
        between its steps, so it stops soon after we stop waiting."""
        pool = self._executor()
        timeout = self.timeout if deadline is None else max(0.0, min(self.timeout, deadline.remaining()))
        try:
            future = pool.submit(function, *args, deadline)
            result: T = _adopted(future.result(timeout))
            return result
        except DirectMilterError:
            raise
        except concurrent.futures.TimeoutError:
            future.add_done_callback(_discard_late)  # what the worker spools after we gave up is removed too
            if deadline is not None:
                deadline.check(what)
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

    def seal(self, message: Message, sender: str, signers: Sequence[x509.Certificate],
             recipients: Sequence[x509.Certificate], deadline: Deadline | None = None) -> Message:
        if spool.size(message) < self.inline_below:
            return seal(self.config, message, sender, signers, recipients, deadline=deadline)
        item, made = _crossing(message)
        try:
            return self._call("signing and encrypting", deadline, _seal, item, sender, tuple(signers),
                              tuple(recipients))
        finally:
            if made:
                spool.remove(item)

    def open(self, message: Message, recipients: Sequence[str], deadline: Deadline | None = None) -> Opened:
        if spool.size(message) < self.inline_below:
            return open_message(self.config, message, recipients, deadline=deadline)
        item, made = _crossing(message)
        try:
            return self._call("decrypting and verifying", deadline, _open, item, tuple(recipients))
        finally:
            if made:
                spool.remove(item)

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

