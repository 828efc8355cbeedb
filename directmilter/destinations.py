"""Where a URL that a stranger chose may lead: the one rule for AIA, CRL and OCSP fetches and IPKIX certificates.

The URLs in a certificate, or in a DNS CERT record of the recipient's domain, are chosen by whoever made them.
Left alone they would have us reach this host's own services and the HISP's internal network (SSRF). Loopback,
private, link-local, multicast and reserved addresses are refused unless an operator lists their network in
``[trust] fetch_allow``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def address_problem(address: str, allowed: Sequence[Network]) -> str | None:
    """Why a stranger's URL may not lead to ``address`` (an IP address), or None."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if any(ip in network for network in allowed if network.version == ip.version):
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    target = mapped if mapped is not None else ip
    if (target.is_private or target.is_loopback or target.is_link_local or target.is_multicast
            or target.is_reserved or target.is_unspecified):
        return f"{address} is an internal address (not in [trust] fetch_allow)"
    return None


__all__ = ["Network", "address_problem"]
