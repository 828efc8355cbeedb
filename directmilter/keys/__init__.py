"""Our own keys: private identities (:mod:`.identity`) and loading them from files (:mod:`.load`)."""

from directmilter.keys.identity import PrivateIdentity, PrivateKey

__all__ = ["PrivateIdentity", "PrivateKey"]
