"""A remote HISP whose security agent is a script around the ``openssl`` CLI: no directmilter on that side.

This is how a certification lab tries an STA's confirmation chain (the ONC Edge Testing Tool's message-tracking
cases): a plain Postfix receives for the remote domain, and the "agent" opens what arrived by hand and answers or
stays silent as each case needs. Everything it reads and writes is checked with tools independent of the product:
``openssl cms`` for the cryptography and the standard library's ``email`` package for the reports, so a defect in
directmilter's own parser cannot hide one in what it sends.

* :meth:`ScriptedHisp.received` opens every message the remote's Postfix delivered to an address and fails the
  test if any arrived in clear, does not decrypt with that recipient's key, or does not verify under the anchor.
* :meth:`ScriptedHisp.answer` sends an MDN (processed, dispatched, ...) or a failed DSN about a received message
  back to its sender, signed by the recipient and encrypted to the sender's certificate, as RFC 3798 / RFC 3464
  and the Implementation Guide for Delivery Notification shape them.
* :meth:`ScriptedHisp.send` originates a secured message, for the cases where the STA under test receives.
* :func:`read_report` reads a report (in clear, as delivered on the STA's host, or opened) into plain fields.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import itertools
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

import opensslpeer as peer
from cryptography import x509
from mta import Postfix, SmtpResult, submit, wait_until
from pki import Issued

_counter = itertools.count(1)


@dataclass(frozen=True)
class Report:
    """The fields of a multipart/report that a person or a lab checks: which kind, about which message, and the
    per-recipient outcome. ``fields`` holds the per-message fields, ``recipients`` one dict per recipient block
    (all names lower-case)."""

    kind: str  # "disposition-notification" or "delivery-status"
    headers: email.message.Message
    text: str  # the human-readable first part
    fields: Mapping[str, str]
    recipients: Sequence[Mapping[str, str]]

    @property
    def disposition(self) -> str | None:
        """processed, dispatched, failed, ... (MDN only)."""
        value = self.fields.get("disposition")
        return value.rpartition(";")[2].strip().lower() if value else None

    @property
    def original_message_id(self) -> str | None:
        return self.fields.get("original-message-id") or self.fields.get("x-original-message-id")

    def about(self) -> list[tuple[str, str]]:
        """(final recipient, outcome) pairs: the MDN's disposition, or each DSN group's Action and Status."""
        if self.kind == "disposition-notification":
            return [(_address(self.fields.get("final-recipient", "")), self.disposition or "")]
        return [(_address(r.get("final-recipient", "")), f"{r.get('action', '').lower()} {r.get('status', '')}")
                for r in self.recipients]


def _address(value: str) -> str:
    return value.rpartition(";")[2].strip().lower()


def _blocks(text: str) -> list[dict[str, str]]:
    """RFC 3464 / 3798 field blocks: ``Name: value`` lines (folded lines joined), blocks split by blank lines."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, ""
        elif line[0] in " \t" and last:
            current[last] += " " + line.strip()
        else:
            name, _, value = line.partition(":")
            last = name.strip().lower()
            current[last] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def _parse(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def _unwrap(message: email.message.Message) -> email.message.Message:
    """The message inside a message/rfc822 wrapper (AS 2.x wrapping), or the message itself."""
    while message.get_content_type() == "message/rfc822":
        inner = message.get_payload()
        message = inner[0] if isinstance(inner, list) else _parse(inner.encode())
    return message


def read_report(data: bytes | email.message.Message) -> Report | None:
    """The report in ``data`` (a whole message, wrapped or not), or None when it is not a multipart/report."""
    message = _unwrap(_parse(data) if isinstance(data, bytes) else data)
    if message.get_content_type() != "multipart/report":
        return None
    kind = (message.get_param("report-type") or "").lower()
    parts = message.get_payload()
    assert isinstance(parts, list) and len(parts) >= 2, f"a multipart/report needs two parts: {message}"
    text = parts[0].get_payload(decode=True).decode("utf-8", "replace")
    status = parts[1]
    body = status.as_string().split("\n\n", 1)[1] if "\n\n" in status.as_string() else ""
    blocks = _blocks(body)
    assert blocks, f"empty {status.get_content_type()} part"
    return Report(kind=kind, headers=message, text=text, fields=blocks[0], recipients=blocks[1:])


@dataclass(frozen=True)
class Opened:
    """One message as the remote's agent saw it: the wire form, the verified content, and who signed it."""

    to: str  # the mailbox it was delivered to
    wire: bytes
    message: email.message.Message  # the signed content, unwrapped
    signer: x509.Certificate

    @property
    def message_id(self) -> str | None:
        return self.message.get("Message-ID")

    @property
    def report(self) -> Report | None:
        return read_report(self.message)

    @property
    def return_path(self) -> str:
        """The envelope sender Postfix recorded at delivery."""
        return _parse(self.wire).get("Return-Path", "").strip().strip("<>")

    def signer_names(self) -> set[str]:
        try:
            san = self.signer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return set()
        return {n.lower() for n in san.get_values_for_type(x509.RFC822Name) + san.get_values_for_type(x509.DNSName)}


@dataclass
class ScriptedHisp:
    """The remote side: ``postfix`` receives for it; ``keys`` are its users' certificates and keys; ``anchor`` is
    the root it trusts; ``peer_port`` is where it sends (the STA under test's MX); ``peer_certs`` are the
    certificates it encrypts to, by address."""

    postfix: Postfix
    keys: Mapping[str, Issued]
    anchor: Path
    peer_port: int
    peer_certs: Mapping[str, Path]
    _opened: dict[bytes, Opened] = field(default_factory=dict)

    def received(self, address: str) -> list[Opened]:
        """Everything delivered to ``address``, oldest first, each decrypted with its key and verified under the
        anchor; an AssertionError if anything arrived in clear."""
        return [self._open(address, wire) for wire in self.postfix.maildir(address)]

    def _open(self, address: str, wire: bytes) -> Opened:
        if wire in self._opened:
            return self._opened[wire]
        outer = _parse(wire)
        assert outer.get_content_type() in ("application/pkcs7-mime", "application/x-pkcs7-mime"), (
            f"{address} received a message that is not encrypted (Content-Type {outer.get_content_type()}):\n"
            f"{wire[:600]!r}")
        signed = peer.decrypt(wire, self.keys[address])
        with tempfile.TemporaryDirectory() as tmp:
            signer = Path(tmp) / "signer.pem"
            content = peer.run(["cms", "-verify", "-binary", "-crlfeol", "-CAfile", self.anchor, "-purpose", "any",
                                "-signer", signer], signed)
            certificate = x509.load_pem_x509_certificate(signer.read_bytes())
        opened = Opened(to=address, wire=wire, message=_unwrap(_parse(content)), signer=certificate)
        self._opened[wire] = opened
        return opened

    def about(self, address: str, message_id: str) -> list[Opened]:
        """What ``address`` received that is the message ``message_id`` or a report about it, oldest first."""
        return [o for o in self.received(address)
                if o.message_id == message_id or (o.report is not None and o.report.original_message_id == message_id)]

    def wait_for(self, address: str, message_id: str, timeout: float = 30) -> Opened:
        """The message ``message_id`` once it was delivered to ``address``."""
        def probe() -> Opened | None:
            return next((o for o in self.received(address) if o.message_id == message_id), None)

        return wait_until(probe, f"{message_id} at {address}", timeout=timeout)

    # --- sending ----------------------------------------------------------------------------------------------------

    def send(self, sender: str, recipient: str, content: bytes, *, subject: str = "Referral",
             headers: Mapping[str, str] | None = None, mail_from: str | None = None) -> tuple[str, SmtpResult]:
        """A message from ``sender`` (one of ``keys``) to ``recipient``: the RFC 5322 message (``headers`` added)
        wrapped in message/rfc822, signed, encrypted to ``peer_certs[recipient]`` and sent to the peer's MX.
        ``headers`` may replace the defaults (a ``From`` given there is the author in the signed message and in the
        outer header alike); ``mail_from`` is the SMTP MAIL FROM, ``sender`` unless given (``""``: the null
        sender, ``MAIL FROM:<>``). Returns its Message-ID and the SMTP outcome."""
        domain = sender.rpartition("@")[2]
        message_id = f"<remote-{next(_counter)}-{id(self):x}@{domain}>"
        head = {"From": sender, "To": recipient, "Subject": subject, "Date": formatdate(localtime=False),
                "Message-ID": message_id, "MIME-Version": "1.0", **(headers or {})}
        inner = "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode() + content
        outer = {k: head[k] for k in ("From", "To", "Subject", "Date", "Message-ID")}
        signed = peer.sign(b"Content-Type: message/rfc822\r\n\r\n" + inner, self.keys[sender])
        wire = ("".join(f"{k}: {v}\r\n" for k, v in outer.items()).encode()
                + peer.encrypt(signed, [self.peer_certs[recipient]]))
        return message_id, submit(self.peer_port, sender if mail_from is None else mail_from, [recipient], wire)

    def answer(self, about: Opened, disposition: str | None = None, *, dsn_status: str | None = None,
               text: str = "", final_destination: bool = False, original_field: bool = True) -> SmtpResult:
        """Report on ``about`` to its sender: an MDN with ``disposition`` (processed, dispatched, failed), or a
        failed DSN with ``dsn_status`` (e.g. 5.2.2) and ``text`` as the Status comment. ``final_destination`` adds
        the Guide's X-DIRECT-FINAL-DESTINATION-DELIVERY field to the MDN; without ``original_field`` the DSN names
        the message in In-Reply-To only (no X-Original-Message-ID, AS 3.1.2's fallback)."""
        me = about.to
        original_sender = _address(about.message.get("From", "")).strip("<>") or about.return_path
        original = about.message_id or ""
        _, result = self.report(me, original_sender, original, disposition, dsn_status=dsn_status, text=text,
                                final_destination=final_destination, original_field=original_field)
        return result

    def report(self, me: str, to: str, original: str, disposition: str | None = None, *,
               dsn_status: str | None = None, text: str = "", final_destination: bool = False,
               original_field: bool = True, headers: Mapping[str, str] | None = None) -> tuple[str, SmtpResult]:
        """What :meth:`answer` sends, from ``me`` (one of ``keys``) to ``to`` about the message whose Message-ID is
        ``original`` (any one, also of a message ``to`` never sent), with ``headers`` added to the report's own
        header (e.g. Disposition-Notification-To). Returns the report's Message-ID and the SMTP outcome."""
        assert (disposition is None) != (dsn_status is None), "an MDN or a DSN"
        if dsn_status is not None:
            kind, part_type = "delivery-status", "message/delivery-status"
            status = (f"Reporting-MTA: dns; {self.postfix.name}\r\n"
                      + (f"X-Original-Message-ID: {original}\r\n" if original_field else "") + "\r\n"
                      f"Final-Recipient: rfc822; {me}\r\nAction: failed\r\nStatus: {dsn_status}"
                      + (f" ({text})" if text else "") + "\r\n")
            human = f"Your message could not be delivered to {me}: {text or dsn_status}.\r\n"
            subject = "Delivery Status Notification (Failure)"
        else:
            kind, part_type = "disposition-notification", "message/disposition-notification"
            status = (f"Reporting-UA: {self.postfix.name}; openssl script\r\nOriginal-Recipient: rfc822; {me}\r\n"
                      f"Final-Recipient: rfc822; {me}\r\nOriginal-Message-ID: {original}\r\n"
                      f"Disposition: automatic-action/MDN-sent-automatically; {disposition}\r\n"
                      + ("X-DIRECT-FINAL-DESTINATION-DELIVERY: \r\n" if final_destination else "")
                      + (f"Failure: {text}\r\n" if text and disposition == "failed" else ""))
            human = f"Your message to {me} was {disposition}.\r\n"
            subject = f"Processed: {disposition}"
        boundary = f"report-{next(_counter)}"
        body = (f'Content-Type: multipart/report; report-type={kind}; boundary="{boundary}"\r\n\r\n'
                f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{human}"
                f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n{status}\r\n--{boundary}--\r\n").encode()
        extra = {"In-Reply-To": original} if original else {}
        return self.send(me, to, body, subject=subject, headers={**extra, **(headers or {})} or None)
