"""What happens around a message once the agent has decided: confirmations, tracking and replays (AS 3).

The milter calls :meth:`Confirmations.after_outgoing`, and :meth:`Confirmations.screen_incoming` /
:meth:`Confirmations.confirm` / :meth:`Confirmations.committed` around an incoming message. Processed MDNs are
built at end of message and kept in the durable outbox of the tracking store; a worker thread secures them like
any Direct message (signed by the recipient's certificate, encrypted to the original sender's) and queues them
through Postfix's milter-free listener a moment later, and the sweeper sends whatever a crashed process left
there. Reports are never answered with reports, and nothing is ever sent unsecured to another party. The
sweeper also tells hosted senders, with a DSN, about recipients whose confirmation did not arrive in time;
recipients removed at end of message earn the hosted sender a DSN at once.

When Postfix cannot deliver a message it accepted for a hosted recipient, its bounce (which would carry the
decrypted content) passes the milter (``internal_mail_filter_classes = bounce``) and :meth:`secure_bounce` replaces
it: a fresh DSN with X-Original-Message-ID and the status only (AS 3.1.2), from the hosted recipient, signed and
encrypted to the remote sender, queued before the bounce is discarded; the processed MDN goes first (AS 3.3).
"""

from __future__ import annotations

import functools
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from directmilter import spool, witness
from directmilter.agent import Agent, MessageEnvelope
from directmilter.cms.mime import parse_entity
from directmilter.config import NotifySettings
from directmilter.delivery.reinject import reinject
from directmilter.errors import DeliveryUndecided, DirectMilterError, PermanentFailure, TemporaryFailure
from directmilter.log import get_logger
from directmilter.notify import (
    ACTIONS,
    FINAL_DESTINATION_DELIVERY,
    Disposition,
    DsnRecipient,
    Notification,
    build_dsn,
    build_mdn,
    is_notification,
    may_hold_report,
    mdn_target,
    parse_notification,
    returned_message_id,
    wants_dispatched,
)
from directmilter.replies import reply_for
from directmilter.tracking.store import Delivery, Held, TrackingStore

log = get_logger("directmilter.delivery")

#: An outbox row older than this (seconds) that is still there was not handed over: the sweeper sends it.
ORPHAN_AFTER = 30.0
#: Without a view of Postfix's queue, a held dispatched MDN goes when no bounce came for this long (seconds).
UNSEEN_AFTER = 120.0
#: The queue id a held dispatched MDN waits for when the MTA gave none (it can never be seen in the queue).
UNKNOWN_QUEUE_ID = "?"
#: What an outbox row held until Postfix has the message waits for: this prefix and the witness token.
COMMIT_PREFIX = "commit:"

#: Seconds between two looks at the store while an earlier copy waits for its commit witness.
_SETTLE_POLL = 0.2
_KINDS = {"processed": "processed", "dispatched": "dispatched", "failed": "failed", "delivered": "dispatched"}


#: How often accepted deliveries are confirmed in the tracking store (seconds).
CONFIRM_EVERY = 0.1


@dataclass(frozen=True)
class IncomingDecision:
    """Who still gets the message (replays removed), and whether it was a report consumed by tracking.

    The replay fingerprints are recorded when the decision is made; the milter calls :meth:`Confirmations.undo`
    if it then fails to deliver (so the client's retry is not mistaken for a replay and lost), and
    :meth:`Confirmations.confirm` once the message is accepted, which is when MDNs may be queued.
    """

    deliver_to: tuple[str, ...]
    consumed: bool = False
    delivered: bytes = b""  # the header block of the message delivered (what an MDN about it needs)
    sender: str = ""
    message_id: str | None = None
    digest: str = ""
    queue_id: str | None = None  # Postfix's, for the audit records


class _Job:
    """A queued send that runs once, whether the worker gets to it or a bounce needs it sent first."""

    def __init__(self, action: Callable[[], object]) -> None:
        self._action = action
        self._lock = threading.Lock()
        self.done = False

    def run(self) -> None:
        with self._lock:
            if not self.done:
                self._action()
                self.done = True


class Confirmations:
    def __init__(self, agent: Agent, settings: NotifySettings, store: TrackingStore) -> None:
        self.agent = agent
        self.settings = settings
        self.store = store
        self.reporting = settings.reporting_mta or socket.getfqdn()
        self.instance = uuid.uuid4().hex  # this process, as the owner of not yet confirmed deliveries
        self._jobs: queue.Queue[tuple[float, _Job] | None] = queue.Queue()
        self._audit: dict[str, dict[str, object]] = {}  # outbox row -> what its mdn_sent record says
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._confirming: list[tuple[str, str, str]] = []  # deliveries Postfix has, to be confirmed in one go
        #: Postfix's queue ids still queued (postqueue -j); None: the queue cannot be seen from here.
        self.queue_ids: Callable[[], set[str]] | None = None
        self._confirm_lock = threading.Lock()
        #: Witness token -> the accepted message whose copy to the witness has not come yet, and since when.
        self._awaiting: dict[str, tuple[IncomingDecision, float]] = {}

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> Confirmations:
        for target, name in ((self._work, "confirmations"), (self._sweep, "tracking-sweeper"),
                             (self._confirm, "delivery-confirmer")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._jobs.put(None)
        for thread in self._threads:
            thread.join(10)
        self._threads = []
        try:
            self.flush_confirmations()
        except DirectMilterError as exc:  # left unconfirmed: a retry would be delivered again, never lost
            log.warning("delivery_not_confirmed", reason=exc.reason)
        finally:
            self.store.close()

    # --- called by the milter ------------------------------------------------------------------------------------

    def after_outgoing(self, message: bytes, sender: str, recipients: Sequence[str],
                       removed: Mapping[str, DirectMilterError] | None = None, *,
                       commit: str | None = None) -> None:
        """Track an accepted outgoing message; tell the hosted sender at once about recipients it goes without.
        With ``commit`` (a witness token) the tracking starts only once the MTA has kept the message."""
        headers = parse_entity(message)
        message_id = headers.get("message-id")
        if removed and not is_notification(headers):
            self._later(functools.partial(self._tell_sender, sender, message_id, [
                DsnRecipient(address, "failed", reply_for(error).status, f"{error.reason}; the message was not "
                             "sent to this recipient") for address, error in removed.items()]))
        if message_id is None or is_notification(headers):
            return  # our own reports are not tracked, and a message without an id cannot be matched
        self.store.record_outgoing(message_id, sender, recipients, wants_dispatched=wants_dispatched(headers),
                                   now=time.time(), witness=commit)

    def secure_bounce(self, bounce: bytes, remote: str) -> int:
        """Replace the MTA's bounce to ``remote`` by one secured DSN per hosted recipient it reports on.

        Returns how many were queued; the caller then discards the bounce. Raises :class:`PermanentFailure` when
        the bounce is no DSN about a hosted recipient (it must not leave in clear either way), and
        :class:`TemporaryFailure` when a DSN or the processed MDN before it cannot be queued now (Postfix retries
        the bounce, so the failure report is not lost).
        """
        report = parse_notification(bounce)
        config = self.agent.context.config
        results = [] if report is None or report.kind != "dsn" else [
            r for r in report.recipients if r.final_recipient and config.is_hosted(r.final_recipient)]
        if report is None or not results:
            raise PermanentFailure(f"recipient {remote}: a report that is no DSN about a hosted recipient would "
                                   "leave unencrypted")
        if self.settings.reinject is None:
            raise PermanentFailure(f"recipient {remote}: no reinject listener configured to send a secured DSN")
        original = report.original_message_id or returned_message_id(bounce)
        sent = 0
        for result in results:
            recipient = result.final_recipient or ""
            action = result.result if result.result in ACTIONS else "failed"
            if action == "failed" and self.store.outbox_drop_held(original, recipient):
                log.info("dispatched_withdrawn", recipient=recipient, original_message_id=original)
            self._flush_mdns(original, recipient)  # AS 3.3: a failure report only after the processed MDN
            status = result.status or ("4.0.0" if action == "delayed" else "5.0.0")
            domain = recipient.rpartition("@")[2]
            dsn = build_dsn(reporting_mta=self.reporting, original_message_id=original, original_sender=remote,
                            from_address=recipient, message_id_domain=domain,
                            recipients=[DsnRecipient(recipient, action, status, result.text)])
            try:
                secured = self.agent.outgoing(MessageEnvelope(recipient, (remote,), dsn))
            except PermanentFailure as exc:  # never in clear: no DSN (the sender's tracking times out instead)
                log.warning("dsn_not_sent", recipient=recipient, target=remote, reason=exc.reason,
                            original_message_id=original)
                continue
            reinject(self.settings.reinject, recipient, [remote], spool.take(secured.message))
            sent += 1
            log.info("dsn_sent", recipient=recipient, to=remote, action=action, status=status,
                     original_message_id=original)
        return sent

    def postfix_report(self, report: bytes, queue_id: str | None = None) -> bool:
        """Record what this Postfix's own report (bounce, delay or success notice) to a hosted sender says about
        tracked outgoing mail; it is delivered, never consumed. True when it concerned a tracked message."""
        notification = parse_notification(report)
        if notification is not None and not notification.original_message_id:
            # Postfix names the message it reports on in the headers it returns, not in a field of the report.
            notification = replace(notification, original_message_id=returned_message_id(report),
                                   correlated_by="returned-headers")
        return self._record_report(notification, queue_id, consume=False)

    def screen_incoming(self, delivered: spool.Message, sender: str, recipients: Sequence[str],
                        queue_id: str | None = None) -> IncomingDecision:
        """Consume reports about tracked mail; leave out recipients who already received this very message.

        The message is read whole only when its type says it may be a report (a report, or a message/rfc822 or
        multipart/signed around one: what :func:`parse_notification` looks through); for anything else, however
        large, its header block is enough.
        """
        head = spool.head(delivered)
        headers = parse_entity(head)
        whole = spool.read(delivered) if may_hold_report(headers.content_type) else None
        report = parse_notification(whole) if whole is not None else None
        if report is not None or is_notification(whole if whole is not None else headers):
            consumed = self._record_report(report, queue_id)
            log.info("mdn_not_sent", queue_id=queue_id, message_id=headers.get("message-id"), consumed=consumed,
                     reason="the message is a report, and a report is never answered with a report (AS 3.0)")
            return IncomingDecision(tuple(recipients), consumed, queue_id=queue_id)
        message_id = headers.get("message-id")
        digest = spool.sha256(delivered)
        fresh = list(recipients)
        if message_id is not None:
            found = self._first_deliveries(message_id, recipients, digest, sender)
            fresh = [r for r, delivery in found.items() if delivery is Delivery.FIRST]
            for replay in [r for r, delivery in found.items() if delivery is Delivery.REPLAY]:
                log.warning("replay", message_id=message_id, recipient=replay, sender=sender)
        return IncomingDecision(tuple(fresh), False, head, sender, message_id, digest, queue_id)

    def _first_deliveries(self, message_id: str, recipients: Sequence[str], digest: str,
                          sender: str) -> dict[str, Delivery]:
        """Each recipient's :class:`Delivery` of this copy. A PENDING one (an earlier copy waits for its commit
        witness) is asked again until the witness settles it (REPLAY: the MTA kept the earlier copy) or
        witness.SETTLE has passed without it (FIRST: the MTA refused the earlier copy; this is its retry)."""
        def classify(recipient: str) -> Delivery:
            now = time.time()
            return self.store.first_delivery(message_id, recipient, digest, now, owner=self.instance,
                                             awaited_after=now - witness.SETTLE)

        found = {r: classify(r) for r in recipients}
        started = time.monotonic()
        while pending := [r for r, delivery in found.items() if delivery is Delivery.PENDING]:
            if time.monotonic() - started > witness.SETTLE + 1:  # the store's clock stood still: do not guess
                for recipient in [r for r, delivery in found.items() if delivery is Delivery.FIRST]:
                    self.store.forget_delivery(message_id, recipient, digest)  # its retry is no replay either
                raise DeliveryUndecided(f"recipient {pending[0]}: a copy of this message was accepted moments "
                                        "ago and the MTA has not yet confirmed it kept it; retry later")
            time.sleep(_SETTLE_POLL)
            found.update({r: classify(r) for r in pending})
        if time.monotonic() - started > _SETTLE_POLL / 2:
            log.info("copy_waited_for_witness", message_id=message_id, sender=sender,
                     seconds=round(time.monotonic() - started, 1))
        return found

    def undo(self, decision: IncomingDecision) -> None:
        if decision.message_id is not None:
            for recipient in decision.deliver_to:
                self.store.forget_delivery(decision.message_id, recipient, decision.digest)

    def await_commit(self, decision: IncomingDecision) -> str:
        """The token of the witness recipient to add to this accepted message (directmilter.witness):
        its MDNs wait for the witness (:meth:`witnessed` with the token), and so does its replay record: a copy
        arriving meanwhile waits for it (a replay if the MTA kept the first, the only copy if it refused it);
        after witness.SETTLE without the witness a copy is delivered (the first was refused)."""
        token = witness.new_token()
        with self._confirm_lock:
            self._awaiting[token] = (decision, time.time())
        if decision.message_id is not None:
            for recipient in decision.deliver_to:
                self.store.await_witness(decision.message_id, recipient, decision.digest, token)
        return token

    def witnessed(self, token: str) -> bool:
        """Postfix has the message of ``token`` in its queue: its MDNs go, its replay record is confirmed. False
        when nothing waited for the token here (a forged or stale one; held MDNs of a process that restarted are
        released all the same)."""
        with self._confirm_lock:
            awaited = self._awaiting.pop(token, None)
        confirmed = self.store.confirm_witnessed(token)  # in the store: a restart in between loses nothing
        rows = [h.id for h in self.store.outbox_held() if h.held_for == COMMIT_PREFIX + token]
        now = time.time()
        for row in rows:
            self.store.outbox_unhold(row, now)
            self._later(functools.partial(self._hand_over, row=row))
        log.info("commit_witnessed", queue_id=awaited[0].queue_id if awaited else None, mdns=len(rows),
                 known=awaited is not None)
        return awaited is not None or bool(rows) or bool(confirmed)

    def _expire_unwitnessed(self, now: float) -> None:
        """Messages whose witness did not come in witness.WAIT: Postfix refused them after us. Their MDNs are
        dropped; their replay records forgotten (a retry is delivered)."""
        with self._confirm_lock:
            stale = [t for t, (_, since) in self._awaiting.items() if since < now - witness.WAIT]
            expired = [self._awaiting.pop(t)[0] for t in stale]
        for decision in expired:
            self.undo(decision)
        dropped = self.store.outbox_drop_held_before(COMMIT_PREFIX, now - witness.WAIT)
        untracked = self.store.drop_unwitnessed_outgoing(now - witness.WAIT)
        if expired or dropped or untracked:
            log.warning("not_kept_by_postfix", messages=len(expired), mdns_dropped=dropped,
                        outgoing_untracked=untracked,
                        reason="no commit witness came back: the MTA refused the message after directmilter")

    def committed(self, decision: IncomingDecision) -> None:
        """Postfix went on after accepting the message (next transaction or close): it has it, replays are replays.

        Once started, confirmations are written by a background thread, many in one transaction, a moment later:
        one commit less per incoming message on the milter's path. Until then the record is unconfirmed,
        which this process already treats as a replay; a process that dies before writing leaves it unconfirmed,
        so a retry would be delivered again rather than lost (as when it dies before Postfix takes the message).
        """
        if decision.message_id is None:
            return
        with self._confirm_lock:
            self._confirming.extend((decision.message_id, r, decision.digest) for r in decision.deliver_to)
        if not self._threads:  # not started (the command line, tests): at once
            self.flush_confirmations()

    def flush_confirmations(self) -> None:
        with self._confirm_lock:
            pending, self._confirming = self._confirming, []
        if not pending:
            return
        try:
            self.store.confirm_deliveries(pending)
        except DirectMilterError:
            with self._confirm_lock:  # kept for the next round: the store may be back by then
                self._confirming[:0] = pending
            raise

    def confirm(self, decision: IncomingDecision, commit: str | None = None) -> None:
        """Queue the MDNs of an accepted message (never for a report: reports are not answered, AS 3.0); with
        ``commit`` (a witness token, :meth:`await_commit`) they are held until the witness comes."""
        if decision.consumed or not decision.delivered or not self.settings.mdn:
            return
        headers = parse_entity(decision.delivered)
        target = mdn_target(envelope_sender=decision.sender, headers=headers)
        if not target or not self.settings.reinject:
            log.warning("mdn_not_sent", reason="no target or no reinject listener configured",
                        original_message_id=decision.message_id, queue_id=decision.queue_id)
            return
        # Dispatched (Delivery Notification IG): final delivery is Postfix's delivery into the hosted mailbox, which
        # follows acceptance and may still fail; so the dispatched MDN is held until Postfix is done with the
        # message without a bounce for the recipient (a bounce passes the milter first, and drops it).
        dispositions: tuple[Disposition, ...] = (
            ("processed", "dispatched") if wants_dispatched(headers) else ("processed",)
        )
        for recipient in decision.deliver_to:
            for disposition in dispositions:
                # The dispatched MDN waits for the evidence of final delivery (see _release_delivered).
                held = self._held_key(decision.queue_id) if disposition == "dispatched" else None
                if held is None and commit is not None:
                    held = COMMIT_PREFIX + commit
                self._queue_mdn(decision.delivered, recipient, target, disposition, decision.queue_id, held_for=held)

    # --- the work ------------------------------------------------------------------------------------------------

    def _record_report(self, report: Notification | None, queue_id: str | None, *, consume: bool = True) -> bool:
        """Record what a report says about tracked mail; True when it concerned a tracked message and may be
        consumed (with ``consume=False``: when it concerned one). A failure is never consumed: the hosted sender
        must learn of it (the report is delivered)."""
        if report is None or not report.original_message_id:
            return False
        matched = False
        failed = False
        positive = False  # the first dispatched MDN of a recipient: the sender's confirmation of final delivery
        for result in report.recipients:
            kind = _KINDS.get(result.result or "")
            if kind is None or result.final_recipient is None:
                continue
            if kind == "dispatched" and consume and self.store.first_dispatched(
                    report.original_message_id, result.final_recipient, now=time.time()):
                matched = positive = True
                continue
            failed |= kind == "failed"
            matched |= self.store.record_confirmation(report.original_message_id, result.final_recipient, kind,
                                                      now=time.time(), failure=result.text)
        consumed = matched and not failed and not positive and self.settings.consume_notifications and consume
        # AS 3.2 (RECOMMENDED): one audit record per confirmation received.
        log.info("report_received", kind=report.kind, queue_id=queue_id, original_message_id=report.original_message_id,
                 report_message_id=report.message_id,
                 results={r.final_recipient: r.result for r in report.recipients if r.final_recipient},
                 matched=matched, consumed=consumed, positive=positive)
        return consumed if consume else matched

    def _queue_mdn(self, delivered: bytes, recipient: str, target: str, disposition: Disposition,
                   queue_id: str | None, *, held_for: str | None = None) -> None:
        """Keep the MDN in the durable outbox now (a quick insert, no lookups: end of message stays fast); it is
        sealed and handed to Postfix ``mdn_delay`` later, and after a crash by whichever process sweeps the outbox
        next. A queued MDN is never lost. The report holds addresses and Message-IDs, never the message's content."""
        domain = recipient.rpartition("@")[2]
        extensions = {FINAL_DESTINATION_DELIVERY: ""} if disposition == "dispatched" else None
        mdn = build_mdn(original=delivered, reporting_ua=f"{self.reporting}; directmilter", final_recipient=recipient,
                        to=target, disposition=disposition, extensions=extensions, message_id_domain=domain)
        now = time.time()
        row = self.store.outbox_add(self.instance, parse_entity(delivered).get("message-id"), recipient, recipient,
                                    target, mdn, now=now, due=now + self.settings.mdn_delay, sealed=False,
                                    held_for=held_for)
        self._audit[row] = {"queue_id": queue_id, "disposition": disposition,
                            "mdn_message_id": parse_entity(mdn).get("message-id")}
        if held_for is None:
            self._later(functools.partial(self._hand_over, row=row))

    def _hand_over(self, *, row: str | None = None, message_id: str | None = None, recipient: str | None = None,
                   orphaned_before: float | None = None) -> int:
        """Seal (if not yet) and give queued MDNs to Postfix, dropping them from the outbox; returns how many went.
        A report nobody can be trusted to read is dropped, never sent in clear (AS 3.0); a temporary failure puts
        the row back for later and is raised, so the caller retries."""
        assert self.settings.reinject is not None
        now = time.time()
        sent = 0
        for queued in self.store.outbox_claim(self.instance, row=row, message_id=message_id, recipient=recipient,
                                              orphaned_before=orphaned_before, now=now):
            body = queued.body
            if not queued.sealed:
                try:
                    secured = self.agent.outgoing(MessageEnvelope(queued.sender, (queued.target,), body))
                    body = spool.take(secured.message)
                except TemporaryFailure:
                    self.store.outbox_release(queued.id, now + 30)
                    raise
                except PermanentFailure as exc:
                    log.warning("mdn_not_sent", recipient=queued.recipient, target=queued.target, reason=exc.reason,
                                original_message_id=queued.message_id)
                    self.store.outbox_done(queued.id)
                    continue
                self.store.outbox_update(queued.id, body)
            reinject(self.settings.reinject, queued.sender, [queued.target], body)
            self.store.outbox_done(queued.id)
            sent += 1
            # AS 3.2 (RECOMMENDED): one audit record per confirmation sent.
            log.info("mdn_sent", **self._audit.pop(queued.id, {"recovered": True}), recipient=queued.recipient,
                     target=queued.target, original_message_id=queued.message_id)
        return sent

    def _later(self, action: Callable[[], object]) -> _Job:
        job = _Job(action)
        self._jobs.put((time.monotonic() + self.settings.mdn_delay, job))
        return job

    def _flush_mdns(self, message_id: str | None, recipient: str) -> None:
        """Send now the MDNs still queued for (message, recipient); a failure defers the caller (TemporaryFailure)."""
        if self.settings.reinject is None:
            return
        try:
            self._hand_over(message_id=message_id, recipient=recipient)
        except DirectMilterError as exc:
            raise TemporaryFailure(f"the processed MDN to {recipient}'s sender must go first and could not be "
                                   f"sent yet: {exc.reason}") from exc

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
                    job.run()
                    break
                except DirectMilterError as exc:
                    log.warning("confirmation_retry", attempt=attempt + 1, reason=exc.reason)
                    if self._stop.wait(2 ** attempt):
                        return
                except Exception as exc:  # a bug must not kill the worker; logged without content
                    log.error("confirmation_failed", error=type(exc).__name__)
                    break

    def _confirm(self) -> None:
        while not self._stop.wait(CONFIRM_EVERY):
            try:
                self.flush_confirmations()
            except DirectMilterError as exc:  # left unconfirmed: a retry would be delivered again, never lost
                log.warning("delivery_not_confirmed", reason=exc.reason)

    def _sweep(self) -> None:
        while not self._stop.wait(self.settings.sweep_interval):
            try:
                self.sweep_once()
            except DirectMilterError as exc:
                log.warning("sweep_failed", reason=exc.reason)

    def sweep_once(self) -> None:
        """Send MDNs left in the outbox (by a process that died, or a hand-over that failed); tell hosted senders
        about recipients whose confirmation is overdue (a failed DSN, delivered locally)."""
        now = time.time()
        self._expire_unwitnessed(now)
        if self.settings.reinject is not None:
            try:
                self._release_delivered(now)
            except DirectMilterError as exc:  # the held MDNs wait for the next sweep; the rest of it goes on
                log.warning("dispatched_not_released", reason=exc.reason)
            recovered = self._hand_over(orphaned_before=now - ORPHAN_AFTER)
            if recovered:
                log.info("outbox_recovered", sent=recovered)
        for late in self.store.overdue(now, self.settings.processed_timeout, self.settings.dispatched_timeout):
            cause = (f"no {late.waiting_for} confirmation (MDN) arrived in time; the recipient's system may not "
                     "have received the message - please check with the recipient")
            self._tell_sender(late.sender, late.message_id, [DsnRecipient(late.recipient, "failed", "4.4.7", cause)])
            # What the sender was told is what tracking says from now on: a late MDN does not turn it around.
            self.store.mark_reported(late.message_id, late.recipient, now, failure=f"4.4.7 {cause}")

    @property
    def _held_prefix(self) -> str:
        """Held rows wait for this host's Postfix queue ids (hosts sharing a tracking store each see their own)."""
        return f"{self.reporting}/"

    def _held_key(self, queue_id: str | None) -> str:
        """What a held row waits for; UNKNOWN_QUEUE_ID when the MTA gave no queue id (then only time tells)."""
        return self._held_prefix + (queue_id or UNKNOWN_QUEUE_ID)

    def _release_delivered(self, now: float) -> int:
        """Send the held dispatched MDNs of messages Postfix is done with: gone from its queue, and no bounce for
        their recipient came (it would have dropped them). Without a view of the queue, a held MDN goes once
        UNSEEN_AFTER seconds passed without a bounce (so does one whose queue id the MTA did not give)."""
        mine = self._held_prefix
        rows = self.store.outbox_held()
        # A processed MDN still waiting for the commit witness goes first: its dispatched MDN waits too.
        unkept = {(h.message_id, h.recipient) for h in rows if h.held_for.startswith(COMMIT_PREFIX)}
        held = [h for h in rows if h.held_for.startswith(mine) and (h.message_id, h.recipient) not in unkept]
        if not held:
            return 0
        queued = self.queue_ids() if self.queue_ids is not None else None

        def done(row: Held) -> bool:
            queue_id = row.held_for[len(mine):]
            if queued is None or queue_id == UNKNOWN_QUEUE_ID:
                return row.created_at < now - UNSEEN_AFTER
            return queue_id not in queued

        ready = [h for h in held if done(h)]
        released = 0
        for row in ready:
            if self.store.outbox_waiting(row.message_id, row.recipient):
                continue  # the processed MDN goes first (AS 3.3, the Guide); it is queued or on its way: next sweep
            self.store.outbox_unhold(row.id, now)
            self._hand_over(row=row.id)
            released += 1
        return released

    def _tell_sender(self, sender: str, message_id: str | None, recipients: Sequence[DsnRecipient]) -> None:
        """A failed DSN to a hosted sender, from the domain's postmaster, delivered locally (ambiguity 7)."""
        domain = sender.rpartition("@")[2]
        if self.settings.reinject is None:
            log.warning("dsn_not_sent", reason="no reinject listener configured", message_id=message_id)
            return
        dsn = build_dsn(reporting_mta=self.reporting, original_message_id=message_id, original_sender=sender,
                        from_address=f"postmaster@{domain}", message_id_domain=domain, recipients=recipients)
        # To our own hosted sender: it never leaves this host.
        reinject(self.settings.reinject, f"postmaster@{domain}", [sender], dsn)
        log.info("dsn_sent", message_id=message_id, recipients=[r.address for r in recipients], to=sender)
