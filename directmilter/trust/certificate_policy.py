"""Certificate policies: what a HISP requires of the certificates it uses, per hosted domain and per direction.

Path validation (:mod:`directmilter.trust.validator`) decides whether a certificate is *trusted*: bound to the
address, chained to an anchor, in date, not revoked. A policy decides whether a trusted certificate is
*acceptable here*: the key size, the key usage it asserts, what it is meant for (extendedKeyUsage), which
certificate policies it was issued under (trust frameworks name their assurance levels by policy OID) and how it
was signed. Three directions, because a HISP judges them differently:

``recipients``
    others' certificates we encrypt to, when a hosted user sends;
``signers``
    others' certificates whose signatures we accept, when a hosted user receives;
``own``
    our own certificates, when we sign.

A certificate that fails is skipped (another of the address's certificates may pass); the reason is what
``directmilter lookup`` shows and what the refusal says when none is left.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from directmilter import certfacts
from directmilter.memo import kept

DIRECTIONS = ("recipients", "signers", "own")
KEY_USAGES = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
USAGES = ("any", "single", "dual")
EXTENDED_KEY_USAGES = {
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION.dotted_string,
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string,
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH.dotted_string,
}
SIGNATURE_HASHES = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")
_ANY_EKU = ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE.dotted_string
_SIGNS = ("digital_signature", "content_commitment")
_ENCRYPTS = ("key_encipherment", "key_agreement", "data_encipherment")
#: RSA keys below this are refused unless a policy says otherwise (the issue's default; RFC 5751 makes 1024-bit
#: verification a MUST to *support*, which ``min_rsa_bits = 1024`` does).
DEFAULT_MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class CertificatePolicy:
    """What one direction requires of a certificate; the defaults refuse only RSA keys under 2048 bits."""

    key_usage: frozenset[str] = frozenset()  # bits that must be set when keyUsage is present (absent: any use)
    usage: str = "any"  # "single": signing or encryption, never both; "dual": both
    extended_key_usage: frozenset[str] = frozenset()  # dotted OIDs: when set, the certificate must list one
    min_rsa_bits: int = DEFAULT_MIN_RSA_BITS
    required_policies: frozenset[str] = field(default_factory=frozenset)  # at least one must be asserted
    forbidden_policies: frozenset[str] = field(default_factory=frozenset)
    forbidden_signature_algorithms: frozenset[str] = field(default_factory=frozenset)  # hash names

    def violation(self, cert: x509.Certificate) -> str | None:
        """Why ``cert`` fails this policy, or None when it passes (a certificate that cannot be read fails)."""
        return _violation(self, cert)

    def _violation(self, cert: x509.Certificate) -> str | None:
        key = cert.public_key()
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < self.min_rsa_bits:
            return f"RSA key of {key.key_size} bits, the policy requires at least {self.min_rsa_bits}"
        usages = _key_usages(cert)
        missing = sorted(self.key_usage - usages) if usages is not None else []
        if missing:
            return f"keyUsage lacks {', '.join(missing)}"
        signs = usages is None or bool(usages & set(_SIGNS))
        encrypts = usages is None or bool(usages & set(_ENCRYPTS))
        if self.usage == "single" and signs and encrypts:
            return "a dual-use certificate (signing and encryption), the policy requires single-use certificates"
        if self.usage == "dual" and not (signs and encrypts):
            return "a single-use certificate, the policy requires dual-use (signing and encryption) certificates"
        if self.extended_key_usage:
            listed = _extended_key_usages(cert)
            if listed is None:
                return "no extendedKeyUsage, the policy requires " + _names(self.extended_key_usage)
            if _ANY_EKU not in listed and not listed & self.extended_key_usage:
                return f"extendedKeyUsage {_names(listed)}, the policy requires {_names(self.extended_key_usage)}"
        asserted = _policies(cert)
        if self.required_policies and not asserted & self.required_policies:
            return (f"certificate policies {', '.join(sorted(asserted)) or '(none)'}, the policy requires one of "
                    f"{', '.join(sorted(self.required_policies))}")
        forbidden = sorted(asserted & self.forbidden_policies)
        if forbidden:
            return f"certificate policy {', '.join(forbidden)} is forbidden here"
        if self.forbidden_signature_algorithms:
            algorithm = cert.signature_hash_algorithm
            if algorithm is not None and algorithm.name in self.forbidden_signature_algorithms:
                return f"signed with {algorithm.name.upper()}, which the policy forbids"
        return None

    def describe(self) -> str:
        parts = [f"RSA >= {self.min_rsa_bits}"]
        if self.key_usage:
            parts.append("keyUsage " + "+".join(sorted(self.key_usage)))
        if self.usage != "any":
            parts.append(f"{self.usage}-use")
        if self.extended_key_usage:
            parts.append("extendedKeyUsage " + _names(self.extended_key_usage))
        if self.required_policies:
            parts.append("policies one of " + ", ".join(sorted(self.required_policies)))
        if self.forbidden_policies:
            parts.append("policies not " + ", ".join(sorted(self.forbidden_policies)))
        if self.forbidden_signature_algorithms:
            parts.append("not signed with " + ", ".join(sorted(self.forbidden_signature_algorithms)))
        return ", ".join(parts)

    def overridden(self, table: Mapping[str, Any]) -> CertificatePolicy:
        """This policy with the settings of a configuration table replacing its own; ValueError names the bad one."""
        changes: dict[str, Any] = {}
        for name, value in table.items():
            if name == "min_rsa_bits":
                if isinstance(value, bool) or not isinstance(value, int) or not 512 <= value <= 16384:
                    raise ValueError(f"{name}: must be a number of bits from 512 to 16384, not {value!r}")
                changes[name] = value
            elif name == "usage":
                if value not in USAGES:
                    raise ValueError(f"{name}: {value!r}: expected one of {', '.join(USAGES)}")
                changes[name] = value
            elif name == "key_usage":
                changes[name] = _choices(name, value, KEY_USAGES)
            elif name == "extended_key_usage":
                changes[name] = frozenset(EXTENDED_KEY_USAGES.get(v, v) for v in _oids(name, value,
                                                                                         EXTENDED_KEY_USAGES))
            elif name in ("required_policies", "forbidden_policies"):
                changes[name] = frozenset(_oids(name, value, {}))
            elif name == "forbidden_signature_algorithms":
                changes[name] = _choices(name, value, SIGNATURE_HASHES)
            else:
                raise ValueError(f"{name}: unknown setting (expected one of min_rsa_bits, key_usage, usage, "
                                 "extended_key_usage, required_policies, forbidden_policies, "
                                 "forbidden_signature_algorithms)")
        return replace(self, **changes)


@kept(1024)
def _violation(policy: CertificatePolicy, cert: x509.Certificate) -> str | None:
    """:meth:`CertificatePolicy.violation`, kept per policy and certificate: both are immutable, and the same few
    certificates (our own signing ones above all) are checked on every message."""
    try:
        return policy._violation(cert)
    except (ValueError, UnsupportedAlgorithm) as exc:  # a malformed extension, an unknown key or algorithm
        return f"the certificate cannot be read for the policy check ({exc})"


def _strings(name: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name}: must be an array of strings")
    return [v.strip() for v in value]


def _choices(name: str, value: object, allowed: tuple[str, ...]) -> frozenset[str]:
    found = _strings(name, value)
    for item in found:
        if item not in allowed:
            raise ValueError(f"{name}: {item!r}: expected one of {', '.join(allowed)}")
    return frozenset(found)


def _oids(name: str, value: object, names: Mapping[str, str]) -> list[str]:
    found = _strings(name, value)
    for item in found:
        if item not in names and not _is_oid(item):
            known = f"one of {', '.join(names)} or " if names else ""
            raise ValueError(f"{name}: {item!r}: expected {known}a dotted OID such as 2.16.840.1.113883.3.184.6.1")
    return found


def _is_oid(text: str) -> bool:
    arcs = text.split(".")
    return len(arcs) >= 2 and all(arc.isdigit() for arc in arcs) and arcs[0] in ("0", "1", "2")


def _names(oids: frozenset[str] | set[str]) -> str:
    by_oid = {oid: name for name, oid in EXTENDED_KEY_USAGES.items()}
    return " or ".join(sorted(by_oid.get(oid, oid) for oid in oids))


def _key_usages(cert: x509.Certificate) -> set[str] | None:
    usage = certfacts.extension(cert, x509.KeyUsage)
    return None if usage is None else {name for name in KEY_USAGES if getattr(usage, name)}


def _extended_key_usages(cert: x509.Certificate) -> set[str] | None:
    usages = certfacts.extension(cert, x509.ExtendedKeyUsage)
    return None if usages is None else {oid.dotted_string for oid in usages}


def _policies(cert: x509.Certificate) -> set[str]:
    found = certfacts.extension(cert, x509.CertificatePolicies)
    return set() if found is None else {info.policy_identifier.dotted_string for info in found}
