"""Which way a message goes, decided from the envelope and the client, never from headers.

Outgoing: the envelope sender is a hosted address and the client may submit for it (SASL-authenticated, in a
configured internal network, or connected to a configured submission listener — Postfix's ``{daemon_name}``),
like OpenDKIM's InternalHosts/MacroList. Incoming: anything else addressed to hosted recipients. Mail that
involves no hosted address is "other mail", passed or refused by policy.

One SMTP transaction carries one kind of recipient: the first recipient fixes the group (hosted or remote) and a
recipient of the other group gets ``452 4.5.3`` so the client sends it in a separate transaction (RFC 5321
4.5.3.1.10). That way nobody ever receives the form meant for the other group, and nothing is lost.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from directmilter.config import Config


class Direction(enum.Enum):
    OUTGOING = "outgoing"  # hosted sender, trusted client: sign and encrypt
    INCOMING = "incoming"  # to hosted recipients: decrypt, verify, enforce trust
    OTHER = "other"  # no hosted party: policy decides


class Group(enum.Enum):
    HOSTED = "hosted"
    REMOTE = "remote"


@dataclass(frozen=True)
class Client:
    """What the MTA told us about the SMTP client."""

    address: str | None = None  # IP address, None for a local (non-TCP) submission
    authenticated: str | None = None  # {auth_authen}
    daemon_name: str | None = None  # {daemon_name}


def client_may_submit(config: Config, client: Client) -> bool:
    """True when the client may send mail as a hosted sender (submission rather than inbound MX traffic)."""
    settings = config.milter
    if client.authenticated and settings.trust_authenticated:
        return True
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
    return Group.HOSTED if config.is_hosted(recipient) else Group.REMOTE
