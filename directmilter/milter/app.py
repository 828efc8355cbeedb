"""The milter: collect the envelope and the exact bytes, ask the agent, turn the answer into Postfix actions.

The only module that imports pymilter. libmilter runs one thread per SMTP connection and creates one
:class:`DirectMilter` per connection; the agent behind them is shared and thread-safe. Every callback is guarded:
an error that is not a decision (a bug, a dependency failure) becomes a 4.x.x tempfail, so unprocessed mail is
never accepted — and ``milter_default_action = tempfail`` covers a milter that is not running at all.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import Milter

from directmilter import spool, witness
from directmilter.addresses import canonical, check_plain, internal_form, strip_path
from directmilter.agent import Agent, MessageEnvelope
from directmilter.agent.envelope import Outcome
from directmilter.config import Config
from directmilter.delivery import reinject
from directmilter.delivery.service import Confirmations, IncomingDecision
from directmilter.errors import (
    ClearCopyForbidden,
    ConfigError,
    DirectMilterError,
    DuplicateMessage,
    MalformedMessage,
    MessageTooLarge,
    NoTrustedRecipients,
    PermanentFailure,
    SubmissionForbidden,
    TemporaryFailure,
)
from directmilter.log import get_logger
from directmilter.milter import systemd
from directmilter.milter.direction import Client, Direction, Group, delivered_to, direction, group
from directmilter.milter.edits import header_edits, header_fields
from directmilter.milter.runtime import Runtime, block_daemon_signals
from directmilter.notify.report import withhold_returned
from directmilter.policy import condition_of
from directmilter.replies import reason_for, reply_for

log = get_logger("directmilter.milter")

#: Body replacement is sent in chunks of this size (libmilter's limit is 64 KiB per message).
_CHUNK = 65535
_F = TypeVar("_F", bound=Callable[..., Any])
_O = TypeVar("_O", bound=Outcome)
#: How refusals are counted and audited, by the milter answer they became.
_OUTCOME = {int(Milter.TEMPFAIL): "tempfail", int(Milter.REJECT): "rejected", int(Milter.DISCARD): "discarded",
            int(Milter.ACCEPT): "quarantined", int(Milter.CONTINUE): "held"}


def _guarded(callback: _F) -> _F:
    """Any exception in a callback becomes the reply :mod:`directmilter.replies` gives it; unknown ones tempfail."""

    @functools.wraps(callback)
    def wrapper(self: DirectMilter, *args: Any) -> Any:
        try:
            return callback(self, *args)
        except BaseException as exc:  # fail closed: the one place exceptions are turned into SMTP answers
            if isinstance(exc, DirectMilterError):
                log.info("refused", stage=callback.__name__, queue_id=self.queue_id, sender=self.sender,
                         recipients=self.recipients, status=reply_for(exc).status, reason=exc.reason)
            else:
                log.error("internal_error", stage=callback.__name__, queue_id=self.queue_id, sender=self.sender,
                          recipients=self.recipients, error=type(exc).__name__)
            answer = self.refuse(exc, stage=callback.__name__)
            self.runtime.metrics.count(self.kind.value, _OUTCOME.get(answer, "rejected"))
            return answer

    return wrapper  # type: ignore[return-value]


class DirectMilter(Milter.Base):  # type: ignore[misc]
    runtime: ClassVar[Runtime]

    def __init__(self) -> None:
        self.client = Client()
        self.accepted: IncomingDecision | None = None  # the last accepted incoming message, until Postfix moves on
        self._reset()

    def _moved_on(self) -> None:
        """Postfix started another transaction or closed: it holds what we accepted (see Confirmations.committed)."""
        decision, self.accepted = self.accepted, None
        if decision is not None and self.confirmations is not None:
            self.confirmations.committed(decision)

    def _reset(self) -> None:
        self._clean_up()
        # A transaction works with one generation of configuration and agent from start to end, even across a
        # reload (see directmilter.milter.runtime).
        generation = self.runtime.current
        self.agent: Agent = generation.agent
        self.config: Config = generation.config
        self.maps = generation.maps
        self.confirmations: Confirmations | None = self.runtime.confirmations
        self.sender = ""  # the sender's mailbox, as Postfix resolved MAIL FROM (see directmilter.addresses)
        self.sender_copies: tuple[str, ...] = ()  # sender_bcc_maps: where Postfix copies this sender's mail
        self.recipients: list[str] = []  # one entry per mailbox Postfix delivers to, whatever the spellings
        self.spellings: dict[str, list[str]] = {}  # mailbox -> the RCPT TO spellings that reach it, in order
        self.kind = Direction.INCOMING
        self.group: Group | None = None
        self.fields: list[tuple[str, str]] = []
        self.writer: spool.Writer | None = None  # the message as it arrives: a file once it is large
        self.spool_failure: TemporaryFailure | None = None
        self.size = 0  # bytes received; past [limits] max_message_size the rest is not kept
        self._whole: spool.Message | None = None
        self._spools: list[spool.Message] = []  # files of this transaction, removed when it ends
        self.queue_id: str | None = None
        self.held: str | None = None  # quarantine reason decided before end of message
        self.reinjected = False  # on the re-injection listener: only what we queued ourselves (sealed) passes
        self.refusal: DirectMilterError | None = None  # decided at RCPT, answered at end of message
        self.wire_sender = ""  # MAIL FROM and RCPT TO as spelled, for the re-injection seal
        self.wire_recipients: list[str] = []

    # --- replies ---------------------------------------------------------------------------------------------

    def refuse(self, exc: BaseException, *, stage: str = "eom") -> int:
        """The answer to a failure: the error's own reply, or the [actions] choice for its condition."""
        reply = reply_for(exc)
        text = _reply_text(reason_for(exc))
        condition = condition_of(exc, self.kind is Direction.OUTGOING)
        action = self.config.actions.action_for(condition)
        if action == "discard":
            log.warning("discarded", queue_id=self.queue_id, condition=condition, sender=self.sender)
            return int(Milter.DISCARD)
        if action == "quarantine":
            # Held in Postfix's hold queue as it came (nothing is delivered or relayed); before end of message the
            # transaction goes on and is held there.
            self.held = f"directmilter {condition}: {text}"
            return int(Milter.CONTINUE) if stage != "eom" else self._hold()
        if action == "tempfail" and not reply.temporary:
            self.setreply("451", "4.7.1", text)
            return int(Milter.TEMPFAIL)
        if action == "reject" and reply.temporary:
            self.setreply("550", "5.7.1", text)
            return int(Milter.REJECT)
        self.setreply(reply.code, reply.status, text)
        return int(Milter.TEMPFAIL if reply.temporary else Milter.REJECT)

    def _hold(self) -> int:
        assert self.held is not None
        try:
            self.quarantine(self.held)
        except Exception as exc:  # could not hold it: defer rather than let it through
            log.error("quarantine_failed", queue_id=self.queue_id, error=type(exc).__name__)
            self.setreply("451", "4.3.0", "Direct: the message could not be quarantined; try again later")
            return int(Milter.TEMPFAIL)
        log.warning("quarantined", queue_id=self.queue_id, sender=self.sender, recipients=self.recipients,
                    reason=self.held)
        return int(Milter.ACCEPT)

    # --- callbacks -------------------------------------------------------------------------------------------

    @Milter.noreply  # type: ignore[untyped-decorator]
    @_guarded
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        inet = family in (socket.AF_INET, socket.AF_INET6) and bool(hostaddr)
        address = hostaddr[0] if inet else None
        # Postfix's cleanup (non_smtpd_milters: sendmail, pickup, its own bounces) emulates a client
        # "localhost [127.0.0.1]" on port 0; no TCP peer has port 0.
        local = inet and len(hostaddr) > 1 and hostaddr[1] == 0
        self.client = Client(address=address, daemon_name=self.getsymval("{daemon_name}"), local=local)
        return int(Milter.CONTINUE)

    @_guarded
    def envfrom(self, mailfrom: str, *params: str) -> int:
        self._moved_on()
        self._reset()
        if self.client.daemon_name == reinject.DAEMON_NAME:
            self.reinjected = True  # nothing is decided before the seal is checked at end of message
            self.wire_sender = strip_path(mailfrom)
            return int(Milter.CONTINUE)
        resolved = self._resolved(mailfrom, "{mail_addr}")
        self.sender = self.config.mailbox(resolved) if resolved else ""
        if self.config.is_hosted(self.sender):
            check_plain(self.sender)
        if self.maps is not None and resolved:
            self.sender_copies = self.maps.sender_copies(resolved)
        self.client = replace(self.client, authenticated=self.getsymval("{auth_authen}"))
        self.kind = direction(self.config, self.sender, self.client)
        if self.client.local and self.kind is not Direction.OUTGOING and self.config.is_hosted(self.sender):
            # sendmail -f as any Unix user. A rejection would make Postfix bounce it, in clear, to the hosted
            # address it forged (which refuses unsecured mail, so the bounce and the original would stay queued
            # for good): it is dropped and logged instead, before anything is signed or delivered.
            log.warning("discarded", stage="envfrom", sender=self.sender, condition="local_submission",
                        reason=f"sender {self.sender}: mail submitted on this host may not use a Direct sender "
                               "([milter] local_submission is off)")
            self.runtime.metrics.count(self.kind.value, "discarded")
            return int(Milter.DISCARD)
        if self.kind is Direction.OUTGOING:
            self.agent.check_sender(self.sender)
        return int(Milter.CONTINUE)

    def _resolved(self, path: str, macro: str) -> str:
        """The address as the MTA resolved it (its own macro), in canonical form; computed only where it is silent."""
        told = self.getsymval(macro)
        if told and "@" in told:
            return canonical(told, resolved_by_mta=True)
        return canonical(path)

    @_guarded
    def envrcpt(self, to: str, *params: str) -> int:
        try:
            return self._recipient(to)
        except DirectMilterError as exc:
            if not self.client.local:
                raise
            # Postfix's cleanup cannot refuse one recipient of mail submitted on this host (it takes that for its
            # own misconfiguration): the refusal is answered at end of message, for the whole message.
            self.refusal = self.refusal or exc
            return int(Milter.CONTINUE)

    def _recipient(self, to: str) -> int:
        spelled = strip_path(to)
        token = witness.token_of(spelled) if self.reinjected else None
        if token is not None and self.confirmations is not None:
            # Postfix queued a message we accepted, and delivers its witness copy here: nothing else is done with it.
            self.confirmations.witnessed(token)
            return int(Milter.DISCARD)
        if self.reinjected:
            self.wire_recipients.append(spelled)
            return int(Milter.CONTINUE)
        recipient = delivered_to(self.config, self.maps, self._resolved(to, "{rcpt_addr}"),
                                 self.getsymval("{rcpt_mailer}"), self.getsymval("{rcpt_host}"))
        this = group(self.config, recipient)
        if self.group is not None and this is not self.group:
            if self.client.local:
                raise PermanentFailure(f"recipient {recipient}: Direct mail for hosted and remote recipients must be "
                                       "submitted separately")
            self.setreply("452", "4.5.3", "Direct: send this recipient in a separate transaction")
            return int(Milter.TEMPFAIL)
        if recipient in self.spellings:  # another spelling of a mailbox already named: one copy, one MDN
            self.spellings[recipient].append(spelled)
            return int(Milter.CONTINUE)
        if this is Group.HOSTED:
            outside = [c for c in self.sender_copies if not self.config.is_hosted(self.config.mailbox(c))]
            if outside:
                raise ClearCopyForbidden(f"sender {self.sender}: Postfix copies this sender's mail to "
                                         f"{', '.join(outside)} (sender_bcc_maps), where the decrypted message "
                                         "would arrive in clear")
        if self.kind is Direction.OUTGOING and this is Group.REMOTE:
            if not self.client.local:  # mail submitted on the host: untrusted recipients are removed at the end
                self.agent.check_recipient(self.sender, recipient)
        elif this is Group.REMOTE and not self.sender:
            # Null-sender mail to a remote address is a report. Postfix's own bounces (internal_mail_filter_classes
            # = bounce, through cleanup: a local client) about mail accepted for a hosted recipient carry its
            # content: at end of message they are replaced by a secured DSN, or refused when that cannot be done.
            # Nobody else may have us sign a report (AS 3.0: never in clear, never in another user's name).
            if not self.client.postfix_report:
                raise SubmissionForbidden(f"recipient {recipient}: delivery reports to remote addresses are sent by "
                                          "this host's MTA only (its bounce service), not for clients or local "
                                          "accounts")
            if self.confirmations is None or self.config.notify.reinject is None:
                raise PermanentFailure(
                    f"recipient {recipient}: a delivery report to a remote address would leave unencrypted"
                )
        elif this is Group.REMOTE and self.sender and self.config.is_hosted(self.sender):
            # A hosted sender whose client may not submit: securing is refused, so passing it on would send
            # a Direct user's mail to a remote address in clear. Never.
            how = ("local submission is off ([milter] local_submission)" if self.client.local else
                   "not authenticated, not an internal host, not a submission listener")
            raise SubmissionForbidden(
                f"sender {self.sender}: this client may not submit Direct mail ({how}); it would leave unencrypted"
            )
        elif self.kind is Direction.INCOMING and this is Group.REMOTE and self.config.milter.other_mail == "reject":
            raise PermanentFailure(f"recipient {recipient}: not a Direct address hosted here")
        self.group = this
        self.recipients.append(recipient)
        self.spellings[recipient] = [spelled]
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    @Milter.decode("bytes")  # type: ignore[untyped-decorator]
    def header(self, name: str, value: bytes) -> int:
        # With "noreply" the MTA sends the next field without waiting (a round trip per field saved); nothing is
        # decided here anyway: too many fields are refused at end of message. Folded values reach us with bare LF;
        # keep them canonical (CRLF) like everything the agent sees.
        text = value.decode("utf-8", "surrogateescape")
        self.size += len(name) + len(value) + 4
        if len(self.fields) > self.config.limits.max_headers:
            return int(Milter.CONTINUE)  # refused at end of message; no more are kept
        self.fields.append((name, text.replace("\r\n", "\n").replace("\n", "\r\n")))
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    def body(self, chunk: bytes) -> int:
        # With "noreply" the MTA does not wait for an answer here: the refusal comes at end of message, and until
        # then an oversized body is counted, not kept, and a body that cannot be spooled is dropped.
        self.size += len(chunk)
        if self.size > self.config.limits.max_message_size or self.spool_failure is not None:
            if self.writer is not None:
                self.writer.abandon()
            return int(Milter.CONTINUE)
        try:
            self._writer().write(chunk)
        except TemporaryFailure as exc:
            self.spool_failure = exc
        return int(Milter.CONTINUE)

    @_guarded
    def eom(self) -> int:
        try:
            return self._end_of_message()
        finally:
            self._clean_up()  # the spool files (decrypted content among them) go as soon as Postfix has the result

    def _end_of_message(self) -> int:
        self.queue_id = self.getsymval("i")
        if self.held is not None:
            return self._hold()
        limits = self.config.limits
        if self.size > limits.max_message_size:
            raise MessageTooLarge(f"message of {self.size} bytes is larger than the limit of "
                                  f"{limits.max_message_size} bytes")
        if len(self.fields) > limits.max_headers:
            raise MalformedMessage(f"more than {limits.max_headers} header fields")
        if self.spool_failure is not None:
            raise self.spool_failure
        if self.reinjected:
            return self._reinjected()
        if self.refusal is not None:
            raise self.refusal
        if self.sender and self.client.postfix_report:
            return self._postmaster_notice()
        if not self.sender and self.group is Group.HOSTED and self.client.postfix_report:
            return self._own_report()
        if not self.sender and self.group is Group.REMOTE and self.confirmations is not None:
            return self._replace_bounce(self.confirmations)
        if self.group is not Group.HOSTED and self.kind is not Direction.OUTGOING:
            log.info("other_mail", queue_id=self.queue_id, sender=self.sender, recipients=self.recipients)
            return int(Milter.ACCEPT)
        started = time.monotonic()
        try:
            outcome = self._process()
        except (NoTrustedRecipients, PermanentFailure) as exc:
            answer = self.refuse(exc)
            self._audit(_OUTCOME.get(answer, "rejected"), reason=exc.reason,
                        rejected=getattr(exc, "rejected", {}), started=started)
            return answer
        confirmations = self.confirmations
        if confirmations is None or (self.group is not Group.REMOTE and self.kind is Direction.OUTGOING):
            self._apply(outcome)  # local to local: no confirmation travels
        elif self.kind is Direction.OUTGOING:
            original = spool.head(self._message())
            self._apply(outcome)  # first: a failure here tempfails, and nothing was tracked or told to the sender
            token = None
            if self.config.notify.commit_witness:  # tracked only once Postfix has it (a later milter may refuse it)
                token = witness.new_token()
                self.addrcpt(f"<{witness.address(token)}>")
            confirmations.after_outgoing(original, self.sender, outcome.recipients, outcome.rejected, commit=token)
        else:
            decision = confirmations.screen_incoming(outcome.message, self.sender, outcome.recipients, self.queue_id)
            replays = {r: DuplicateMessage(f"recipient {r}: this message was delivered before (replay)")
                       for r in outcome.recipients if r not in decision.deliver_to}
            outcome = Outcome(outcome.message, decision.deliver_to, {**outcome.rejected, **replays})
            if decision.consumed or not outcome.recipients:
                self._audit("consumed" if decision.consumed else "replay", rejected=outcome.rejected,
                            started=started)
                return int(Milter.DISCARD)
            try:
                self._apply(outcome)
                if self.config.notify.commit_witness:
                    # Our accept is not Postfix's: the MDNs and the replay record wait for the witness's copy.
                    token = confirmations.await_commit(decision)
                    self.addrcpt(f"<{witness.address(token)}>")
                    confirmations.confirm(decision, commit=token)
                else:
                    confirmations.confirm(decision)  # the MDNs go into the durable outbox before we accept
            except BaseException:
                confirmations.undo(decision)  # the client will retry: that retry is no replay
                raise
            if not self.config.notify.commit_witness:
                self.accepted = decision
        self._audit("processed", rejected=outcome.rejected, started=started, delivered=list(outcome.recipients))
        return int(Milter.ACCEPT)

    def _replace_bounce(self, confirmations: Confirmations) -> int:
        """The MTA's report to a remote sender goes as secured DSNs instead; the clear original is discarded."""
        started = time.monotonic()
        bounce = spool.read(self._message())
        sent = sum(confirmations.secure_bounce(bounce, recipient) for recipient in self.recipients)
        self._audit("bounce_secured", rejected={}, started=started, dsns=sent)
        return int(Milter.DISCARD)

    def _postmaster_notice(self) -> int:
        """Postfix's copies to the postmaster (notify_classes bounce, delay, 2bounce; sender double-bounce@) return
        the message they are about, or its headers: for Direct mail received here, the decrypted message. They go
        on without that part, wherever the postmaster's mail goes (often off this host)."""
        started = time.monotonic()
        self._apply(Outcome(withhold_returned(spool.read(self._message())), tuple(self.recipients), {}))
        self._audit("postmaster_notice", rejected={}, started=started)
        return int(Milter.ACCEPT)

    def _own_report(self) -> int:
        """Postfix's own bounce, delay or success notice to a hosted sender stays on this host: it is delivered as it
        is, and what it says about tracked mail is recorded (a failure is then final: no timeout DSN follows)."""
        started = time.monotonic()
        matched = False
        if self.confirmations is not None:
            matched = self.confirmations.postfix_report(spool.read(self._message()), self.queue_id)
        self._audit("postfix_report", rejected={}, started=started, tracked=matched)
        return int(Milter.ACCEPT)

    def _reinjected(self) -> int:
        """The re-injection listener takes a message only with our seal, which it loses on the way into the queue."""
        seals = [(i, v) for i, (n, v) in enumerate(self.fields) if n.lower() == reinject.SEAL_FIELD.lower()]
        head = spool.head(self._message())
        body = spool.read(self._message())[len(head):]
        if len(seals) != 1 or not reinject.is_sealed(seals[0][1], self.wire_sender, self.wire_recipients, body):
            raise SubmissionForbidden("the re-injection listener takes only the notifications directmilter queues "
                                      "itself (no valid seal)")
        self.chgheader(reinject.SEAL_FIELD, 1, "")
        log.info("reinjected", queue_id=self.queue_id, sender=self.wire_sender, recipients=self.wire_recipients)
        return int(Milter.ACCEPT)

    def abort(self) -> int:
        self._reset()
        return int(Milter.CONTINUE)

    def close(self) -> int:
        self._clean_up()
        try:
            self._moved_on()
        except DirectMilterError as exc:  # the record stays unconfirmed: a retry would be delivered, not lost
            log.warning("delivery_not_confirmed", reason=exc.reason)
        return int(Milter.CONTINUE)

    def _clean_up(self) -> None:
        """Remove this transaction's spool files (the message as received, what the workers made of it)."""
        writer: spool.Writer | None = getattr(self, "writer", None)
        if writer is not None:
            writer.abandon()
            self.writer = None
        for message in getattr(self, "_spools", ()):
            spool.remove(message)
        self._spools = []

    # --- the work --------------------------------------------------------------------------------------------

    def _writer(self) -> spool.Writer:
        """Where the message goes as it arrives (Postfix sends the whole header before the first body chunk)."""
        if self.writer is None:
            self.writer = spool.Writer()
            head = "".join(f"{name}: {value}\r\n" for name, value in self.fields)
            self.writer.write(head.encode("utf-8", "surrogateescape") + b"\r\n")
        return self.writer

    def _message(self) -> spool.Message:
        """The message as received: bytes, or a spool file once it is large (so a large body is held nowhere)."""
        if self._whole is None:
            self._whole = self._keep(self._writer().finish())
            self.writer = None
        return self._whole

    def _keep(self, message: spool.Message) -> spool.Message:
        """Remember a file to remove when the transaction ends."""
        if isinstance(message, spool.Spool):
            self._spools.append(message)
        return message

    def _process(self) -> Outcome:
        envelope = MessageEnvelope(self.sender, tuple(self.recipients), self._message())
        if self.kind is Direction.INCOMING:
            return self._kept(self.agent.incoming(envelope))
        secured = self._kept(self.agent.outgoing(envelope))
        if self.group is Group.REMOTE:
            return secured
        # Local to local: the message never leaves the host, but both ends' trust is enforced all the same. The
        # envelope is our own, so neither the routing check nor the size limit (of the sealed form) applies again.
        delivered = self._kept(self.agent.incoming(MessageEnvelope(self.sender, secured.recipients, secured.message),
                                                   own_envelope=True))
        return Outcome(delivered.message, delivered.recipients, {**secured.rejected, **delivered.rejected})

    def _kept(self, outcome: _O) -> _O:
        self._keep(outcome.message)
        return outcome

    def _apply(self, outcome: Outcome) -> None:
        """Edits in the order libmilter requires: recipients, headers, then the body in consecutive chunks.

        A removed recipient is removed in every spelling the client used; a mailbox named twice keeps the first
        spelling only (Postfix would deliver each spelling, and we would confirm each)."""
        for recipient, spellings in self.spellings.items():
            if recipient in outcome.rejected:
                removed = spellings
            else:  # Postfix merges spellings whose internal form is the kept one's; deleting those deletes it
                kept = internal_form(spellings[0])
                removed = [s for s in spellings[1:] if internal_form(s) != kept]
            for spelled in dict.fromkeys(removed):
                self.delrcpt(f"<{spelled}>")
        head = spool.head(outcome.message)
        for edit in header_edits(self.fields, header_fields(head)):
            if edit.value is None:
                self.chgheader(edit.name, edit.index, "")
            else:
                self.addheader(edit.name, edit.value.replace("\r\n", "\n"))
        replaced = False
        for chunk in spool.blocks(outcome.message, start=len(head), block=_CHUNK):
            self.replacebody(chunk)
            replaced = True
        if not replaced:
            self.replacebody(b"")

    def _audit(self, event: str, *, rejected: dict[str, DirectMilterError], started: float, **extra: Any) -> None:
        """One audit record per decision: queue id, Message-ID, envelope, removals and why; never content."""
        seconds = time.monotonic() - started
        log.info(
            event,
            queue_id=self.queue_id,
            message_id=self._message_id(),
            direction=self.kind.value,
            sender=self.sender,
            recipients=self.recipients,
            removed={address: error.reason for address, error in rejected.items()},
            ms=round(seconds * 1000),
            **extra,
        )
        self.runtime.metrics.observe(self.kind.value, event, seconds)

    def _message_id(self) -> str | None:
        return next((value.strip() for name, value in self.fields if name.lower() == "message-id"), None)


def _reply_text(reason: str) -> str:
    """One line of printable ASCII for smfi_setreply: no CR/LF or peer-chosen bytes, '%' doubled, bounded."""
    printable = "".join(c if " " <= c <= "~" else "?" for c in " ".join(reason.split()))
    flat = printable.replace("%", "%%")
    return flat if len(flat) <= 400 else flat[:397] + "..."


def run(config: Config, *, socket_override: str | None = None) -> None:
    """Serve the milter socket from the configuration until SIGTERM / SIGINT; SIGUSR1 reloads."""
    block_daemon_signals()  # before any thread exists, so only libmilter's and the reload thread see them
    if socket_override:
        config = replace(config, milter=replace(config.milter, socket=socket_override))
    settings = config.milter
    spec = settings.socket
    _prepare_socket(spec)
    runtime = DirectMilter.runtime = Runtime(config, socket_override=socket_override).start()
    runtime.watch_reload_signal()
    _sweep_spools(older_than=2 * settings.timeout + 60)
    Milter.factory = DirectMilter
    Milter.set_flags(Milter.CHGBODY | Milter.CHGHDRS | Milter.ADDHDRS | Milter.ADDRCPT | Milter.DELRCPT
                     | Milter.QUARANTINE)
    previous = os.umask(0o777 & ~settings.socket_mode)
    log.info("starting", socket=spec, config=str(config.path))
    systemd.ready_when_listening(spec)
    try:
        Milter.runmilter("directmilter", spec, timeout=settings.timeout)
    except Milter.milter.error as exc:
        raise ConfigError(f"milter socket {spec}: cannot listen ({exc})") from exc
    finally:
        os.umask(previous)
        runtime.close()
    log.info("stopped", socket=spec)


def _sweep_spools(older_than: float, every: float = 300.0) -> None:
    """Now and then, remove spool files no transaction can still be using (older than two milter timeouts)."""
    def loop() -> None:
        while True:
            removed = spool.sweep(older_than)
            if removed:
                log.warning("spool_files_removed", count=removed, older_than=older_than)
            time.sleep(every)

    threading.Thread(target=loop, name="spool-sweeper", daemon=True).start()


def _prepare_socket(spec: str) -> None:
    """Check the socket can be bound, so a bind failure is a clear error instead of libmilter's silence."""
    kind, _, where = spec.partition(":")
    if kind in ("unix", "local"):
        path = Path(where)
        if not path.parent.is_dir():
            raise ConfigError(f"milter socket {spec}: folder {path.parent} does not exist")
        if path.exists() and not path.is_socket():
            raise ConfigError(f"milter socket {spec}: {path} exists and is not a socket")
        return
    if kind in ("inet", "inet6"):
        port, _, host = where.partition("@")
        family = socket.AF_INET6 if kind == "inet6" else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host or ("::1" if kind == "inet6" else "127.0.0.1"), int(port)))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"milter socket {spec}: cannot bind ({exc})") from exc
        return
    raise ConfigError(f"milter socket {spec}: use unix:/path or inet:PORT@HOST")
