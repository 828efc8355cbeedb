"""The agent: the spec's ProcessOutgoing and ProcessIncoming, from an envelope to a decision and a new message.

It never speaks SMTP and never imports pymilter; it asks discovery, trust and the configuration through small
interfaces so a test can hand it a fixed set of certificates.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from directmilter import spool
from directmilter.agent.context import AgentContext
from directmilter.agent.crypto import CryptoRunner, InProcess
from directmilter.agent.envelope import IncomingMessage, MessageEnvelope, OutgoingMessage
from directmilter.agent.incoming import process_incoming
from directmilter.agent.outgoing import process_outgoing, recipient_certificates, sender_identities
from directmilter.config import Config
from directmilter.discovery import CertificateSource, ChainedSources, LocalCertificates
from directmilter.discovery.cache import TTLCache
from directmilter.discovery.dns import DnsCertificates, DnsSettings, make_resolver
from directmilter.discovery.ldap import LdapCertificates, LdapSettings
from directmilter.errors import MessageTooLarge
from directmilter.trust.bundles import BundleStore
from directmilter.trust.fetching import CachingFetcherBackend
from directmilter.trust.validator import TrustValidator

__all__ = ["RCPT_SECONDS", "Agent", "IncomingMessage", "MessageEnvelope", "OutgoingMessage"]

#: Time for one RCPT TO decision (discovery and validation): below Postfix's milter_command_timeout (30 s), so a
#: slow publisher defers the recipient here rather than tripping Postfix's milter_default_action.
RCPT_SECONDS = 25.0


def default_sources(config: Config) -> list[CertificateSource]:
    """Our own hosted certificates, the out-of-band store, then DNS CERT and LDAP as configured (AS 2.3)."""
    hosted = LocalCertificates(
        (i.certificate for party in (*config.domains.values(), *config.addresses.values()) for i in party.identities),
        "hosted",
    )
    sources: list[CertificateSource] = [hosted, LocalCertificates(config.certificates, "local")]
    settings = config.discovery
    if settings.dns or settings.ldap:
        dns_settings = DnsSettings(settings.dns_servers, settings.timeout, settings.negative_ttl,
                                   settings.http_timeout, settings.http_max_bytes, config.trust.fetch_allow)
        resolver = make_resolver(dns_settings)
        if settings.dns:
            sources.append(DnsCertificates(dns_settings, resolver=resolver, cache=TTLCache(settings.cache_size)))
        if settings.ldap:
            ldap_settings = LdapSettings(settings.timeout, settings.ldap_cache_ttl, settings.negative_ttl)
            sources.append(LdapCertificates(ldap_settings, resolver, TTLCache(settings.cache_size)))
    return sources


def check_size(config: Config, size: int) -> None:
    """Refuse a message over ``[limits] max_message_size`` before any work is spent on it."""
    limit = config.limits.max_message_size
    if size > limit:
        raise MessageTooLarge(f"message of {size} bytes is larger than the limit of {limit} bytes "
                              "([limits] max_message_size)")


def make_validator(config: Config) -> TrustValidator:
    """One validator for the process: one event loop and, when fetching, one HTTP client for AIA, CRL and OCSP."""
    backend = (CachingFetcherBackend(per_request_timeout=config.trust.http_timeout,
                                     max_bytes=config.trust.max_download, allowed=config.trust.fetch_allow)
               if config.trust.fetch else None)
    return TrustValidator(
        allow_sha1=config.crypto.certificate_sha1,
        revocation_mode=config.trust.revocation,
        min_rsa_bits=config.trust.min_rsa_bits,
        fetcher_backend=backend,
        timeout=max(20.0, 4 * config.trust.http_timeout),
    )


class Agent:
    """One configured STA: call :meth:`outgoing` for hosted senders' mail and :meth:`incoming` for mail to them."""

    def __init__(
        self,
        config: Config,
        *,
        sources: Sequence[CertificateSource] = (),
        validator: TrustValidator | None = None,
        workers: int = 0,
    ) -> None:
        """``workers`` > 0 seals and opens in that many worker processes (the milter), 0 in the caller's thread."""
        self._owns_validator = validator is None
        crypto: CryptoRunner = InProcess(config)
        if workers > 0:
            from directmilter.agent.workers import WorkerPool

            crypto = WorkerPool(config, workers, timeout=max(30.0, config.milter.timeout / 2),
                                inline_below=config.milter.inline_below)
        self.context = AgentContext(
            config=config,
            source=ChainedSources(*default_sources(config), *sources),
            validator=validator or make_validator(config),
            intermediates=tuple(config.certificates),
            bundles=BundleStore(refresh=config.trust.bundle_refresh, timeout=config.trust.http_timeout,
                                max_bytes=config.trust.max_download, cache_dir=config.trust.bundle_cache),
            crypto=crypto,
        )

    def outgoing(self, envelope: MessageEnvelope, *, moment: datetime | None = None) -> OutgoingMessage:
        check_size(self.context.config, spool.size(envelope.message))
        return process_outgoing(self.context, envelope, moment, self.context.config.limits.budget())

    def incoming(self, envelope: MessageEnvelope, *, moment: datetime | None = None,
                 own_envelope: bool = False) -> IncomingMessage:
        """``own_envelope``: the message was just sealed here for hosted recipients (local to local), so its
        envelope cannot have been tampered with and its sealed size is ours, not the sender's."""
        if not own_envelope:
            check_size(self.context.config, spool.size(envelope.message))
        return process_incoming(self.context, envelope, moment, check_routing=not own_envelope,
                                budget=self.context.config.limits.budget())

    def check_sender(self, sender: str, *, moment: datetime | None = None) -> None:
        """Raise unless ``sender`` may send secured mail from here (for decisions at MAIL FROM time)."""
        sender_identities(self.context, sender, moment)

    def check_recipient(self, sender: str, recipient: str, *, moment: datetime | None = None) -> None:
        """Raise unless ``sender`` trusts a certificate of ``recipient`` (for decisions at RCPT TO time, within
        :data:`RCPT_SECONDS`)."""
        recipient_certificates(self.context, sender, recipient, moment, self.context.config.limits.budget(RCPT_SECONDS))

    def start_refreshing(self) -> None:
        """Keep the trust bundles fresh from a background thread (the long-running milter calls this)."""
        self.context.bundles.start(self.context.config.bundle_urls())

    def close(self) -> None:
        self.context.runner.close()
        self.context.bundles.close()
        if self._owns_validator:
            self.context.validator.close()
