"""Which way a message goes, decided from the envelope and the client, never from headers.

Outgoing: the envelope sender is a hosted address and the client may submit for it (SASL-authenticated, in a
configured internal network, or connected to a configured submission listener — Postfix's ``{daemon_name}``),
like OpenDKIM's InternalHosts/MacroList. Mail submitted on this host (Postfix's sendmail and pickup, which reach
the milter through cleanup's non_smtpd_milters as an emulated client "localhost [127.0.0.1]" on port 0) is never
authorised by that loopback address: only ``[milter] local_submission`` allows it, with Postfix's
local_login_sender_maps saying which Unix user may use which sender. Incoming: anything else addressed to hosted
recipients. Mail that involves no hosted address is "other mail", passed or refused by policy.

One SMTP transaction carries one kind of recipient: the first recipient fixes the group (hosted or remote) and a
recipient of the other group gets ``452 4.5.3`` so the client sends it in a separate transaction (RFC 5321
4.5.3.1.10). That way nobody ever receives the form meant for the other group, and nothing is lost.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from directmilter.addresses import check_plain
from directmilter.config import Config
from directmilter.errors import ClearCopyForbidden
from directmilter.postfix import AddressMaps


class Direction(enum.Enum):
    OUTGOING = "outgoing"  # hosted sender, trusted client: sign and encrypt
    INCOMING = "incoming"  # to hosted recipients: decrypt, verify, enforce trust


class Group(enum.Enum):
    HOSTED = "hosted"
    REMOTE = "remote"


#: The {daemon_name} of the cleanup service Postfix's bounce, defer and trace daemons use (master.cf.directmilter:
#: ``-o cleanup_service_name=cleanup-report`` on them, ``-o milter_macro_daemon_name=POSTFIX-REPORT`` on it). Only
#: mail through it is Postfix's own report: local accounts reach the ordinary cleanup through pickup.
REPORT_DAEMON = "POSTFIX-REPORT"


@dataclass(frozen=True)
class Client:
    """What the MTA told us about the SMTP client."""

    address: str | None = None  # IP address, None for a local (non-TCP) submission
    authenticated: str | None = None  # {auth_authen}
    daemon_name: str | None = None  # {daemon_name}
    #: Submitted on this host, not over SMTP: Postfix's cleanup emulates a client on port 0 (no TCP peer has one).
    local: bool = False

    @property
    def postfix_report(self) -> bool:
        """A report Postfix itself generated (bounce, delay notice, success notice), not anyone's submission."""
        return self.local and self.daemon_name == REPORT_DAEMON


def client_may_submit(config: Config, client: Client) -> bool:
    """True when the client may send mail as a hosted sender (submission rather than inbound MX traffic)."""
    settings = config.milter
    if client.authenticated and settings.trust_authenticated:
        return True
    if client.local:
        return settings.local_submission
    if client.daemon_name and client.daemon_name in settings.submission_daemons:
        return True
    if client.address is None:
        return False
    try:
        ip = ipaddress.ip_address(client.address.strip("[]").removeprefix("IPv6:"))
    except ValueError:
        return False
    return any(ip in network for network in settings.internal_hosts)


def direction(config: Config, sender: str, client: Client) -> Direction:
    """The direction of a transaction from MAIL FROM and the client; recipients refine it (see :func:`group`)."""
    if sender and config.is_hosted(sender) and client_may_submit(config, client):
        return Direction.OUTGOING
    return Direction.INCOMING


def group(config: Config, recipient: str) -> Group:
    """Hosted or remote, for a recipient already resolved to its mailbox (see :mod:`directmilter.addresses`)."""
    return Group.HOSTED if config.is_hosted(recipient) else Group.REMOTE


def delivered_to(config: Config, maps: AddressMaps | None, resolved: str, mailer: str | None = None,
                 nexthop: str | None = None) -> str:
    """The one mailbox Postfix delivers a resolved recipient to after its virtual aliases, refusing the ways
    decrypted mail could be copied off the Direct domains hosted here (ClearCopyForbidden).

    A hosted address aliased (or Bcc'd by recipient_bcc_maps / always_bcc) to an address outside the hosted
    domains would carry the decrypted message there in clear; an outside address aliased to a Direct mailbox is
    that mailbox (its mail must be secured and trusted like any). Aliases to several Direct mailboxes are refused
    too: each member must be a recipient of its own, so that each one's trust is checked.
    """
    mailbox = config.mailbox(resolved)
    if config.is_hosted(mailbox) and mailer:
        _check_transport(config, mailbox, mailer, nexthop or "")
    if maps is None:
        return check_plain(mailbox) if config.is_hosted(mailbox) else mailbox
    targets = list(dict.fromkeys(config.mailbox(t) for t in maps.virtual(resolved)))
    hosted = [t for t in targets if config.is_hosted(t)]
    if mailer == "local" and targets == [mailbox]:  # local(8): aliases(5) apply after the milter too
        aliases = maps.local_aliases(resolved)
        into = [config.mailbox(t) for t in aliases if "@" in t and config.is_hosted(config.mailbox(t))]
        leaving = [t for t in aliases if not _stays_local(config, t)]
        if leaving and (hosted or into):
            raise ClearCopyForbidden(f"recipient {mailbox}: Postfix's aliases send it to {', '.join(leaving)} "
                                     "(alias_maps), where the decrypted message would leave Direct's control")
        if into and not hosted:  # a local account aliased into Direct mailboxes is those mailboxes
            targets = hosted = list(dict.fromkeys(into))
    if not hosted and not config.is_hosted(mailbox):
        return mailbox
    outside = [t for t in targets if not config.is_hosted(t)]
    if outside:
        raise ClearCopyForbidden(f"recipient {mailbox}: Postfix forwards it to {', '.join(outside)} "
                                 "(canonical or virtual alias maps), where the decrypted message would arrive in "
                                 "clear")
    if len(hosted) > 1:
        raise ClearCopyForbidden(f"recipient {mailbox}: Postfix expands it to several Direct mailboxes "
                                 f"({', '.join(hosted)}); send to each of them, so that each one's trust is checked")
    copies = [c for c in maps.recipient_copies(resolved) if not config.is_hosted(config.mailbox(c))]
    if copies:
        raise ClearCopyForbidden(f"recipient {hosted[0]}: Postfix copies its mail to {', '.join(copies)} "
                                 "(recipient_bcc_maps or always_bcc), where the decrypted message would arrive in "
                                 "clear")
    return check_plain(hosted[0])


def _stays_local(config: Config, target: str) -> bool:
    """An alias target that keeps the message in a Direct mailbox or a local account: a hosted address or a bare
    user name; not a remote address, a command, a file or an include list (any of which may send it on)."""
    target = target.strip().strip('"')
    if target.startswith(("|", "/", ":include:")):
        return False
    if "@" not in target:
        return bool(target) and not any(c in target for c in "%!")
    return config.is_hosted(config.mailbox(target))


#: Postfix transports that deliver nothing anywhere: they bounce, defer or drop (bounces pass the milter).
_DELIVER_NOTHING = frozenset({"error", "retry", "discard"})


def _check_transport(config: Config, mailbox: str, mailer: str, nexthop: str) -> None:
    """A hosted recipient's decrypted mail must be delivered on this host: by one of the delivery_transports, and
    by LMTP only to a unix socket or a loopback address (Postfix's {rcpt_mailer} and {rcpt_host} say how)."""
    allowed = config.milter.delivery_transports
    if mailer not in allowed and mailer not in _DELIVER_NOTHING:
        raise ClearCopyForbidden(
            f"recipient {mailbox}: Postfix delivers it with transport {mailer!r} (to {nexthop or 'its domain'}), "
            f"which could carry the decrypted message off this host in clear ([milter] delivery_transports: "
            f"{', '.join(allowed)})")
    if mailer == "lmtp" and not _on_this_host(nexthop):
        raise ClearCopyForbidden(f"recipient {mailbox}: Postfix delivers it by LMTP to {nexthop}, another host: the "
                                 "decrypted message would cross the network in clear")


def _on_this_host(nexthop: str) -> bool:
    """An LMTP next hop on this host: a unix socket, or a loopback address."""
    text = nexthop.strip()
    if text.startswith("unix:") or text.startswith("private/") or text.startswith("/"):
        return True
    host = text.removeprefix("inet:")
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    else:
        host = host.rpartition(":")[0] if host.count(":") == 1 else host
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("ipv6:")).is_loopback
    except ValueError:
        return False
