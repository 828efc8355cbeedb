"""What happens around a message once the agent has decided: confirmations, tracking and replays (AS 3).

The milter calls :meth:`Confirmations.after_outgoing` and :meth:`Confirmations.after_incoming` at end of message.
Processed MDNs are built, secured by the agent like any Direct message (signed by the recipient's certificate,
encrypted to the original sender's) and queued through Postfix's milter-free listener by a worker thread, a
moment after the milter has accepted the message. Reports are never answered with reports, and nothing is ever
sent unsecured to another party. A sweeper thread tells hosted senders, with a DSN, about recipients whose
confirmation did not arrive in time.
"""

from __future__ import annotations

import functools
import hashlib
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from directmilter.agent import Agent, MessageEnvelope
from directmilter.cms.mime import parse_entity
from directmilter.config import NotifySettings
from directmilter.delivery.reinject import reinject
from directmilter.errors import DirectMilterError
from directmilter.log import get_logger
from directmilter.notify import (
    FINAL_DESTINATION_DELIVERY,
    Disposition,
    Notification,
    build_dsn,
    build_mdn,
    is_notification,
    mdn_target,
    parse_notification,
    wants_dispatched,
)
from directmilter.tracking.store import TrackingStore

log = get_logger("directmilter.delivery")

_KINDS = {"processed": "processed", "dispatched": "dispatched", "failed": "failed", "delivered": "dispatched"}


@dataclass(frozen=True)
class IncomingDecision:
    """Who still gets the message (replays removed), and whether it was a report consumed by tracking.

    The replay fingerprints are recorded when the decision is made; the milter calls :meth:`Confirmations.undo`
    if it then fails to deliver (so the client's retry is not mistaken for a replay and lost), and
    :meth:`Confirmations.confirm` once the message is accepted, which is when MDNs may be queued.
    """

    deliver_to: tuple[str, ...]
    consumed: bool = False
    delivered: bytes = b""
    sender: str = ""
    message_id: str | None = None
    digest: str = ""


class Confirmations:
    def __init__(self, agent: Agent, settings: NotifySettings, store: TrackingStore) -> None:
        self.agent = agent
        self.settings = settings
        self.store = store
        self.reporting = settings.reporting_mta or socket.getfqdn()
        self._jobs: queue.Queue[tuple[float, Callable[[], None]] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> Confirmations:
        for target, name in ((self._work, "confirmations"), (self._sweep, "tracking-sweeper")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._jobs.put(None)
        for thread in self._threads:
            thread.join(10)
        self.store.close()

    # --- called by the milter ------------------------------------------------------------------------------------

    def after_outgoing(self, message: bytes, sender: str, recipients: Sequence[str]) -> None:
        headers = parse_entity(message)
        message_id = headers.get("message-id")
        if message_id is None or is_notification(headers):
            return  # our own reports are not tracked, and a message without an id cannot be matched
        self.store.record_outgoing(message_id, sender, recipients, wants_dispatched=wants_dispatched(headers),
                                   now=time.time())

    def screen_incoming(self, delivered: bytes, sender: str, recipients: Sequence[str]) -> IncomingDecision:
        """Consume reports about tracked mail; leave out recipients who already received this very message."""
        headers = parse_entity(delivered)
        report = parse_notification(delivered)
        if report is not None or is_notification(headers):
            return IncomingDecision(tuple(recipients), self._record_report(report))
        message_id = headers.get("message-id")
        digest = hashlib.sha256(delivered).hexdigest()
        fresh = list(recipients)
        if message_id is not None:
            fresh = [r for r in recipients if self.store.first_delivery(message_id, r, digest, time.time())]
            for replay in set(recipients) - set(fresh):
                log.warning("replay", message_id=message_id, recipient=replay, sender=sender)
        return IncomingDecision(tuple(fresh), False, delivered, sender, message_id, digest)

    def undo(self, decision: IncomingDecision) -> None:
        if decision.message_id is not None:
            for recipient in decision.deliver_to:
                self.store.forget_delivery(decision.message_id, recipient, decision.digest)

    def confirm(self, decision: IncomingDecision) -> None:
        """Queue the MDNs of an accepted message (never for a report: reports are not answered, AS 3.0)."""
        if decision.consumed or not decision.delivered or not self.settings.mdn:
            return
        headers = parse_entity(decision.delivered)
        target = mdn_target(envelope_sender=decision.sender, headers=headers)
        if not target or not self.settings.reinject:
            log.warning("mdn_not_sent", reason="no target or no reinject listener configured",
                        message_id=decision.message_id)
            return
        # Dispatched (Delivery Notification IG): for a milter, final delivery is Postfix's local delivery into the
        # hosted mailbox, which follows acceptance; so it goes right after the processed MDN.
        dispositions: tuple[Disposition, ...] = (
            ("processed", "dispatched") if wants_dispatched(headers) else ("processed",)
        )
        for recipient in decision.deliver_to:
            for disposition in dispositions:
                self._later(functools.partial(self._send_mdn, decision.delivered, recipient, target, disposition))

    # --- the work ------------------------------------------------------------------------------------------------

    def _record_report(self, report: Notification | None) -> bool:
        """Record what a report says about tracked mail; True when it concerned a tracked message (consume it)."""
        if report is None or not report.original_message_id:
            return False
        matched = False
        for result in report.recipients:
            kind = _KINDS.get(result.result or "")
            if kind is None or result.final_recipient is None:
                continue
            matched |= self.store.record_confirmation(report.original_message_id, result.final_recipient, kind,
                                                      now=time.time(), failure=result.text)
        log.info("report_received", kind=report.kind, original_message_id=report.original_message_id,
                 matched=matched)
        return matched and self.settings.consume_notifications

    def _send_mdn(self, delivered: bytes, recipient: str, target: str, disposition: Disposition) -> None:
        domain = recipient.rpartition("@")[2]
        extensions = {FINAL_DESTINATION_DELIVERY: ""} if disposition == "dispatched" else None
        mdn = build_mdn(original=delivered, reporting_ua=f"{self.reporting}; directmilter", final_recipient=recipient,
                        to=target, disposition=disposition, extensions=extensions, message_id_domain=domain)
        try:
            secured = self.agent.outgoing(MessageEnvelope(recipient, (target,), mdn))
        except DirectMilterError as exc:
            # Never in clear: no trusted certificate for the target means no MDN (AS 3.0, ambiguity 2).
            log.warning("mdn_not_sent", recipient=recipient, target=target, reason=exc.reason)
            return
        assert self.settings.reinject is not None
        reinject(self.settings.reinject, recipient, [target], secured.message)
        log.info("mdn_sent", recipient=recipient, target=target, disposition=disposition,
                 original_message_id=parse_entity(delivered).get("message-id"))

    def _later(self, job: Callable[[], None]) -> None:
        self._jobs.put((time.monotonic() + self.settings.mdn_delay, job))

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            due, job = item
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            for attempt in range(5):
                try:
                    job()
                    break
                except DirectMilterError as exc:
                    log.warning("confirmation_retry", attempt=attempt + 1, reason=exc.reason)
                    if self._stop.wait(2 ** attempt):
                        return
                except Exception as exc:  # a bug must not kill the worker; logged without content
                    log.error("confirmation_failed", error=type(exc).__name__)
                    break

    def _sweep(self) -> None:
        while not self._stop.wait(self.settings.sweep_interval):
            try:
                self.sweep_once()
            except DirectMilterError as exc:
                log.warning("sweep_failed", reason=exc.reason)

    def sweep_once(self) -> None:
        """Tell hosted senders about recipients whose confirmation is overdue (a failed DSN, delivered locally)."""
        now = time.time()
        for late in self.store.overdue(now, self.settings.processed_timeout, self.settings.dispatched_timeout):
            domain = late.sender.rpartition("@")[2]
            dsn = build_dsn(
                reporting_mta=self.reporting, original_message_id=late.message_id, original_sender=late.sender,
                from_address=f"postmaster@{domain}", message_id_domain=domain,
                recipients=[(late.recipient, "failed", "4.4.7",
                             f"no {late.waiting_for} confirmation (MDN) arrived in time; the recipient's system may "
                             "not have received the message - please check with the recipient")],
            )
            if self.settings.reinject is None:
                log.warning("dsn_not_sent", reason="no reinject listener configured", message_id=late.message_id)
            else:
                # To our own hosted sender: it never leaves this host (checklist ambiguity 7).
                reinject(self.settings.reinject, f"postmaster@{domain}", [late.sender], dsn)
                log.info("dsn_sent", message_id=late.message_id, recipient=late.recipient, to=late.sender,
                         waiting_for=late.waiting_for)
            self.store.mark_reported(late.message_id, late.recipient, now)
