"""The configuration: one TOML file (see ``etc/directmilter.conf`` for a documented sample).

:func:`load_config` reads and checks everything at once — algorithms, hosted domains and addresses, every key,
certificate and anchor file — so a running milter never meets a configuration problem. Anything wrong (an unknown
key at any level, a wrong type, a missing or unreadable file, a key that does not match its certificate, a key file
readable by others, a forbidden algorithm) is a :class:`~directmilter.errors.ConfigError` naming the file and the
key, e.g. ``directmilter.conf: [domains."direct.a.test"].keys[0].key: /etc/x.key: no such file``.

Relative paths are relative to the configuration file's folder. Domain names and addresses are case-insensitive:
they are stored lower-cased and every lookup lower-cases its argument.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from directmilter import certfacts
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
from directmilter.destinations import Network
from directmilter.errors import ConfigError
from directmilter.keys.identity import PrivateIdentity
from directmilter.keys.load import BUNDLE_URL_SUFFIX, load_certificates, load_identities, toml_type
from directmilter.keys.load import dedupe_certificates as _dedupe
from directmilter.policy import DEFAULTS as ACTION_DEFAULTS
from directmilter.policy import Actions, check_action
from directmilter.postfix import PostfixSettings, read_settings
from directmilter.postfix import describe as describe_postfix
from directmilter.postfix import warnings as postfix_warnings
from directmilter.trust.bundles import is_bundle_url, url_problem
from directmilter.trust.certificate_policy import DIRECTIONS as POLICY_DIRECTIONS
from directmilter.trust.certificate_policy import CertificatePolicy
from directmilter.trust.validator import REVOCATION_MODES

__all__ = [
    "CIPHERS_ACCEPT",
    "CIPHERS_SEND",
    "DEFAULT_ACCEPT_CIPHERS",
    "DEFAULT_ACCEPT_DIGESTS",
    "DEFAULT_CERTIFICATE_SHA1",
    "DEFAULT_CIPHER",
    "DEFAULT_DIGEST",
    "DEFAULT_KEY_TRANSPORT",
    "DEFAULT_RECIPIENT_ID",
    "DIGESTS_ACCEPT",
    "DIGESTS_SEND",
    "KEY_TRANSPORTS",
    "RECIPIENT_IDS",
    "Config",
    "CryptoPolicy",
    "Direction",
    "DiscoverySettings",
    "MilterSettings",
    "NotifySettings",
    "Party",
    "TrustSettings",
    "describe",
    "load_config",
]

# --- algorithm names (the CMS layer maps these to OIDs) ------------------------------------------------------

# The algorithm tables live with the CMS layer that implements them; configuration only names them.

DEFAULT_DIGEST = "sha256"
DEFAULT_CIPHER = "aes256-cbc"
DEFAULT_KEY_TRANSPORT = "rsa-pkcs1v15"
DEFAULT_RECIPIENT_ID = "issuer-serial"
DEFAULT_ACCEPT_DIGESTS: frozenset[str] = frozenset(DIGESTS_ACCEPT)
DEFAULT_ACCEPT_CIPHERS: frozenset[str] = frozenset(CIPHERS_ACCEPT)
DEFAULT_CERTIFICATE_SHA1 = True

#: Algorithms the Applicability Statement requires receivers to support (describe() warns when not accepted).
_REQUIRED_DIGESTS = ("sha256",)
_REQUIRED_CIPHERS = ("aes128-cbc", "aes256-cbc")

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

Direction = Literal["incoming", "outgoing"]
_DIRECTIONS: tuple[Direction, ...] = ("incoming", "outgoing")

_SECTIONS = ("agent", "milter", "discovery", "trust", "notify", "domains", "addresses", "certificates", "limits",
             "actions", "policy")
_AGENT_KEYS = (
    "digest",
    "cipher",
    "key_transport",
    "recipient_id",
    "accept_digests",
    "accept_ciphers",
    "certificate_sha1",
)
_PARTY_KEYS = ("keys", "anchors", "incoming_anchors", "outgoing_anchors", "revocation", "routing_check", "policy")
_TRUST_KEYS = ("fetch", "fetch_allow", "revocation", "http_timeout", "max_download", "bundle_refresh", "bundle_cache",
               "min_rsa_bits", "enforce_key_usage")
_CERTIFICATES_KEYS = ("files",)
_LIMITS_KEYS = ("max_message_size", "max_headers", "max_mime_depth", "max_certificates", "max_seconds", "max_fetches",
                "max_fetches_per_host")
_MILTER_KEYS = ("socket", "socket_mode", "internal_hosts", "submission_daemons", "trust_authenticated",
                "other_mail", "timeout", "metrics", "workers", "inline_below", "postfix_config",
                "recipient_delimiter", "local_submission", "delivery_transports")
#: Where Postfix's main.cf is looked for when [milter] postfix_config is not set.
DEFAULT_POSTFIX_CONFIG = Path("/etc/postfix")
_OTHER_MAIL = ("accept", "reject")
_NOTIFY_KEYS = ("mdn", "reinject", "commit_witness", "tracking", "processed_timeout", "dispatched_timeout",
                "sweep_interval", "consume_notifications", "reporting_mta", "mdn_delay")
_DISCOVERY_KEYS = ("dns", "ldap", "dns_servers", "timeout", "ldap_cache_ttl", "negative_ttl", "http_timeout",
                   "http_max_bytes", "cache_size", "org_fallback")

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
#: A hosted address's local part (RFC 5322 3.2.3 dot-atom): names key files too, so never ``..`` or a leading dot.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"^{_ATEXT}(?:\.{_ATEXT})*$")


# --- the model -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one message may hold before it is refused without further work (hostile or broken input)."""

    max_message_size: int = 64 << 20  # bytes, as received (Postfix's message_size_limit should be below)
    max_headers: int = 1000  # header fields of the message (and of each MIME part)
    max_mime_depth: int = 32  # nesting of multiparts and attached messages
    max_certificates: int = 50  # certificates carried by one signature
    #: Wall time one message may take at the end of data (deferred past it): below Postfix's milter_content_timeout
    #: (300 s), so we give up before Postfix does and stop working on it.
    max_seconds: int = 120
    #: AIA, CRL and OCSP downloads one message may cause, in all and from one host (a certificate whose path needs
    #: more is not trusted).
    max_fetches: int = 24
    max_fetches_per_host: int = 8

    def budget(self, seconds: float | None = None) -> WorkBudget:
        """A fresh budget for one message (or, with ``seconds``, for one shorter decision such as RCPT TO)."""
        return WorkBudget(min(self.max_seconds, seconds or self.max_seconds), self.max_fetches,
                          self.max_fetches_per_host)


@dataclass(frozen=True)
class CryptoPolicy:
    """Algorithms for sending (one each) and the sets accepted when receiving."""

    digest: str = DEFAULT_DIGEST
    cipher: str = DEFAULT_CIPHER
    key_transport: str = DEFAULT_KEY_TRANSPORT
    recipient_id: str = DEFAULT_RECIPIENT_ID
    accept_digests: frozenset[str] = DEFAULT_ACCEPT_DIGESTS
    accept_ciphers: frozenset[str] = DEFAULT_ACCEPT_CIPHERS
    certificate_sha1: bool = DEFAULT_CERTIFICATE_SHA1


@dataclass(frozen=True)
class MilterSettings:
    """How the milter listens and how it tells submission (outgoing) from inbound mail."""

    socket: str = "unix:/run/directmilter/directmilter.sock"
    socket_mode: int = 0o660
    #: Networks whose SMTP clients may submit for hosted senders without logging in. Empty by default: every local
    #: account can open a connection from 127.0.0.1, so loopback proves nothing about who submits.
    internal_hosts: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    submission_daemons: tuple[str, ...] = ("ORIGINATING",)
    trust_authenticated: bool = True
    other_mail: str = "accept"
    timeout: int = 600
    #: Where the Prometheus endpoint listens, (host, port); None (the default): no endpoint.
    metrics: tuple[str, int] | None = None
    #: Worker processes for signing, encrypting, decrypting and verifying; None: one per CPU; 0: in the milter's
    #: threads (which share one GIL, so one core).
    workers: int | None = None
    #: Messages smaller than this (bytes) are handled in the milter's thread even with workers: for them the
    #: round trip to a worker costs more CPU than the crypto itself.
    inline_below: int = 64 * 1024
    #: Postfix's configuration directory, asked (postconf, postmap) for recipient_delimiter and for where it sends
    #: addresses after the milter; None: no Postfix is consulted (the default /etc/postfix only when it has a main.cf).
    postfix_config: Path | None = None
    #: recipient_delimiter characters; None: Postfix's (or none when no Postfix is consulted).
    recipient_delimiter: str | None = None
    #: Mail submitted on this host (sendmail, pickup) for a hosted sender is signed; off: refused. Postfix's
    #: local_login_sender_maps must then say which Unix users may use which sender (check-config looks).
    local_submission: bool = False
    #: Postfix transports ({rcpt_mailer}) that may receive a hosted recipient's decrypted mail: they deliver on
    #: this host (lmtp only to a unix socket or a loopback address). Any other (smtp, relay, a pipe) is refused.
    delivery_transports: tuple[str, ...] = ("local", "virtual", "lmtp")

    def worker_count(self) -> int:
        return (os.cpu_count() or 1) if self.workers is None else self.workers


@dataclass(frozen=True)
class DiscoverySettings:
    """How other parties' certificates are found (Applicability Statement 2.3, 5)."""

    dns: bool = True
    ldap: bool = True
    dns_servers: tuple[tuple[str, int], ...] = ()  # empty: the system resolver
    timeout: float = 5.0
    ldap_cache_ttl: float = 3600.0
    negative_ttl: float = 300.0
    http_timeout: float = 5.0
    http_max_bytes: int = 65536
    cache_size: int = 10000
    org_fallback: bool = True


@dataclass(frozen=True)
class TrustSettings:
    """Path building and revocation (Applicability Statement 4): fetching AIA/CRL/OCSP and the default policy."""

    fetch: bool = True
    revocation: str = "soft-fail"
    http_timeout: float = 5.0
    #: Largest AIA certificate, CRL, OCSP answer or trust bundle downloaded (bytes); more is a failed fetch.
    max_download: int = 10 << 20
    bundle_refresh: float = 3600.0
    bundle_cache: Path | None = None
    #: Networks a certificate's AIA, CRL or OCSP URL, or an IPKIX URL, may lead to although they are internal
    #: (loopback, private, link-local...), which are refused otherwise (directmilter.destinations).
    fetch_allow: tuple[Network, ...] = ()
    #: Smallest RSA key accepted anywhere in a path (RFC 5751 makes verifying 1024-bit signatures a MUST).
    min_rsa_bits: int = 1024
    #: AS 4.1.3 (MAY): signers need digitalSignature, recipients keyEncipherment, and an extendedKeyUsage, when
    #: present, must allow emailProtection. Off: only a recipient's keyUsage is enforced (RSA key transport).
    enforce_key_usage: bool = False


@dataclass(frozen=True)
class NotifySettings:
    """Delivery confirmation (Applicability Statement 3): MDNs, DSNs and message tracking."""

    mdn: bool = True  # send processed MDNs for accepted incoming messages
    reinject: tuple[str, int] | None = None  # the milter-free Postfix listener notifications are queued through
    #: MDNs go, and replay records are confirmed, only once the MTA has the message (directmilter.witness; the
    #: MTA must send directmilter.invalid to the re-injection listener: Postfix's transport_maps, Sendmail's snippet).
    commit_witness: bool = False
    tracking: str = "sqlite:/var/lib/directmilter/tracking.db"
    processed_timeout: float = 3600.0  # no processed MDN by then: the hosted sender gets a failed DSN
    dispatched_timeout: float = 3600.0  # the same for a requested dispatched MDN
    sweep_interval: float = 60.0
    consume_notifications: bool = True  # MDNs/DSNs for tracked messages are recorded, not delivered
    reporting_mta: str = ""  # default: this host's name
    mdn_delay: float = 1.0  # seconds between accepting a message and queueing its MDN (let Postfix commit)


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
        _check_direction(direction)
        return self.anchors_in if direction == "incoming" else self.anchors_out


def _check_direction(direction: str) -> None:
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
        _check_direction(direction)
        for party in (self.address_party(address), self.domain_of(address)):
            if party is not None and party.anchors(direction) is not None:
                return party
        return None


# --- loading -------------------------------------------------------------------------------------------------


def _quote(key: str) -> str:
    if _BARE_KEY.match(key):
        return key
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


_T = TypeVar("_T")


class _Loader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self.base = path.absolute().parent

    def err(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.name}: {key}: {reason}" if key else f"{self.name}: {reason}")

    def where(self, key: str) -> str:
        return f"{self.name}: {key}"

    # -- generic checks

    def table(self, value: object, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.err(key, f"must be a table, not {toml_type(value)}")
        return value

    def known(self, table: Mapping[str, object], allowed: tuple[str, ...], key: str, what: str = "key") -> None:
        for name in table:
            if name not in allowed:
                child = f"{key}.{_quote(name)}" if key else f"[{_quote(name)}]"
                raise self.err(child, f"unknown {what} (expected one of {', '.join(allowed)})")

    def typed(self, table: Mapping[str, object], name: str, key: str, kind: type[_T], default: _T) -> _T:
        value = table.get(name, default)
        if type(value) is not kind:
            raise self.err(f"{key}.{name}", f"must be {toml_type(kind())}, not {toml_type(value)}")
        return value

    def positive(self, table: Mapping[str, object], name: str, key: str, default: float) -> float:
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.err(f"{key}.{name}", f"must be a positive number, not {value!r}")
        return float(value)

    def string_list(self, table: Mapping[str, object], name: str, key: str) -> list[str] | None:
        if name not in table:
            return None
        value = table[name]
        if not isinstance(value, list):
            raise self.err(f"{key}.{name}", f"must be an array of strings, not {toml_type(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.err(f"{key}.{name}[{index}]", f"must be a string, not {toml_type(item)}")
            if not item.strip():
                raise self.err(f"{key}.{name}[{index}]", "must not be empty")
        return value

    def resolve(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.base / path

    # -- the file

    def read(self) -> dict[str, Any]:
        try:
            if self.path.is_dir():
                raise IsADirectoryError(self.path)
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raise self.err("", "no such file") from None
        except IsADirectoryError:
            raise self.err("", "is a folder, expected the configuration file") from None
        except PermissionError:
            raise self.err("", "permission denied") from None
        except OSError as exc:
            raise self.err("", f"cannot read: {exc.strerror or exc}") from None
        _check_not_world_writable(self.path, self.name)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.err("", f"not UTF-8 text (byte {exc.start})") from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise self.err("", f"not valid TOML: {exc}") from None

    # -- sections

    def algorithm(
        self,
        value: str,
        key: str,
        allowed: tuple[str, ...],
        forbidden: Callable[[str], str | None],
    ) -> str:
        name = value.strip().lower()
        reason = forbidden(name)
        if reason is not None:
            raise self.err(key, f"{value!r} is refused: {reason}; use one of {', '.join(allowed)}")
        if name not in allowed:
            raise self.err(key, f"unknown algorithm {value!r}; use one of {', '.join(allowed)}")
        return name

    def crypto(self, data: Mapping[str, object]) -> CryptoPolicy:
        key = "[agent]"
        table = self.table(data.get("agent", {}), key)
        self.known(table, _AGENT_KEYS, key)

        def digest_send(name: str) -> str | None:
            return _SHA1_SEND if name in _SHA1_NAMES else _FORBIDDEN_DIGESTS.get(name)

        def digest_accept(name: str) -> str | None:
            return _FORBIDDEN_DIGESTS.get(name)

        def cipher(name: str) -> str | None:
            return _FORBIDDEN_CIPHERS.get(name)

        def none(name: str) -> str | None:
            return None

        def one(name: str, default: str, allowed: tuple[str, ...], forbidden: Callable[[str], str | None]) -> str:
            value = self.typed(table, name, key, str, default)
            return self.algorithm(value, f"{key}.{name}", allowed, forbidden)

        def many(name: str, default: frozenset[str], allowed: tuple[str, ...], forbidden: Callable[[str], str | None]
                 ) -> frozenset[str]:  # fmt: skip
            values = self.string_list(table, name, key)
            if values is None:
                return default
            if not values:
                raise self.err(f"{key}.{name}", f"must not be empty; use some of {', '.join(allowed)}")
            return frozenset(
                self.algorithm(v, f"{key}.{name}[{i}]", allowed, forbidden) for i, v in enumerate(values)
            )

        return CryptoPolicy(
            digest=one("digest", DEFAULT_DIGEST, DIGESTS_SEND, digest_send),
            cipher=one("cipher", DEFAULT_CIPHER, CIPHERS_SEND, cipher),
            key_transport=one("key_transport", DEFAULT_KEY_TRANSPORT, KEY_TRANSPORTS, none),
            recipient_id=one("recipient_id", DEFAULT_RECIPIENT_ID, RECIPIENT_IDS, none),
            accept_digests=many("accept_digests", DEFAULT_ACCEPT_DIGESTS, DIGESTS_ACCEPT, digest_accept),
            accept_ciphers=many("accept_ciphers", DEFAULT_ACCEPT_CIPHERS, CIPHERS_ACCEPT, cipher),
            certificate_sha1=self.typed(table, "certificate_sha1", key, bool, DEFAULT_CERTIFICATE_SHA1),
        )

    def certificate_files(self, paths: list[str], key: str) -> tuple[x509.Certificate, ...]:
        certs: list[x509.Certificate] = []
        for index, value in enumerate(paths):
            where = self.where(f"{key}[{index}]")
            path = self.resolve(value)
            _check_not_world_writable(path, where)
            certs.extend(load_certificates(path, where=where))
        return tuple(_dedupe(certs))

    def folder_bundle_urls(self, paths: list[str], key: str) -> list[str]:
        """Trust bundle URLs kept in anchor folders as ``*.url`` files (``directmilter bundles add`` writes them)."""
        urls: list[str] = []
        for index, value in enumerate(paths):
            folder = self.resolve(value)
            if not folder.is_dir():
                continue
            for entry in sorted(folder.glob(f"*{BUNDLE_URL_SUFFIX}")):
                url = entry.read_text(errors="replace").strip()
                problem = url_problem(url)
                if problem is not None:
                    raise self.err(f"{key}[{index}]", f"{entry}: {problem}: {url[:80]!r}")
                urls.append(url)
        return urls

    def party(self, name: str, value: object, key: str) -> Party:
        table = self.table(value, key)
        self.known(table, _PARTY_KEYS, key)
        identities: tuple[PrivateIdentity, ...] = ()
        if "keys" in table:
            keys = table["keys"]
            if not isinstance(keys, list):
                raise self.err(f"{key}.keys", f"must be an array of tables, not {toml_type(keys)}")
            identities = tuple(load_identities(keys, self.where(f"{key}.keys"), base=self.base))
        anchors: dict[str, tuple[x509.Certificate, ...] | None] = {}
        bundles: dict[str, tuple[str, ...]] = {}
        for name_ in ("anchors", "incoming_anchors", "outgoing_anchors"):
            entries = self.string_list(table, name_, key)
            files = None if entries is None else [e for e in entries if not is_bundle_url(e)]
            anchors[name_] = None if files is None else self.certificate_files(files, f"{key}.{name_}")
            urls = [e.strip() for e in entries or () if is_bundle_url(e)]
            for url in urls:
                if (problem := url_problem(url)) is not None:
                    raise self.err(f"{key}.{name_}", f"{problem}: {url[:80]!r}")
            urls += self.folder_bundle_urls(files or [], f"{key}.{name_}")
            bundles[name_] = tuple(dict.fromkeys(urls))
        both = anchors["anchors"]
        incoming, outgoing = anchors["incoming_anchors"], anchors["outgoing_anchors"]
        return Party(
            name=name,
            identities=identities,
            anchors_in=incoming if incoming is not None else both,
            anchors_out=outgoing if outgoing is not None else both,
            bundles_in=bundles["incoming_anchors"] if incoming is not None else bundles["anchors"],
            bundles_out=bundles["outgoing_anchors"] if outgoing is not None else bundles["anchors"],
            revocation=self.revocation(table, key, "") if "revocation" in table else None,
            routing_check=self.typed(table, "routing_check", key, bool, True) if "routing_check" in table else None,
            policy=self.policy_tables(table.get("policy", {}), f"{key}.policy"),
        )

    def domains(self, data: Mapping[str, object]) -> dict[str, Party]:
        section = self.table(data.get("domains", {}), "[domains]")
        domains: dict[str, Party] = {}
        for raw_name, value in section.items():
            key = f"[domains.{_quote(raw_name)}]"
            name = raw_name.strip().lower()
            if not _DOMAIN.match(name):
                raise self.err(
                    key,
                    "not a fully qualified domain name (letters, digits and hyphens, at least two labels, "
                    "Applicability Statement 1.1)",
                )
            if name in domains:
                raise self.err(key, f"the domain {name} is already configured (names are case-insensitive)")
            domains[name] = self.party(name, value, key)
        return domains

    def addresses(self, data: Mapping[str, object], domains: Mapping[str, Party]) -> dict[str, Party]:
        section = self.table(data.get("addresses", {}), "[addresses]")
        addresses: dict[str, Party] = {}
        for raw_name, value in section.items():
            key = f"[addresses.{_quote(raw_name)}]"
            name = normalize_address(raw_name)
            local, at, domain = name.rpartition("@")
            if not at or not _DOT_ATOM.match(local):
                raise self.err(key, "not an e-mail address (local-part@domain, the local part a dot-atom: "
                                    "RFC 5322 3.2.3 characters, no leading, trailing or doubled dots)")
            if domain not in domains:
                raise self.err(
                    key, f"the domain {domain} is not a hosted domain (add a [domains.{_quote(domain)}] table)"
                )
            if name in addresses:
                raise self.err(key, f"the address {name} is already configured (addresses are case-insensitive)")
            addresses[name] = self.party(name, value, key)
        return addresses

    def actions(self, data: Mapping[str, object]) -> Actions:
        key = "[actions]"
        table = self.table(data.get("actions", {}), key)
        names = tuple(f"on_{condition}" for condition in ACTION_DEFAULTS)
        self.known(table, names, key)
        chosen: dict[str, str] = {}
        for name in names:
            if name in table:
                action = self.typed(table, name, key, str, "")
                problem = check_action(name.removeprefix("on_"), action)
                if problem is not None:
                    raise self.err(f"{key}.{name}", problem)
                chosen[name.removeprefix("on_")] = action
        return Actions(chosen)

    def policy_tables(self, value: object, key: str) -> dict[str, Mapping[str, Any]]:
        """A ``policy`` table: per direction, settings checked by applying them to the default policy."""
        table = self.table(value, key)
        self.known(table, POLICY_DIRECTIONS, key, "direction")
        found: dict[str, Mapping[str, Any]] = {}
        for direction, settings in table.items():
            child = f"{key}.{direction}"
            try:
                CertificatePolicy().overridden(self.table(settings, child))
            except ValueError as exc:
                raise self.err(child, str(exc)) from None
            found[direction] = settings
        return found

    def policies(self, data: Mapping[str, object]) -> dict[str, CertificatePolicy]:
        tables = self.policy_tables(data.get("policy", {}), "[policy]")
        return {direction: CertificatePolicy().overridden(tables.get(direction, {})) for direction in POLICY_DIRECTIONS}

    def limits(self, data: Mapping[str, object]) -> Limits:
        key = "[limits]"
        table = self.table(data.get("limits", {}), key)
        self.known(table, _LIMITS_KEYS, key)
        default = Limits()
        return Limits(**{name: int(self.positive(table, name, key, getattr(default, name))) for name in _LIMITS_KEYS})

    def certificates(self, data: Mapping[str, object]) -> tuple[x509.Certificate, ...]:
        key = "[certificates]"
        table = self.table(data.get("certificates", {}), key)
        self.known(table, _CERTIFICATES_KEYS, key)
        paths = self.string_list(table, "files", key)
        return () if paths is None else self.certificate_files(paths, f"{key}.files")

    def load(self) -> Config:
        data = self.read()
        self.known(data, _SECTIONS, "", what="section")
        crypto = self.crypto(data)
        domains = self.domains(data)
        addresses = self.addresses(data, domains)
        milter = self.milter(data)
        return Config(
            path=self.path,
            crypto=crypto,
            domains=MappingProxyType(domains),
            addresses=MappingProxyType(addresses),
            certificates=self.certificates(data),
            milter=milter,
            discovery=self.discovery(data),
            trust=self.trust(data),
            notify=self.notify(data),
            limits=self.limits(data),
            actions=self.actions(data),
            policies=MappingProxyType(self.policies(data)),
            postfix=None if milter.postfix_config is None else read_settings(milter.postfix_config),
        )


    def host_port(self, table: Mapping[str, object], name: str, key: str, what: str = "") -> tuple[str, int] | None:
        """A ``HOST:PORT`` value (IPv6 hosts in brackets), or None when the key is absent or empty."""
        text = self.typed(table, name, key, str, "")
        if not text:
            return None
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise self.err(f"{key}.{name}", f"{text!r}: expected HOST:PORT{' ' + what if what else ''}")
        return host.strip("[]"), int(port)

    def notify(self, data: Mapping[str, object]) -> NotifySettings:
        key = "[notify]"
        table = self.table(data.get("notify", {}), key)
        self.known(table, _NOTIFY_KEYS, key)
        default = NotifySettings()
        reinject = self.host_port(table, "reinject", key, "of a milter-free Postfix listener")
        commit_witness = self.typed(table, "commit_witness", key, bool, default.commit_witness)
        if commit_witness and reinject is None:
            raise self.err(f"{key}.commit_witness", "needs reinject: the witness comes back through that listener")
        tracking = self.typed(table, "tracking", key, str, default.tracking)
        if not tracking.startswith(("sqlite:", "postgresql:", "postgres:")):
            raise self.err(f"{key}.tracking", f"{tracking!r}: use sqlite:/path or postgresql://...")
        return NotifySettings(
            mdn=self.typed(table, "mdn", key, bool, default.mdn),
            reinject=reinject,
            commit_witness=commit_witness,
            tracking=tracking,
            processed_timeout=self.positive(table, "processed_timeout", key, default.processed_timeout),
            dispatched_timeout=self.positive(table, "dispatched_timeout", key, default.dispatched_timeout),
            sweep_interval=self.positive(table, "sweep_interval", key, default.sweep_interval),
            consume_notifications=self.typed(table, "consume_notifications", key, bool,
                                             default.consume_notifications),
            reporting_mta=self.typed(table, "reporting_mta", key, str, default.reporting_mta),
            mdn_delay=self.positive(table, "mdn_delay", key, default.mdn_delay),
        )

    def revocation(self, table: Mapping[str, object], key: str, default: str) -> str:
        mode = self.typed(table, "revocation", key, str, default)
        if mode not in REVOCATION_MODES:
            raise self.err(f"{key}.revocation", f"{mode!r}: expected one of {', '.join(REVOCATION_MODES)}")
        return mode

    def trust(self, data: Mapping[str, object]) -> TrustSettings:
        key = "[trust]"
        table = self.table(data.get("trust", {}), key)
        self.known(table, _TRUST_KEYS, key)
        default = TrustSettings()
        cache = self.typed(table, "bundle_cache", key, str, "")
        return TrustSettings(
            fetch=self.typed(table, "fetch", key, bool, default.fetch),
            revocation=self.revocation(table, key, default.revocation),
            http_timeout=self.positive(table, "http_timeout", key, default.http_timeout),
            max_download=int(self.positive(table, "max_download", key, default.max_download)),
            bundle_refresh=self.positive(table, "bundle_refresh", key, default.bundle_refresh),
            bundle_cache=self.resolve(cache) if cache else None,
            min_rsa_bits=int(self.positive(table, "min_rsa_bits", key, default.min_rsa_bits)),
            enforce_key_usage=self.typed(table, "enforce_key_usage", key, bool, default.enforce_key_usage),
            fetch_allow=self.networks(table, "fetch_allow", key),
        )

    def networks(self, table: Mapping[str, object], name: str, key: str) -> tuple[Network, ...]:
        found = []
        for index, value in enumerate(self.string_list(table, name, key) or ()):
            try:
                found.append(ipaddress.ip_network(value.strip(), strict=False))
            except ValueError as exc:
                raise self.err(f"{key}.{name}[{index}]", f"not a network (e.g. 10.1.0.0/16 or ::1/128): {exc}") \
                    from None
        return tuple(found)

    def discovery(self, data: Mapping[str, object]) -> DiscoverySettings:
        key = "[discovery]"
        table = self.table(data.get("discovery", {}), key)
        self.known(table, _DISCOVERY_KEYS, key)
        default = DiscoverySettings()
        servers = []
        for index, text in enumerate(self.string_list(table, "dns_servers", key) or []):
            match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([0-9.]+):(\d+)|([0-9a-fA-F:.]+)", text.strip())
            try:
                if match is None:
                    raise ValueError(text)
                host = match.group(1) or match.group(3) or match.group(5)
                port = match.group(2) or match.group(4) or "53"
                servers.append((str(ipaddress.ip_address(host)), int(port)))
            except ValueError:
                raise self.err(f"{key}.dns_servers[{index}]", f"{text!r}: an IP address, optionally :port") from None

        return DiscoverySettings(
            dns=self.typed(table, "dns", key, bool, default.dns),
            ldap=self.typed(table, "ldap", key, bool, default.ldap),
            dns_servers=tuple(servers),
            timeout=self.positive(table, "timeout", key, default.timeout),
            ldap_cache_ttl=self.positive(table, "ldap_cache_ttl", key, default.ldap_cache_ttl),
            negative_ttl=self.positive(table, "negative_ttl", key, default.negative_ttl),
            http_timeout=self.positive(table, "http_timeout", key, default.http_timeout),
            http_max_bytes=int(self.positive(table, "http_max_bytes", key, default.http_max_bytes)),
            cache_size=int(self.positive(table, "cache_size", key, default.cache_size)),
            org_fallback=self.typed(table, "org_fallback", key, bool, default.org_fallback),
        )

    def milter(self, data: Mapping[str, object]) -> MilterSettings:
        key = "[milter]"
        table = self.table(data.get("milter", {}), key)
        self.known(table, _MILTER_KEYS, key)
        default = MilterSettings()
        spec = self.typed(table, "socket", key, str, default.socket)
        if not spec.startswith(("unix:", "local:", "inet:", "inet6:")):
            raise self.err(f"{key}.socket", f"{spec!r}: use unix:/path or inet:PORT@HOST")
        mode = self.typed(table, "socket_mode", key, str, f"{default.socket_mode:04o}")
        if not re.fullmatch(r"0?[0-7]{3}", mode):
            raise self.err(f"{key}.socket_mode", f"{mode!r}: an octal mode such as \"0660\"")
        networks = []
        hosts = self.string_list(table, "internal_hosts", key)
        for index, text in enumerate([str(n) for n in default.internal_hosts] if hosts is None else hosts):
            try:
                networks.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise self.err(f"{key}.internal_hosts[{index}]", f"{text!r} is not an IP address or network") from None
        other = self.typed(table, "other_mail", key, str, default.other_mail)
        if other not in _OTHER_MAIL:
            raise self.err(f"{key}.other_mail", f"{other!r}: expected one of {', '.join(_OTHER_MAIL)}")
        timeout = self.typed(table, "timeout", key, int, default.timeout)
        if timeout <= 0:
            raise self.err(f"{key}.timeout", "must be a positive number of seconds")
        daemons = self.string_list(table, "submission_daemons", key)
        return MilterSettings(
            socket=spec,
            socket_mode=int(mode, 8),
            internal_hosts=tuple(networks),
            submission_daemons=default.submission_daemons if daemons is None else tuple(daemons),
            trust_authenticated=self.typed(table, "trust_authenticated", key, bool, default.trust_authenticated),
            other_mail=other,
            timeout=timeout,
            metrics=self.host_port(table, "metrics", key),
            workers=self.workers(table, key),
            inline_below=self.byte_count(table, "inline_below", key, default.inline_below),
            postfix_config=self.postfix_directory(table),
            recipient_delimiter=self.delimiter(table, key),
            local_submission=self.typed(table, "local_submission", key, bool, default.local_submission),
            delivery_transports=self.delivery_transports(table, key, default.delivery_transports),
        )

    def delivery_transports(self, table: Mapping[str, object], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        names = self.string_list(table, "delivery_transports", key)
        if names is None:
            return default
        for index, name in enumerate(names):
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise self.err(f"{key}.delivery_transports[{index}]", f"{name!r} is not a Postfix transport name")
        return tuple(names)

    def postfix_directory(self, table: Mapping[str, object]) -> Path | None:
        """Postfix's configuration directory: as set ("none": no Postfix), else /etc/postfix when it has a main.cf."""
        text = self.typed(table, "postfix_config", "[milter]", str, "")
        if text == "none":
            return None
        if not text:
            return DEFAULT_POSTFIX_CONFIG if (DEFAULT_POSTFIX_CONFIG / "main.cf").is_file() else None
        directory = self.resolve(text)
        if not (directory / "main.cf").is_file():
            raise self.err("[milter].postfix_config", f"{directory}: no main.cf there")
        return directory

    def delimiter(self, table: Mapping[str, object], key: str) -> str | None:
        if "recipient_delimiter" not in table:
            return None
        text = self.typed(table, "recipient_delimiter", key, str, "")
        if any(c.isalnum() or c in "@\"" or c.isspace() for c in text):
            raise self.err(f"{key}.recipient_delimiter", f"{text!r}: delimiters are punctuation such as \"+\" or \"-\"")
        return text

    def byte_count(self, table: Mapping[str, object], name: str, key: str, default: int) -> int:
        value = self.typed(table, name, key, int, default)
        if value < 0:
            raise self.err(f"{key}.{name}", f"{value}: must be a number of bytes, 0 or more")
        return value

    def workers(self, table: Mapping[str, object], key: str) -> int | None:
        if "workers" not in table:
            return None
        count = self.typed(table, "workers", key, int, 0)
        if not 0 <= count <= 256:
            raise self.err(f"{key}.workers", f"{count}: expected 0 (no worker processes) to 256")
        return count


def _check_not_world_writable(path: Path, where: str) -> None:
    """Refuse configuration, anchor and certificate files (or folders) anyone may change: they decide trust."""
    targets = [path]
    try:
        if path.is_dir():
            targets += [p for p in path.iterdir() if not p.name.startswith(".")]
        for target in targets:
            mode = target.stat().st_mode
            sticky_dir = stat.S_ISDIR(mode) and mode & stat.S_ISVTX
            if mode & stat.S_IWOTH and not sticky_dir:
                raise ConfigError(
                    f"{where}: {target}: is writable by everyone (mode {stat.S_IMODE(mode):04o}); anyone could "
                    f"change what this agent trusts (chmod o-w {target})"
                )
    except OSError:
        return  # missing or unreadable: reported with a better message by the loader


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, check and load the configuration file and every file it names; ConfigError on any problem."""
    return _Loader(Path(path)).load()


# --- check-config --------------------------------------------------------------------------------------------


def _utc(value: datetime.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _cert_line(cert: x509.Certificate) -> str:
    return (
        f"subject {cert.subject.rfc4514_string()!r}, issuer {cert.issuer.rfc4514_string()!r}, "
        f"serial {cert.serial_number:#x}, notAfter {_utc(cert.not_valid_after_utc)}"
    )


def _key_line(identity: PrivateIdentity) -> str:
    key = identity.private_key
    kind = f"RSA {key.key_size}" if isinstance(key, rsa.RSAPrivateKey) else f"EC {key.curve.name}"
    chain = f", chain {len(identity.chain)}" if identity.chain else ""
    return f"{_cert_line(identity.certificate)}, {kind}{chain}, from {identity.source}"


def _names_in(cert: x509.Certificate) -> set[str]:
    found = certfacts.names(cert)
    return {n.lower() for n in (*found.rfc822, *found.dns)}


def _identity_warnings(party: Party, owner: str, now: datetime.datetime) -> list[str]:
    warnings: list[str] = []
    for index, identity in enumerate(party.identities, 1):
        cert = identity.certificate
        label = f"{owner} key {index} (subject {cert.subject.rfc4514_string()!r}, serial {cert.serial_number:#x})"
        if cert.not_valid_after_utc < now:
            warnings.append(f"warning: {label} expired {_utc(cert.not_valid_after_utc)}")
        elif cert.not_valid_before_utc > now:
            warnings.append(f"warning: {label} is not valid before {_utc(cert.not_valid_before_utc)}")
        key = identity.private_key
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
            warnings.append(f"warning: {label} is RSA {key.key_size}; use 2048 bits or more")
        if party.name not in _names_in(cert):
            what = "rfc822Name" if "@" in party.name else "dNSName"
            warnings.append(
                f"warning: {label} does not name {party.name} as a subjectAltName {what} (Applicability "
                "Statement 4.1): peers may refuse to trust it for this "
                + ("address" if "@" in party.name else "domain")
            )
    return warnings


def describe(config: Config, now: datetime.datetime | None = None) -> list[str]:
    """Human-readable lines for ``directmilter check-config``: what is hosted, with which keys and anchors.

    Lines starting with ``warning:`` flag problems that do not stop loading (expired identity certificates, a
    hosted party without keys or anchors, ...). Nothing secret is printed: no key material, no passwords.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    crypto = config.crypto
    lines = [
        f"configuration {config.path}",
        f"sending: digest {crypto.digest}, cipher {crypto.cipher}, key transport {crypto.key_transport}, "
        f"recipient id {crypto.recipient_id}",
        f"accepting: digests {', '.join(sorted(crypto.accept_digests))}; ciphers "
        f"{', '.join(sorted(crypto.accept_ciphers))}; SHA-1 signed certificates in trust paths: "
        f"{'yes' if crypto.certificate_sha1 else 'no'}",
        f"milter: socket {config.milter.socket} (mode {config.milter.socket_mode:04o}), internal hosts "
        f"{', '.join(str(n) for n in config.milter.internal_hosts) or 'none'}, submission daemons "
        f"{', '.join(config.milter.submission_daemons) or 'none'}, authenticated clients "
        f"{'trusted' if config.milter.trust_authenticated else 'not trusted'}, local submission "
        f"{'signed' if config.milter.local_submission else 'refused'}, other mail "
        f"{config.milter.other_mail}, timeout {config.milter.timeout}s",
    ]
    lines.append("actions: " + ", ".join(f"{condition} {config.actions.action_for(condition)}"
                                         for condition in ACTION_DEFAULTS))
    warnings: list[str] = []
    if config.postfix is None:
        lines.append("postfix: not read ([milter] postfix_config; /etc/postfix has no main.cf)")
        warnings.append("warning: Postfix's configuration is not read: aliases and bcc maps that would copy "
                        "decrypted mail off the host are not checked, and address extensions are not recognised")
    else:
        lines.append(describe_postfix(config.postfix))
        witness = config.notify.reinject if config.notify.commit_witness else None
        warnings.extend(postfix_warnings(config.postfix, config.domains,
                                         local_submission=config.milter.local_submission, witness=witness))
    for required in _REQUIRED_DIGESTS:
        if required not in crypto.accept_digests:
            warnings.append(f"warning: accept_digests lacks {required}, which receivers must support (AS 2.6)")
    for required in _REQUIRED_CIPHERS:
        if required not in crypto.accept_ciphers:
            warnings.append(f"warning: accept_ciphers lacks {required}, which receivers must support (AS 2.7)")
    if not config.domains:
        warnings.append("warning: no hosted domain: add a [domains.\"...\"] table")

    def party_lines(kind: str, party: Party, inherited: Party | None) -> None:
        anchors = []
        for direction in _DIRECTIONS:
            own = party.anchors(direction)
            if own is not None:
                anchors.append(f"{direction} anchors {len(own)}")
            elif inherited is not None:
                anchors.append(f"{direction} anchors from the domain")
            else:
                anchors.append(f"{direction} anchors 0")
        keys = f"{len(party.identities)} key(s)" if party.identities or inherited is None else "domain keys"
        policy = (f"revocation {config.revocation_for(party.name)}, routing check "
                  f"{'on' if config.checks_routing(party.name) else 'off'}")
        lines.append(f"{kind} {party.name}: {keys}, {', '.join(anchors)}; {policy}")
        for job in POLICY_DIRECTIONS:
            lines.append(f"  {job} certificates: {config.policy_for(party.name, job).describe()}")
        for index, identity in enumerate(party.identities, 1):
            lines.append(f"  key {index}: {_key_line(identity)}")
        warnings.extend(_identity_warnings(party, f"{kind} {party.name}", now))

    for name in sorted(config.domains):
        domain = config.domains[name]
        party_lines("domain", domain, None)
        members = [a for a in config.addresses if a.rpartition("@")[2] == name]
        if not domain.identities and not any(config.addresses[a].identities for a in members):
            warnings.append(
                f"warning: domain {name} has no key, nor has any of its addresses: mail from or to it is refused"
            )
        for direction in _DIRECTIONS:
            if not domain.anchors(direction):
                warnings.append(f"warning: domain {name} has no {direction} trust anchors")
    for name in sorted(config.addresses):
        address = config.addresses[name]
        party_lines("address", address, config.domain_of(name))
        for direction in _DIRECTIONS:
            if address.anchors(direction) == ():
                warnings.append(f"warning: address {name} has an empty {direction} anchor list: it trusts nobody")
    lines.append(f"out-of-band certificates: {len(config.certificates)}")
    for cert in config.certificates:
        if cert.not_valid_after_utc < now:
            warnings.append(f"warning: out-of-band certificate expired: {_cert_line(cert)}")
    return lines + warnings
