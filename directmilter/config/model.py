"""The configuration's model: every section, key, type, default and meaning, stated once.

The flat sections ([agent], [milter], [discovery], [trust], [notify], [limits]) are dataclasses whose fields are
declared with :func:`setting`: the field's name is the TOML key, its default the default, and its kind
(:mod:`directmilter.config.kinds`) how a value is read, checked and shown. The loader
(:mod:`directmilter.config.load`), ``check-config`` (:mod:`directmilter.config.describe`) and the test that keeps the
sample file and the man page complete all read these declarations; nothing else lists the keys. Hosted domains and
addresses (:class:`Party`), [actions] and [policy] have shapes of their own and are loaded by hand.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from cryptography import x509

from directmilter.addresses import base_mailbox
from directmilter.budget import WorkBudget
from directmilter.cms.algorithms import (
    CIPHERS_ACCEPT,
    CIPHERS_SEND,
    DIGESTS_ACCEPT,
    DIGESTS_SEND,
    KEY_TRANSPORTS,
    RECIPIENT_IDS,
)
from directmilter.config import kinds
from directmilter.destinations import Network
from directmilter.keys.identity import PrivateIdentity
from directmilter.policy import Actions
from directmilter.postfix import PostfixSettings
from directmilter.trust.certificate_policy import DIRECTIONS as POLICY_DIRECTIONS
from directmilter.trust.certificate_policy import CertificatePolicy
from directmilter.trust.validator import REVOCATION_MODES

# --- algorithm names (the CMS layer maps these to OIDs and implements them; configuration only names them) ----

DEFAULT_DIGEST = "sha256"
DEFAULT_CIPHER = "aes256-cbc"
DEFAULT_KEY_TRANSPORT = "rsa-pkcs1v15"
DEFAULT_RECIPIENT_ID = "issuer-serial"
DEFAULT_ACCEPT_DIGESTS: frozenset[str] = frozenset(DIGESTS_ACCEPT)
DEFAULT_ACCEPT_CIPHERS: frozenset[str] = frozenset(CIPHERS_ACCEPT)
DEFAULT_CERTIFICATE_SHA1 = True

#: Algorithms the Applicability Statement requires receivers to support (check-config warns when not accepted).
REQUIRED_DIGESTS = ("sha256",)
REQUIRED_CIPHERS = ("aes128-cbc", "aes256-cbc")

#: Names an operator may write for algorithms the Applicability Statement forbids, with the reason (the CMS
#: layer does not implement them at all; these tables only turn a familiar name into a clear refusal).
_WEAK_DIGEST = "MD5 and other digests weaker than SHA-1 must not be used (Applicability Statement 2.6)"
_FORBIDDEN_DIGESTS = dict.fromkeys(("md5", "md4", "md2", "rsa-md5", "md5-sha1"), _WEAK_DIGEST)
_SHA1_SEND = "STAs must not create signatures with SHA-1 (Applicability Statement 2.6)"
_SHA1_NAMES = ("sha1", "sha-1", "sha")
_WEAK_CIPHER = (
    "3DES, DES, RC2 and other ciphers weaker than AES-128 must not be used (Applicability Statement 2.7)"
)
_FORBIDDEN_CIPHERS = dict.fromkeys(
    (
        "3des", "des3", "des-ede3", "des-ede3-cbc", "tripledes", "triple-des", "3des-cbc", "tdes",
        "des", "des-cbc", "des-ede", "des-ede-cbc",
        "rc2", "rc2-cbc", "rc2-40", "rc2-40-cbc", "rc2-64", "rc2-64-cbc", "rc2-128", "rc2-128-cbc",
        "rc4", "arcfour", "idea", "idea-cbc", "cast5", "cast5-cbc", "cast128", "null", "none",
    ),
    _WEAK_CIPHER,
)  # fmt: skip


def _digest_to_send(name: str) -> str | None:
    return _SHA1_SEND if name in _SHA1_NAMES else _FORBIDDEN_DIGESTS.get(name)


_DIGEST_SEND = kinds.Algorithm(DIGESTS_SEND, _digest_to_send)
_DIGEST_ACCEPT = kinds.Algorithm(DIGESTS_ACCEPT, _FORBIDDEN_DIGESTS.get)
_CIPHER_SEND = kinds.Algorithm(CIPHERS_SEND, _FORBIDDEN_CIPHERS.get)
_CIPHER_ACCEPT = kinds.Algorithm(CIPHERS_ACCEPT, _FORBIDDEN_CIPHERS.get)

Direction = Literal["incoming", "outgoing"]
DIRECTIONS: tuple[Direction, ...] = ("incoming", "outgoing")

#: Where Postfix's main.cf is looked for when [milter] postfix_config is not set.
DEFAULT_POSTFIX_CONFIG = Path("/etc/postfix")

_FLAG, _SECONDS, _COUNT = kinds.Flag(), kinds.Positive(), kinds.Positive(whole=True)


def setting(default: Any, kind: kinds.Kind, doc: str) -> Any:
    """A configuration key: its default, its kind and one line on what it means (for check-config and the docs)."""
    return field(default=default, metadata={"kind": kind, "doc": doc})


def settings_of(section: type[Any]) -> tuple[Field[Any], ...]:
    """The keys of a flat section, in declaration order."""
    return tuple(f for f in fields(section) if "kind" in f.metadata)


def _delimiters(text: str) -> str | None:
    if any(c.isalnum() or c in "@\"" or c.isspace() for c in text):
        return f"{text!r}: delimiters are punctuation such as \"+\" or \"-\""
    return None


# --- the flat sections ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CryptoPolicy:
    """[agent]: the algorithms for sending (one each) and the sets accepted when receiving."""

    digest: str = setting(DEFAULT_DIGEST, _DIGEST_SEND, "the digest of the signatures we make")
    cipher: str = setting(DEFAULT_CIPHER, _CIPHER_SEND, "the content cipher of the messages we encrypt")
    key_transport: str = setting(DEFAULT_KEY_TRANSPORT, kinds.Algorithm(KEY_TRANSPORTS),
                                 "how the content key is encrypted to each recipient")
    recipient_id: str = setting(DEFAULT_RECIPIENT_ID, kinds.Algorithm(RECIPIENT_IDS),
                                "how each recipient's certificate is named in the message")
    accept_digests: frozenset[str] = setting(DEFAULT_ACCEPT_DIGESTS, kinds.Algorithms(_DIGEST_ACCEPT),
                                             "the signature digests accepted on receipt")
    accept_ciphers: frozenset[str] = setting(DEFAULT_ACCEPT_CIPHERS, kinds.Algorithms(_CIPHER_ACCEPT),
                                             "the content ciphers accepted on receipt")
    certificate_sha1: bool = setting(DEFAULT_CERTIFICATE_SHA1, _FLAG,
                                     "SHA-1 signed certificates accepted in trust paths")


@dataclass(frozen=True)
class MilterSettings:
    """[milter]: how the milter listens and how it tells submission (outgoing) from inbound mail."""

    socket: str = setting("unix:/run/directmilter/directmilter.sock", kinds.Text(kinds.prefixed(
        ("unix:", "local:", "inet:", "inet6:"), "{value!r}: use unix:/path or inet:PORT@HOST")),
        "where the milter listens (unix:/path, inet:PORT@HOST, inet6:PORT@HOST)")
    socket_mode: int = setting(0o660, kinds.Octal(), "the permissions of a unix socket")
    #: Empty by default: every local account can open a connection from 127.0.0.1, so loopback proves nothing
    #: about who submits.
    internal_hosts: tuple[Network, ...] = setting(
        (), kinds.Networks(), "networks whose SMTP clients may submit for hosted senders without logging in")
    submission_daemons: tuple[str, ...] = setting(
        ("ORIGINATING",), kinds.Strings(), "listeners ({daemon_name}) whose mail for hosted senders is outgoing")
    trust_authenticated: bool = setting(True, _FLAG, "SASL-authenticated clients submit for hosted senders")
    other_mail: str = setting("accept", kinds.Choice(("accept", "reject")),
                              "mail with no hosted sender or recipient")
    timeout: int = setting(600, kinds.Whole(1, None, "must be a positive number of seconds"),
                           "seconds libmilter waits for the MTA")
    metrics: tuple[str, int] | None = setting(None, kinds.HostPort(),
                                              "HOST:PORT of a Prometheus endpoint (none: no endpoint)")
    #: None: one per CPU; 0: in the milter's threads (which share one GIL, so one core).
    workers: int | None = setting(None, kinds.Whole(0, 256, "{value}: expected 0 (no worker processes) to 256"),
                                  "worker processes for the crypto (none: one per CPU; 0: none)")
    #: For small messages the round trip to a worker costs more CPU than the crypto itself.
    inline_below: int = setting(64 * 1024, kinds.Whole(0, None, "{value}: must be a number of bytes, 0 or more"),
                                "messages smaller than this (bytes) are handled in the milter's thread")
    #: Asked (postconf, postmap) for recipient_delimiter and for where it sends addresses after the milter.
    postfix_config: Path | None = setting(None, kinds.PostfixDirectory(DEFAULT_POSTFIX_CONFIG),
                                          "Postfix's configuration directory (\"none\": no Postfix; default "
                                          "/etc/postfix when it has a main.cf)")
    recipient_delimiter: str | None = setting(None, kinds.Text(_delimiters),
                                              "address extension delimiters (default Postfix's)")
    #: Postfix's local_login_sender_maps must then say which Unix users may use which sender (check-config looks).
    local_submission: bool = setting(False, _FLAG,
                                     "mail submitted on this host (sendmail, pickup) for a hosted sender is signed")
    #: They deliver on this host (lmtp only to a unix socket or a loopback address); any other is refused.
    delivery_transports: tuple[str, ...] = setting(
        ("local", "virtual", "lmtp"),
        kinds.Strings(kinds.matching(r"[A-Za-z0-9_.-]+", "{value!r} is not a Postfix transport name")),
        "Postfix transports ({rcpt_mailer}) that may receive a hosted recipient's decrypted mail")

    def worker_count(self) -> int:
        return (os.cpu_count() or 1) if self.workers is None else self.workers


@dataclass(frozen=True)
class DiscoverySettings:
    """[discovery]: how other parties' certificates are found (Applicability Statement 2.3, 5)."""

    dns: bool = setting(True, _FLAG, "look certificates up in DNS CERT records")
    ldap: bool = setting(True, _FLAG, "look certificates up in LDAP (found through DNS SRV)")
    dns_servers: tuple[tuple[str, int], ...] = setting((), kinds.Servers(), "DNS servers (IP[:port]; default the "
                                                                               "system resolver)")
    timeout: float = setting(5.0, _SECONDS, "seconds a DNS or LDAP lookup may take")
    ldap_cache_ttl: float = setting(3600.0, _SECONDS, "seconds an LDAP answer is kept")
    negative_ttl: float = setting(300.0, _SECONDS, "seconds \"no certificate\" is remembered")
    http_timeout: float = setting(5.0, _SECONDS, "seconds a certificate fetched by URL (IPKIX CERT) may take")
    http_max_bytes: int = setting(65536, _COUNT, "largest certificate fetched by URL (bytes)")
    cache_size: int = setting(10000, _COUNT, "discovery answers kept")
    org_fallback: bool = setting(True, _FLAG, "look up the domain when the address has no certificate")


@dataclass(frozen=True)
class TrustSettings:
    """[trust]: path building and revocation (Applicability Statement 4): fetching AIA/CRL/OCSP and the policy."""

    fetch: bool = setting(True, _FLAG, "fetch AIA certificates, CRLs and OCSP answers over HTTP")
    revocation: str = setting("soft-fail", kinds.Choice(REVOCATION_MODES),
                              "what an undetermined revocation status means (per domain or address too)")
    http_timeout: float = setting(5.0, _SECONDS, "seconds one AIA, CRL or OCSP fetch may take")
    max_download: int = setting(10 << 20, _COUNT, "largest AIA certificate, CRL, OCSP answer or trust bundle "
                                                  "downloaded (bytes)")
    bundle_refresh: float = setting(3600.0, _SECONDS, "seconds between trust bundle downloads")
    bundle_cache: Path | None = setting(None, kinds.Folder(), "folder keeping the last good trust bundles")
    #: Internal networks (loopback, private, link-local...) are refused otherwise (directmilter.destinations).
    fetch_allow: tuple[Network, ...] = setting((), kinds.Networks(), "internal networks a certificate's AIA, CRL, "
                                                                     "OCSP or IPKIX URL may lead to")
    #: RFC 5751 makes verifying 1024-bit signatures a MUST.
    min_rsa_bits: int = setting(1024, _COUNT, "smallest RSA key accepted anywhere in a path")
    #: AS 4.1.3 (MAY). Off: only a recipient's keyUsage is enforced (RSA key transport).
    enforce_key_usage: bool = setting(False, _FLAG, "signers need digitalSignature, recipients keyEncipherment, "
                                                    "and an extendedKeyUsage must allow emailProtection")


@dataclass(frozen=True)
class NotifySettings:
    """[notify]: delivery confirmation (Applicability Statement 3): MDNs, DSNs and message tracking."""

    mdn: bool = setting(True, _FLAG, "send processed MDNs for accepted incoming messages")
    reinject: tuple[str, int] | None = setting(
        None, kinds.HostPort("of a milter-free Postfix listener"),
        "the MTA's re-injection listener (HOST:PORT) notifications are queued through")
    #: directmilter.witness; the MTA must send directmilter.invalid to the re-injection listener (Postfix's
    #: transport_maps, Sendmail's snippet).
    commit_witness: bool = setting(False, _FLAG, "MDNs and replay records wait for evidence the MTA kept the "
                                                 "message")
    tracking: str = setting("sqlite:/var/lib/directmilter/tracking.db", kinds.Text(kinds.prefixed(
        ("sqlite:", "postgresql:", "postgres:"), "{value!r}: use sqlite:/path or postgresql://...")),
        "where tracking state is kept (sqlite:/path or postgresql://...)")
    processed_timeout: float = setting(3600.0, _SECONDS, "seconds until a missing processed MDN is a failure")
    dispatched_timeout: float = setting(3600.0, _SECONDS, "the same for a requested dispatched MDN")
    sweep_interval: float = setting(60.0, _SECONDS, "seconds between looks for overdue confirmations")
    consume_notifications: bool = setting(True, _FLAG, "MDNs and DSNs for tracked messages are recorded, not "
                                                       "delivered")
    reporting_mta: str = setting("", kinds.Text(), "the name reports give as the reporting MTA (default this "
                                                   "host's)")
    mdn_delay: float = setting(1.0, _SECONDS, "seconds between accepting a message and queueing its MDN")

    def problems(self) -> list[tuple[str, str]]:
        if self.commit_witness and self.reinject is None:
            return [("commit_witness", "needs reinject: the witness comes back through that listener")]
        return []


@dataclass(frozen=True)
class Limits:
    """[limits]: what one message may hold before it is refused without further work (hostile or broken input)."""

    max_message_size: int = setting(64 << 20, _COUNT, "bytes, as received (Postfix's message_size_limit should "
                                                      "be below)")
    max_headers: int = setting(1000, _COUNT, "header fields of the message and of each MIME part")
    max_mime_depth: int = setting(32, _COUNT, "nesting of multiparts and attached messages")
    max_certificates: int = setting(50, _COUNT, "certificates carried by one signature")
    #: Below Postfix's milter_content_timeout (300 s), so we give up before Postfix does and stop working on it.
    max_seconds: int = setting(120, _COUNT, "wall time one message may take at the end of data (deferred past it)")
    #: A certificate whose path needs more is not trusted.
    max_fetches: int = setting(24, _COUNT, "AIA, CRL and OCSP downloads one message may cause")
    max_fetches_per_host: int = setting(8, _COUNT, "the same from one host")

    def budget(self, seconds: float | None = None) -> WorkBudget:
        """A fresh budget for one message (or, with ``seconds``, for one shorter decision such as RCPT TO)."""
        return WorkBudget(min(self.max_seconds, seconds or self.max_seconds), self.max_fetches,
                          self.max_fetches_per_host)


#: TOML section -> (Config attribute, dataclass) for the flat sections, in the order check-config shows them.
FLAT_SECTIONS: Mapping[str, tuple[str, type[Any]]] = {
    "agent": ("crypto", CryptoPolicy),
    "milter": ("milter", MilterSettings),
    "discovery": ("discovery", DiscoverySettings),
    "trust": ("trust", TrustSettings),
    "notify": ("notify", NotifySettings),
    "limits": ("limits", Limits),
}
#: Every section the file may hold.
SECTIONS = (*FLAT_SECTIONS, "domains", "addresses", "certificates", "actions", "policy")
#: The keys of a [domains."..."] or [addresses."..."] table.
PARTY_KEYS = ("keys", "anchors", "incoming_anchors", "outgoing_anchors", "revocation", "routing_check", "policy")
#: The keys of [certificates].
CERTIFICATES_KEYS = ("files",)


# --- hosted parties and the whole ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Party:
    """A hosted domain or address: our identities for it and its trust anchors per direction.

    ``anchors_in`` / ``anchors_out`` are ``None`` when this table does not set them (inherit from the domain), and
    a tuple (possibly empty) when it does.
    """

    name: str
    identities: tuple[PrivateIdentity, ...] = ()
    anchors_in: tuple[x509.Certificate, ...] | None = None
    anchors_out: tuple[x509.Certificate, ...] | None = None
    revocation: str | None = None  # None: inherit (address -> domain -> [trust])
    bundles_in: tuple[str, ...] = ()  # trust bundle URLs, part of the anchors set wherever anchors_in is set
    bundles_out: tuple[str, ...] = ()
    routing_check: bool | None = None  # None: inherit (address -> domain -> on)
    #: Certificate policy settings this table sets, per direction (the rest is inherited: domain, then [policy]).
    policy: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def anchors(self, direction: Direction) -> tuple[x509.Certificate, ...] | None:
        check_direction(direction)
        return self.anchors_in if direction == "incoming" else self.anchors_out


def check_direction(direction: str) -> None:
    if direction not in ("incoming", "outgoing"):
        raise ValueError(f"direction must be 'incoming' or 'outgoing', not {direction!r}")


def normalize_address(address: str) -> str:
    """Lower-cased, surrounding blanks and angle brackets removed."""
    return address.strip().removeprefix("<").removesuffix(">").strip().lower()


@dataclass(frozen=True)
class Config:
    """The whole loaded configuration; read-only and shared by every thread."""

    path: Path
    crypto: CryptoPolicy
    domains: Mapping[str, Party]
    addresses: Mapping[str, Party]
    certificates: tuple[x509.Certificate, ...] = ()
    milter: MilterSettings = MilterSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    trust: TrustSettings = TrustSettings()
    notify: NotifySettings = NotifySettings()
    limits: Limits = Limits()
    actions: Actions = field(default_factory=Actions)
    policies: Mapping[str, CertificatePolicy] = field(
        default_factory=lambda: {direction: CertificatePolicy() for direction in POLICY_DIRECTIONS})
    #: What Postfix's main.cf says (recipient_delimiter, aliasing and bcc tables), when one is consulted.
    postfix: PostfixSettings | None = None

    @property
    def recipient_delimiter(self) -> str:
        """The characters that start an address extension (Postfix's recipient_delimiter unless set here)."""
        if self.milter.recipient_delimiter is not None:
            return self.milter.recipient_delimiter
        return self.postfix.recipient_delimiter if self.postfix is not None else ""

    def mailbox(self, address: str) -> str:
        """The party an address names, as Postfix delivers it: hosted ``bob+tag@d`` is bob unless it has its own
        table; remote addresses are kept exactly (their HISP, not our delimiter, says what an extension means).

        Every per-address decision (keys, anchors, policies, routing, replays, MDNs) is taken for this form, so no
        spelling of bob's address falls back to his domain's trust, and one mailbox gets one copy and one MDN.
        """
        text = normalize_address(address)
        if text in self.addresses or not self.is_hosted(text):
            return text  # another HISP's extension is its own business: a remote address is bound exactly
        return base_mailbox(text, self.recipient_delimiter)[0]

    def domain_of(self, address: str) -> Party | None:
        """The hosted domain of an address (or a bare domain name), or None when it is not hosted here."""
        return self.domains.get(normalize_address(address).rpartition("@")[2])

    def is_hosted(self, address: str) -> bool:
        return self.domain_of(address) is not None

    def address_party(self, address: str) -> Party | None:
        """The per-address table of an address, or None when it has none."""
        return self.addresses.get(normalize_address(address))

    def identities_for(self, address: str) -> tuple[PrivateIdentity, ...]:
        """The address's own keys if it has any, else its domain's; () when not hosted."""
        own = self.address_party(address)
        if own is not None and own.identities:
            return own.identities
        domain = self.domain_of(address)
        return domain.identities if domain is not None else ()

    def checks_routing(self, address: str) -> bool:
        """Whether incoming mail for this hosted address must name it (and its sender) in the protected headers."""
        for party in (self.address_party(address), self.domain_of(address)):
            if party is not None and party.routing_check is not None:
                return party.routing_check
        return True

    def policy_for(self, address: str, direction: str) -> CertificatePolicy:
        """The certificate policy a hosted address applies in one direction (``recipients``, ``signers``, ``own``):
        ``[policy.<direction>]`` with its domain's settings over it, and the address's over those."""
        policy = self.policies[direction]
        for party in (self.domain_of(address), self.address_party(address)):
            if party is not None and direction in party.policy:
                policy = policy.overridden(party.policy[direction])
        return policy

    def revocation_for(self, address: str) -> str:
        """The revocation policy that applies to a hosted address's trust decisions (address, domain, [trust])."""
        for party in (self.address_party(address), self.domain_of(address)):
            if party is not None and party.revocation is not None:
                return party.revocation
        return self.trust.revocation

    def anchors_for(self, address: str, direction: Direction) -> tuple[x509.Certificate, ...]:
        """The trust anchors of a hosted address for one direction: the address's own if set, else its domain's.

        ``incoming`` anchors decide which senders a local recipient trusts; ``outgoing`` anchors decide which
        recipients a local sender trusts. () when nothing is configured or the address is not hosted.
        """
        party = self._anchor_party(address, direction)
        return party.anchors(direction) or () if party is not None else ()

    def bundle_urls(self) -> tuple[str, ...]:
        """Every trust bundle URL anywhere in the configuration, each once (for the background refresher)."""
        parties = (*self.domains.values(), *self.addresses.values())
        return tuple(dict.fromkeys(url for party in parties for url in (*party.bundles_in, *party.bundles_out)))

    def bundles_for(self, address: str, direction: Direction) -> tuple[str, ...]:
        """The trust bundle URLs that belong to the same anchor set as :meth:`anchors_for`."""
        party = self._anchor_party(address, direction)
        if party is None:
            return ()
        return party.bundles_in if direction == "incoming" else party.bundles_out

    def _anchor_party(self, address: str, direction: Direction) -> Party | None:
        """The address's own table if it sets anchors for ``direction``, else its domain's if that does."""
        check_direction(direction)
        for party in (self.address_party(address), self.domain_of(address)):
            if party is not None and party.anchors(direction) is not None:
                return party
        return None
