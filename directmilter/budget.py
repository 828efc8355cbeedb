"""What one message may cost us: wall time, and certificate fetches in all and per host.

An unauthenticated sender chooses what a message carries: signer certificates whose AIA, CRL and OCSP URLs we
would fetch, slow ones if it likes, and content that takes time to open. The parsers are linear and the counts of
signers, certificates and RecipientInfos are capped where they are read (:mod:`directmilter.cms`); what is left
is bounded here, per message, and enforced where the work is done: the crypto (in a worker process or not) looks
at the :class:`Deadline` between its steps and stops once it has passed, and the validator's fetchers take each
download from the :class:`WorkBudget` before making it.

A message past its time is deferred (:class:`~directmilter.errors.WorkTimeExceeded`, 4.x.x): slowness is mostly a
dependency's (a publisher, a resolver), and a retry may well pass. A certificate whose path needs more fetches
than the message has left is not trusted (:class:`~directmilter.errors.FetchBudgetSpent`, 5.x.x): the sender made
it so, and retrying changes nothing. A refused fetch is never a revocation "soft failure": that would let a
message spend its fetches on decoys first and have its real signer's revocation check skipped.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

from directmilter.errors import WorkTimeExceeded

__all__ = ["Deadline", "WorkBudget"]


@dataclass(frozen=True)
class Deadline:
    """A moment on the system's monotonic clock (the same in every process of the host, so it crosses to a
    worker as it is), and how long the message was given, for the message."""

    at: float
    seconds: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds, seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def check(self, doing: str) -> None:
        """Raise :class:`WorkTimeExceeded` once the moment has passed; ``doing`` says what was about to start."""
        if self.remaining() <= 0:
            raise WorkTimeExceeded(f"{doing}: the message's time of {self.seconds:g} s is spent "
                                   "([limits] max_seconds)")


class WorkBudget:
    """One message's time and fetches. Thread-safe: the fetchers take from it on the validator's event loop."""

    def __init__(self, seconds: float, fetches: int, per_host: int) -> None:
        self.deadline = Deadline.after(seconds)
        self.fetches = fetches
        self.per_host = per_host
        self._lock = threading.Lock()
        self._by_host: Counter[str] = Counter()
        self._taken = 0
        #: Downloads refused so far; a validation compares the count before and after to know it was cut short.
        self.refused = 0
        self.first_refusal: str | None = None

    def take_fetch(self, host: str) -> str | None:
        """Count one download from ``host``; returns why it may not be made (and counts the refusal), or None."""
        with self._lock:
            if self._taken >= self.fetches:
                reason = f"the message's {self.fetches} certificate fetches are spent ([limits] max_fetches)"
            elif self._by_host[host] >= self.per_host:
                reason = (f"the message's {self.per_host} fetches from {host} are spent "
                          "([limits] max_fetches_per_host)")
            else:
                self._taken += 1
                self._by_host[host] += 1
                return None
            self.refused += 1
            self.first_refusal = self.first_refusal or reason
            return reason
