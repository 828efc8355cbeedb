"""Our own signing/decryption identities: a private key with its certificate."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class PrivateIdentity:
    """A certificate we hold the private key of (an address or an organisational certificate).

    ``chain`` holds the intermediates sent along with our signatures so peers can build the path; ``source`` names
    the file it came from, for error messages.
    """

    certificate: x509.Certificate
    private_key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()
    source: str = ""
