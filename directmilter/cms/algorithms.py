"""Which algorithms a Direct STA may use, by the names operators write in the configuration.

The Applicability Statement allows SHA-256 for sending (2.6; SHA-384/512 through RFC 5754), SHA-1 on receipt only,
never MD5; AES-128/256-CBC (2.7), never 3DES, DES, RC2 or anything weaker. The tables here translate between our
configuration names, asn1crypto's names and ``cryptography`` objects, and every refusal names the algorithm so an
operator can tell a peer exactly what to change.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes

from directmilter.errors import ForbiddenAlgorithm

# --- digests ---------------------------------------------------------------------------------------------------

#: configuration name -> (asn1crypto name, hash class, micalg parameter of RFC 5751 3.4.3.2)
_DIGESTS: dict[str, tuple[str, type[hashes.HashAlgorithm], str]] = {
    "sha1": ("sha1", hashes.SHA1, "sha-1"),
    "sha256": ("sha256", hashes.SHA256, "sha-256"),
    "sha384": ("sha384", hashes.SHA384, "sha-384"),
    "sha512": ("sha512", hashes.SHA512, "sha-512"),
}
#: Digests we may sign with (never SHA-1: AS 2.6).
DIGESTS_SEND = ("sha256", "sha384", "sha512")
#: Digests we can verify; which of them are accepted is configuration.
DIGESTS_ACCEPT = ("sha1", "sha256", "sha384", "sha512")
_DIGEST_BY_ASN1 = {asn1: name for name, (asn1, _, _) in _DIGESTS.items()}
#: Known names for refusals that must say what the peer used.
_FORBIDDEN_DIGESTS = {"md2": "MD2", "md4": "MD4", "md5": "MD5"}


def digest_name(asn1_name: str, accepted: frozenset[str] | tuple[str, ...] = DIGESTS_ACCEPT) -> str:
    """Map an asn1crypto digest name to our name, refusing what the STA must not accept."""
    name = _DIGEST_BY_ASN1.get(asn1_name)
    if name is None:
        label = _FORBIDDEN_DIGESTS.get(asn1_name, asn1_name)
        raise ForbiddenAlgorithm(f"digest algorithm {label} is not accepted (Applicability Statement 2.6)")
    if name not in accepted:
        raise ForbiddenAlgorithm(f"digest algorithm {name.upper()} is not accepted by this STA's configuration")
    return name


def hash_for(name: str) -> hashes.HashAlgorithm:
    return _DIGESTS[name][1]()


def asn1_digest(name: str) -> str:
    return _DIGESTS[name][0]


def micalg(name: str) -> str:
    return _DIGESTS[name][2]


# --- content encryption ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cipher:
    """A content-encryption algorithm we implement."""

    name: str  # configuration name
    asn1: str  # asn1crypto EncryptionAlgorithmId name
    key_size: int  # bytes
    aead: bool  # AES-GCM inside AuthEnvelopedData (RFC 5083/5084)


_CIPHERS = {
    c.name: c
    for c in (
        Cipher("aes128-cbc", "aes128_cbc", 16, False),
        Cipher("aes192-cbc", "aes192_cbc", 24, False),
        Cipher("aes256-cbc", "aes256_cbc", 32, False),
        Cipher("aes128-gcm", "aes128_gcm", 16, True),
        Cipher("aes192-gcm", "aes192_gcm", 24, True),
        Cipher("aes256-gcm", "aes256_gcm", 32, True),
    )
}
_CIPHER_BY_ASN1 = {c.asn1: c for c in _CIPHERS.values()}
#: Ciphers we may encrypt with (AES-128/256 are the spec's MUSTs; GCM is the stronger extra).
CIPHERS_SEND = ("aes128-cbc", "aes256-cbc", "aes128-gcm", "aes256-gcm")
#: Ciphers we can decrypt; which of them are accepted is configuration.
CIPHERS_ACCEPT = tuple(_CIPHERS)
_FORBIDDEN_CIPHERS = {
    "tripledes_3key": "3DES (des-ede3-cbc)",
    "des": "DES (des-cbc)",
    "rc2": "RC2",
    "rc4": "RC4",
    "rc5": "RC5",
}


def cipher(name: str) -> Cipher:
    return _CIPHERS[name]


def cipher_for(asn1_name: str, oid: str, accepted: frozenset[str] | tuple[str, ...] = CIPHERS_ACCEPT) -> Cipher:
    """Map the envelope's content-encryption algorithm to a Cipher, refusing forbidden or unknown ones by name."""
    found = _CIPHER_BY_ASN1.get(asn1_name)
    if found is None:
        label = _FORBIDDEN_CIPHERS.get(asn1_name, f"{asn1_name} ({oid})" if asn1_name != oid else oid)
        raise ForbiddenAlgorithm(
            f"content encryption algorithm {label} is not accepted (Applicability Statement 2.7 requires AES)"
        )
    if found.name not in accepted:
        raise ForbiddenAlgorithm(
            f"content encryption algorithm {found.name} is not accepted by this STA's configuration"
        )
    return found


# --- key transport ---------------------------------------------------------------------------------------------

KEY_TRANSPORTS = ("rsa-pkcs1v15", "rsa-oaep")
RECIPIENT_IDS = ("issuer-serial", "subject-key-identifier")
