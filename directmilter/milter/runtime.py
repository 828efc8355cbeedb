"""What the running milter works with, and how a reload replaces it without dropping a message in flight.

libmilter takes SIGHUP, SIGTERM and SIGINT for itself (SIGHUP stops it), so a reload has its own signal:
SIGUSR1 (``systemctl reload`` runs ``kill -USR1 $MAINPID``). All four are blocked in every thread from the start
(:func:`block_daemon_signals`): libmilter's signal thread waits for the first three and stops the milter so that
its clean-up runs, and one thread of ours waits for SIGUSR1, so none can kill the process or interrupt a
callback. A reload builds a complete
new configuration and agent (keys, anchors, trust bundles, caches) beside the old one and swaps them in one
assignment: a transaction already under way keeps the generation it started with, and the old agent is closed
only after the milter timeout has passed. A configuration that does not load is logged and the old one stays.
The milter socket and the tracking store are fixed for the life of the process (a restart changes them).
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from directmilter.agent import Agent
from directmilter.config import Config, load_config
from directmilter.delivery.service import Confirmations
from directmilter.errors import DirectMilterError
from directmilter.log import get_logger
from directmilter.metrics import Metrics
from directmilter.milter import systemd
from directmilter.postfix import AddressMaps, queued
from directmilter.tracking.store import open_store

log = get_logger("directmilter.runtime")

RELOAD_SIGNAL = signal.SIGUSR1


@dataclass(frozen=True)
class Generation:
    """One loaded configuration, the agent built from it, and Postfix's tables as that configuration names them."""

    config: Config
    agent: Agent
    maps: AddressMaps | None = None

    @classmethod
    def build(cls, config: Config) -> Generation:
        maps = AddressMaps(config.postfix) if config.postfix is not None else None
        return cls(config, Agent(config, workers=config.milter.worker_count()), maps)


class Runtime:
    def __init__(self, config: Config, *, socket_override: str | None = None) -> None:
        self.socket_override = socket_override
        self.current = Generation.build(config)
        self.current.agent.start_refreshing()
        self.confirmations = Confirmations(self.current.agent, config.notify, open_store(config.notify.tracking))
        self.confirmations.queue_ids = _queue_view(config)
        self.metrics = Metrics(lambda: (self.current.agent, self.confirmations.store))
        self._reloading = threading.Lock()

    def start(self) -> Runtime:
        self._warm_up(self.current.agent)
        self.confirmations.start()
        if self.current.config.milter.metrics is not None:
            self.metrics.serve(*self.current.config.milter.metrics)
        return self

    # --- reload --------------------------------------------------------------------------------------------------

    def reload(self) -> bool:
        """Load the configuration file again and switch to it; False (old one kept) when it does not load."""
        with self._reloading:
            old = self.current
            try:
                config = load_config(old.config.path)
                if self.socket_override:
                    config = replace(config, milter=replace(config.milter, socket=self.socket_override))
                generation = Generation.build(config)
            except DirectMilterError as exc:
                log.error("reload_failed", config=str(old.config.path), reason=exc.reason, keeping="previous")
                return False
            except Exception as exc:  # a defect of ours: the running generation stays, and so does this thread
                log.exception("reload_failed", config=str(old.config.path), keeping="previous",
                              reason=f"unexpected {type(exc).__name__}: {exc}")
                return False
            for name in ("socket", "metrics"):
                if getattr(config.milter, name) != getattr(old.config.milter, name):
                    log.warning("reload_ignored", key=f"[milter] {name}", reason="takes effect on restart")
            if config.notify.tracking != old.config.notify.tracking:
                log.warning("reload_ignored", key="[notify] tracking", reason="takes effect on restart")
            agent = generation.agent
            agent.start_refreshing()
            self._warm_up(agent)
            self.current = generation
            self.confirmations.agent = agent
            self.confirmations.queue_ids = _queue_view(config)
            self.confirmations.settings = replace(config.notify, tracking=old.config.notify.tracking)
            grace = threading.Timer(old.config.milter.timeout + 5, old.agent.close)
            grace.daemon = True
            grace.start()
            log.info("reloaded", config=str(config.path), domains=len(config.domains),
                     addresses=len(config.addresses))
            return True

    def watch_reload_signal(self) -> None:
        """Reload on every SIGUSR1 (blocked everywhere by :func:`block_daemon_signals`, so only this thread sees it)."""

        def wait() -> None:
            while True:
                signal.sigwait({RELOAD_SIGNAL})
                systemd.notify("RELOADING=1")
                try:
                    self.reload()
                finally:
                    systemd.notify("READY=1")

        threading.Thread(target=wait, name="reload", daemon=True).start()

    @staticmethod
    def _warm_up(agent: Agent) -> None:
        """Start the crypto workers in the background, so the first message does not wait for them."""
        warm_up = getattr(agent.context.crypto, "warm_up", None)
        if warm_up is not None:
            def run() -> None:
                try:
                    warm_up()
                except Exception as exc:  # the first message will try again and defer if it must
                    log.error("workers_not_started", error=f"{type(exc).__name__}: {exc}")

            threading.Thread(target=run, name="warm-up", daemon=True).start()

    def close(self) -> None:
        self.confirmations.stop()
        self.current.agent.close()


def _queue_view(config: Config) -> Callable[[], set[str]] | None:
    """How the confirmations see Postfix's queue (for dispatched MDNs); None when no Postfix is read."""
    settings = config.postfix
    return None if settings is None else functools.partial(queued, settings)


#: What the daemon is told through signals: libmilter's (stop) and ours (reload).
DAEMON_SIGNALS = frozenset({signal.SIGHUP, signal.SIGTERM, signal.SIGINT, RELOAD_SIGNAL})


def block_daemon_signals() -> None:
    """Block :data:`DAEMON_SIGNALS` in this thread and so in every thread started after: call first thing in
    the daemon. A thread started before libmilter's that left SIGTERM unblocked would take it with the default
    action, and the process would die without closing its workers or writing its pending confirmations."""
    signal.pthread_sigmask(signal.SIG_BLOCK, DAEMON_SIGNALS)
