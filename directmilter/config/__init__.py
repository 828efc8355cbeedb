"""The configuration: one TOML file (see ``etc/directmilter.conf`` for a documented sample).

:func:`load_config` reads and checks everything at once — algorithms, hosted domains and addresses, every key,
certificate and anchor file — so a running milter never meets a configuration problem. Anything wrong (an unknown
key at any level, a wrong type, a missing or unreadable file, a key that does not match its certificate, a key file
readable by others, a forbidden algorithm) is a :class:`~directmilter.errors.ConfigError` naming the file and the
key, e.g. ``directmilter.conf: [domains."direct.a.test"].keys[0].key: /etc/x.key: no such file``.

Relative paths are relative to the configuration file's folder. Domain names and addresses are case-insensitive:
they are stored lower-cased and every lookup lower-cases its argument.

``model`` states every key once (name, type, default, meaning, kind); ``load`` reads a file by it; ``describe``
shows it (check-config) and lists its keys.
"""

from directmilter.cms.algorithms import (
    CIPHERS_ACCEPT,
    CIPHERS_SEND,
    DIGESTS_ACCEPT,
    DIGESTS_SEND,
    KEY_TRANSPORTS,
    RECIPIENT_IDS,
)
from directmilter.config.describe import describe, keys
from directmilter.config.load import load_config
from directmilter.config.model import (
    DEFAULT_ACCEPT_CIPHERS,
    DEFAULT_ACCEPT_DIGESTS,
    DEFAULT_CERTIFICATE_SHA1,
    DEFAULT_CIPHER,
    DEFAULT_DIGEST,
    DEFAULT_KEY_TRANSPORT,
    DEFAULT_POSTFIX_CONFIG,
    DEFAULT_RECIPIENT_ID,
    Config,
    CryptoPolicy,
    Direction,
    DiscoverySettings,
    Limits,
    MilterSettings,
    NotifySettings,
    Party,
    TrustSettings,
    normalize_address,
)

__all__ = [
    "CIPHERS_ACCEPT",
    "CIPHERS_SEND",
    "DEFAULT_ACCEPT_CIPHERS",
    "DEFAULT_ACCEPT_DIGESTS",
    "DEFAULT_CERTIFICATE_SHA1",
    "DEFAULT_CIPHER",
    "DEFAULT_DIGEST",
    "DEFAULT_KEY_TRANSPORT",
    "DEFAULT_POSTFIX_CONFIG",
    "DEFAULT_RECIPIENT_ID",
    "DIGESTS_ACCEPT",
    "DIGESTS_SEND",
    "KEY_TRANSPORTS",
    "RECIPIENT_IDS",
    "Config",
    "CryptoPolicy",
    "Direction",
    "DiscoverySettings",
    "Limits",
    "MilterSettings",
    "NotifySettings",
    "Party",
    "TrustSettings",
    "describe",
    "keys",
    "load_config",
    "normalize_address",
]
