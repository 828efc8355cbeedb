"""DNS CERT discovery (RFC 4398; Applicability Statement 5).

``bob@direct.b.test`` is looked up as ``bob.direct.b.test`` (5.1: '@' becomes '.'), a domain as itself (5.2).
Type 1 (PKIX) records carry a DER certificate, type 4 (IPKIX) a URL to one (RFC 2585), fetched over HTTP with a
size and a time limit; other types are ignored (5.3). Answers are cached for their TTL, "nothing there" for the
negative TTL. A lookup that did not complete (timeout, SERVFAIL, unreachable server, IPKIX server unreachable) is a
:class:`~directmilter.errors.TemporaryFailure`; the message waits and is retried. A record that does not parse is
skipped and logged, never hiding a good one beside it.
"""

from __future__ import annotations

import functools
import http.client
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from cryptography import x509

from directmilter.cms.der import load_certificate
from directmilter.destinations import Network, address_problem
from directmilter.discovery.cache import TTLCache
from directmilter.errors import DependencyTimeout, TemporaryFailure
from directmilter.log import get_logger

log = get_logger("directmilter.discovery.dns")

PKIX, IPKIX = 1, 4


class _RedirectRefused(urllib.request.HTTPRedirectHandler):
    """An IPKIX URL is answered by its own host: a redirect is an HTTP error, not followed."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that was checked, not to what the name resolves to a moment later: a domain that
    answers an allowed address for the check and an internal one for the connection (DNS rebinding) gains nothing."""

    def __init__(self, host: str, *, address: str, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """:class:`_PinnedHTTPConnection` with TLS: the certificate is still checked against the URL's host name."""

    def __init__(self, host: str, *, address: str, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


class _Pinned(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    def __init__(self, address: str) -> None:
        urllib.request.HTTPHandler.__init__(self)
        urllib.request.HTTPSHandler.__init__(self)
        self.address = address

    def http_open(self, req: Any) -> Any:
        return self.do_open(functools.partial(_PinnedHTTPConnection, address=self.address), req)

    def https_open(self, req: Any) -> Any:
        return self.do_open(functools.partial(_PinnedHTTPSConnection, address=self.address), req,
                            context=self._context)  # type: ignore[attr-defined]


def _opener(address: str) -> urllib.request.OpenerDirector:
    """No redirects, and every connection to ``address``."""
    return urllib.request.build_opener(_RedirectRefused, _Pinned(address))


@dataclass(frozen=True)
class DnsSettings:
    servers: tuple[tuple[str, int], ...] = ()  # empty: the system resolver (/etc/resolv.conf)
    timeout: float = 5.0
    negative_ttl: float = 300.0
    http_timeout: float = 5.0
    http_max_bytes: int = 65536
    fetch_allow: tuple[Network, ...] = ()  # internal networks an IPKIX URL may lead to ([trust] fetch_allow)


def make_resolver(settings: DnsSettings) -> dns.resolver.Resolver:
    """A resolver with EDNS (CERT answers exceed 512 bytes; truncated UDP answers are retried over TCP)."""
    resolver = dns.resolver.Resolver(configure=not settings.servers)
    if settings.servers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in settings.servers]
    resolver.use_edns(0, 0, 4096)
    resolver.lifetime = settings.timeout
    resolver.timeout = min(settings.timeout, 2.0)
    resolver.cache = None  # our own cache keeps parsed certificates
    return resolver


def dns_name(name: str) -> dns.name.Name | None:
    """The owner name for an address or domain, or None when the address cannot be a DNS name (5.1)."""
    if any(c.isspace() or c in '"\\()' for c in name):
        return None  # a quoted local part cannot become a host name
    try:
        return dns.name.from_text(name.strip().lower().replace("@", ".", 1))
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return None


class DnsCertificates:
    """A :class:`~directmilter.discovery.base.CertificateSource` reading CERT records."""

    method = "dns"

    def __init__(self, settings: DnsSettings, *, resolver: dns.resolver.Resolver | None = None,
                 cache: TTLCache[tuple[x509.Certificate, ...]] | None = None) -> None:
        self.settings = settings
        self.resolver = resolver or make_resolver(settings)
        self.cache: TTLCache[tuple[x509.Certificate, ...]] = cache or TTLCache()

    def find(self, name: str) -> Sequence[x509.Certificate]:
        owner = dns_name(name)
        if owner is None:
            log.info("dns_not_a_name", name=name)
            return ()
        key = owner.to_text()
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        certs, ttl = self._query(owner, name)
        self.cache.put(key, certs, ttl if certs else min(ttl, self.settings.negative_ttl))
        return certs

    def _query(self, owner: dns.name.Name, name: str) -> tuple[tuple[x509.Certificate, ...], float]:
        try:
            answer = self.resolver.resolve(owner, "CERT", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return (), self.settings.negative_ttl
        except dns.resolver.LifetimeTimeout as exc:
            raise DependencyTimeout(f"DNS CERT lookup for {name} ({owner}) timed out") from exc
        except (dns.resolver.NoNameservers, dns.exception.DNSException) as exc:
            raise TemporaryFailure(f"DNS CERT lookup for {name} ({owner}) failed: {exc}") from exc
        if answer.rrset is None:
            return (), self.settings.negative_ttl
        certs = []
        for rdata in answer.rrset:
            cert = self._certificate(rdata.certificate_type, rdata.certificate, owner)
            if cert is not None:
                certs.append(cert)
        return tuple(certs), float(answer.rrset.ttl)

    def _certificate(self, kind: int, data: bytes, owner: dns.name.Name) -> x509.Certificate | None:
        if kind == IPKIX:
            url = data.decode("ascii", "replace").strip()
            data = self._fetch(url, owner)
            if not data:
                return None
        elif kind != PKIX:
            return None  # PGP, SPKI, ...: not for S/MIME (5.3)
        try:
            return load_certificate(data)
        except ValueError:
            log.warning("dns_bad_certificate", owner=owner.to_text(), type=kind)
            return None

    def _destination(self, url: str) -> tuple[str | None, str]:
        """Why the IPKIX URL may not be fetched (see :mod:`directmilter.destinations`), or None; and the address
        to connect to. Every address the host name resolves to must be allowed."""
        try:
            parts = urllib.parse.urlsplit(url)
            host, port = parts.hostname, parts.port or (443 if parts.scheme.lower() == "https" else 80)
        except ValueError as exc:
            return f"not a URL ({exc})", ""
        if not host:
            return "the URL names no host", ""
        try:
            found = sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
        except (OSError, UnicodeError) as exc:
            return f"{host} does not resolve ({exc})", ""
        problems = [p for a in found if (p := address_problem(a, self.settings.fetch_allow))]
        return (problems[0] if problems else None), found[0] if found else ""

    def _fetch(self, url: str, owner: dns.name.Name) -> bytes:
        """The DER certificate behind an IPKIX URL; b"" (skipped) for a bad answer, TemporaryFailure if unreachable."""
        if not url.lower().startswith(("http://", "https://")):
            log.warning("ipkix_bad_url", owner=owner.to_text(), url=url)
            return b""
        problem, address = self._destination(url)
        if problem is not None:
            log.warning("ipkix_refused", owner=owner.to_text(), url=url, reason=problem)
            return b""
        limit = self.settings.http_max_bytes
        try:
            with _opener(address).open(url, timeout=self.settings.http_timeout) as response:
                body: bytes = response.read(limit + 1)
        except urllib.error.HTTPError as exc:
            log.warning("ipkix_http_error", owner=owner.to_text(), url=url, status=exc.code)
            return b""
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise TemporaryFailure(f"IPKIX certificate {url} for {owner} could not be fetched: {exc}") from exc
        if len(body) > limit:
            log.warning("ipkix_too_large", owner=owner.to_text(), url=url, limit=limit)
            return b""
        return body
