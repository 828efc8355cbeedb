"""LDAP discovery (S&I Framework Certificate Discovery for Direct implementation guide).

The domain's LDAP servers come from ``_ldap._tcp.<domain>`` SRV records, tried in priority order (weight decides
within a priority), falling through to the next when one cannot be reached. Each server is bound anonymously, its
base DNs read from the root DSE's namingContexts, and searched for ``mail=<address>`` (or ``mail=<domain>`` for the
organisational certificate) returning ``userCertificate;binary`` and ``userSMIMECertificate``. No SRV record means
the domain publishes nothing in LDAP; every server failing is a temporary failure.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.resolver
import ldap3
from asn1crypto import cms as asn1_cms
from cryptography import x509
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from directmilter.cms.der import load_certificate
from directmilter.discovery.cache import TTLCache
from directmilter.errors import DependencyTimeout, TemporaryFailure
from directmilter.log import get_logger

log = get_logger("directmilter.discovery.ldap")

ATTRIBUTES = ("userCertificate;binary", "userCertificate", "userSMIMECertificate")


@dataclass(frozen=True)
class LdapSettings:
    timeout: float = 5.0
    cache_ttl: float = 3600.0
    negative_ttl: float = 300.0


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    priority: int
    weight: int


class LdapCertificates:
    """A :class:`~directmilter.discovery.base.CertificateSource` searching the domain's LDAP servers."""

    method = "ldap"

    def __init__(self, settings: LdapSettings, resolver: dns.resolver.Resolver,
                 cache: TTLCache[tuple[x509.Certificate, ...]] | None = None) -> None:
        self.settings = settings
        self.resolver = resolver
        self.cache: TTLCache[tuple[x509.Certificate, ...]] = cache or TTLCache()

    def find(self, name: str) -> Sequence[x509.Certificate]:
        name = name.strip().lower()
        cached = self.cache.get(name)
        if cached is not None:
            return cached
        domain = name.rpartition("@")[2]
        targets = self._targets(domain)
        certs = self._search(targets, name) if targets else ()
        self.cache.put(name, certs, self.settings.cache_ttl if certs else self.settings.negative_ttl)
        return certs

    def _targets(self, domain: str) -> list[Target]:
        try:
            answer = self.resolver.resolve(f"_ldap._tcp.{domain}", "SRV", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except dns.resolver.LifetimeTimeout as exc:
            raise DependencyTimeout(f"SRV lookup _ldap._tcp.{domain} timed out") from exc
        except dns.exception.DNSException as exc:
            raise TemporaryFailure(f"SRV lookup _ldap._tcp.{domain} failed: {exc}") from exc
        if answer.rrset is None:
            return []
        records = [Target(r.target.to_text(omit_final_dot=True), r.port, r.priority, r.weight)
                   for r in answer.rrset if r.target.to_text() != "."]
        return order(records)

    def _search(self, targets: list[Target], name: str) -> tuple[x509.Certificate, ...]:
        failures = []
        for target in targets:
            try:
                return self._search_one(target, name)
            except (LDAPException, OSError, TemporaryFailure) as exc:
                failures.append(f"{target.host}:{target.port}: {exc}")
                log.warning("ldap_server_failed", server=f"{target.host}:{target.port}", name=name,
                            error=type(exc).__name__)
        raise TemporaryFailure(f"LDAP lookup for {name}: no server answered ({'; '.join(failures)})")

    def _search_one(self, target: Target, name: str) -> tuple[x509.Certificate, ...]:
        seconds = max(1, math.ceil(self.settings.timeout))  # ldap3 packs these as whole seconds
        server = ldap3.Server(self._address(target.host), port=target.port, get_info=ldap3.DSA,
                              connect_timeout=seconds)
        connection = ldap3.Connection(server, auto_bind=True, receive_timeout=seconds, read_only=True)
        try:
            bases = [str(b) for b in (server.info.naming_contexts if server.info else None) or []]
            certs: list[x509.Certificate] = []
            for base in bases:
                connection.search(base, f"(mail={escape_filter_chars(name)})", attributes=list(ATTRIBUTES),
                                  time_limit=seconds)
                for entry in connection.response or []:
                    for attribute, values in (entry.get("raw_attributes") or {}).items():
                        if attribute.lower().startswith(("usercertificate", "usersmimecertificate")):
                            certs.extend(parse_values(attribute, values, name))
            return tuple(certs)
        finally:
            connection.unbind()

    def _address(self, host: str) -> str:
        """SRV targets are resolved through the same resolver as everything else (not the system's)."""
        try:
            answer = self.resolver.resolve(host, "A")
            return str(answer[0])
        except dns.exception.DNSException:
            return host


def order(records: list[Target]) -> list[Target]:
    """RFC 2782: lowest priority first; within a priority, a weighted random order."""
    ordered: list[Target] = []
    for priority in sorted({r.priority for r in records}):
        pool = [r for r in records if r.priority == priority]
        while pool:
            total = sum(r.weight for r in pool)
            pick = random.uniform(0, total) if total else 0
            running = 0
            for record in pool:
                running += record.weight
                if running >= pick:
                    break
            ordered.append(record)
            pool.remove(record)
    return ordered


def parse_values(attribute: str, values: list[bytes], name: str) -> list[x509.Certificate]:
    """DER certificates; userSMIMECertificate holds a PKCS#7 SignedData with certificates (RFC 2798)."""
    certs: list[x509.Certificate] = []
    for value in values:
        try:
            if attribute.lower().startswith("usersmimecertificate"):
                signed = asn1_cms.ContentInfo.load(value)["content"]
                certs.extend(load_certificate(c.chosen.dump()) for c in signed["certificates"])
            else:
                certs.append(load_certificate(value))
        except (ValueError, TypeError, KeyError):
            log.warning("ldap_bad_certificate", name=name, attribute=attribute)
    return certs
