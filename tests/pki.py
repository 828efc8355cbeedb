"""Throw-away PKI for tests, built with ``cryptography`` at test run time.

Nothing here is committed key material: point :class:`PKI` at a pytest ``tmp_path``
(or ``tmp_path_factory`` directory) and every certificate / key is generated there.

Certificates are written as PEM (``<name>.pem``), keys as unencrypted PKCS#8 PEM
(``<name>.key``, mode 0600).

Weak signature hashes: cryptography (>= 4x, here 50) refuses to *build* certificates
signed with SHA-1 or MD5 ("Hash algorithm ... not supported for signatures"), although
its low-level ``key.sign()`` still accepts both.  For ``hash="sha1"`` / ``"md5"`` we
therefore build the certificate with SHA-256, then rewrite the two signature-algorithm
fields with asn1crypto and re-sign the TBSCertificate ourselves (see :func:`_resign`).
MD5 is RSA-only (there is no ECDSA-with-MD5 OID).
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from asn1crypto import algos as asn1_algos
from asn1crypto import core as asn1_core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12 as crypto_pkcs12
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
KeyType = Literal["rsa1024", "rsa2048", "rsa3072", "rsa4096", "ec256", "ec384"]
HashName = Literal["sha256", "sha384", "sha512", "sha1", "md5"]

ORGANIZATION = "directmilter test PKI"
DEFAULT_LEAF_KEY_USAGE: frozenset[str] = frozenset({"digitalSignature", "keyEncipherment"})

_KEY_USAGE_FLAGS = {
    "digitalSignature": "digital_signature",
    "nonRepudiation": "content_commitment",
    "contentCommitment": "content_commitment",
    "keyEncipherment": "key_encipherment",
    "dataEncipherment": "data_encipherment",
    "keyAgreement": "key_agreement",
    "keyCertSign": "key_cert_sign",
    "cRLSign": "crl_sign",
    "encipherOnly": "encipher_only",
    "decipherOnly": "decipher_only",
}
_EKU = {
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "anyExtendedKeyUsage": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
    "sha1": hashes.SHA1,
    "md5": hashes.MD5,
}
# what CertificateBuilder.sign accepts; the weak ones are signed with SHA-256 first, then _resign()ed
_BUILDER_HASHES: dict[str, hashes.SHA256 | hashes.SHA384 | hashes.SHA512] = {
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class Issued:
    """A generated certificate, its private key and where both were written."""

    cert: x509.Certificate
    key: PrivateKey
    cert_path: Path
    key_path: Path
    name: str
    issuer: Issued | None = field(default=None, repr=False)  # None for self-signed

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def chain(self) -> list[Issued]:
        """This certificate followed by its issuers, up to the self-signed top."""
        out: list[Issued] = []
        node: Issued | None = self
        while node is not None:
            out.append(node)
            node = node.issuer
        return out


def _new_key(key: KeyType) -> PrivateKey:
    if key.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key[3:]))
    curves: dict[str, ec.EllipticCurve] = {"ec256": ec.SECP256R1(), "ec384": ec.SECP384R1()}
    if key not in curves:
        raise ValueError(f"unknown key type {key!r}")
    return ec.generate_private_key(curves[key])


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    path.chmod(0o600)  # in case the file already existed with wider permissions


def _resign(cert: x509.Certificate, key: PrivateKey, hash_name: str) -> x509.Certificate:
    """Re-sign ``cert`` with a hash cryptography's CertificateBuilder refuses (SHA-1, MD5)."""
    algo_hash = _HASHES[hash_name]()
    if isinstance(key, rsa.RSAPrivateKey):
        algo = asn1_algos.SignedDigestAlgorithm(
            {"algorithm": f"{hash_name}_rsa", "parameters": asn1_core.Null()}
        )
    elif hash_name == "md5":
        raise ValueError("MD5 signatures are RSA-only (no ecdsa-with-MD5 OID)")
    else:
        algo = asn1_algos.SignedDigestAlgorithm({"algorithm": f"{hash_name}_ecdsa"})
    tbs = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))["tbs_certificate"]
    tbs["signature"] = algo
    tbs_der = tbs.dump(force=True)
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(tbs_der, padding.PKCS1v15(), algo_hash)
    else:
        signature = key.sign(tbs_der, ec.ECDSA(algo_hash))
    new = asn1_x509.Certificate(
        {
            "tbs_certificate": asn1_x509.TbsCertificate.load(tbs_der),
            "signature_algorithm": algo,
            "signature_value": signature,
        }
    )
    return x509.load_der_x509_certificate(new.dump())


def _duplicate_extension(cert: x509.Certificate, key: PrivateKey, oid: str) -> x509.Certificate:
    """``cert`` with its extension ``oid`` repeated (RFC 5280 4.2 forbids that; cryptography's builder refuses
    it), re-signed by ``key``."""
    tbs = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))["tbs_certificate"]
    [extension] = [e for e in tbs["extensions"] if e["extn_id"].dotted == oid]
    tbs["extensions"] = asn1_x509.Extensions([*tbs["extensions"], asn1_x509.Extension.load(extension.dump())])
    tbs_der = tbs.dump(force=True)
    algo = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))["signature_algorithm"]
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(tbs_der, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = key.sign(tbs_der, ec.ECDSA(hashes.SHA256()))
    new = asn1_x509.Certificate({"tbs_certificate": asn1_x509.TbsCertificate.load(tbs_der),
                                 "signature_algorithm": algo, "signature_value": signature})
    return x509.load_der_x509_certificate(new.dump())


def _distribution_extensions(
    aia_ca_issuers: str | Sequence[str] | None, ocsp_url: str | None, crl_url: str | None
) -> list[tuple[x509.ExtensionType, bool]]:
    """AIA (caIssuers, one URL or several, and/or OCSP) and CRL distribution point extensions, non-critical."""
    exts: list[tuple[x509.ExtensionType, bool]] = []
    issuers = [aia_ca_issuers] if isinstance(aia_ca_issuers, str) else list(aia_ca_issuers or ())
    access = [
        x509.AccessDescription(oid, x509.UniformResourceIdentifier(url))
        for oid, url in (
            *((AuthorityInformationAccessOID.CA_ISSUERS, url) for url in issuers),
            (AuthorityInformationAccessOID.OCSP, ocsp_url),
        )
        if url
    ]
    if access:
        exts.append((x509.AuthorityInformationAccess(access), False))
    if crl_url:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)
        exts.append((x509.CRLDistributionPoints([point]), False))
    return exts


def _key_usage(names: Iterable[str]) -> x509.KeyUsage:
    flags = dict.fromkeys(_KEY_USAGE_FLAGS.values(), False)
    for name in names:
        if name not in _KEY_USAGE_FLAGS:
            raise ValueError(f"unknown keyUsage {name!r}; known: {sorted(_KEY_USAGE_FLAGS)}")
        flags[_KEY_USAGE_FLAGS[name]] = True
    return x509.KeyUsage(**flags)


class PKI:
    """Factory for roots, intermediates and leaves, writing PEM files into ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    # -- public API -------------------------------------------------------------------

    def root(
        self,
        name: str,
        *,
        days: int = 3650,
        key: KeyType = "rsa2048",
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        hash: HashName = "sha256",
    ) -> Issued:
        """Self-signed CA: basicConstraints CA (critical), keyUsage keyCertSign+cRLSign (critical)."""
        return self._issue(
            name, self._name(name), None, key, days, not_before, not_after, hash, self._ca_extensions()
        )

    def intermediate(
        self,
        name: str,
        issuer: Issued,
        *,
        days: int = 1825,
        key: KeyType = "rsa2048",
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        hash: HashName = "sha256",
        path_length: int | None = None,
        aia_ca_issuers: str | Sequence[str] | None = None,
        crl_url: str | None = None,
        ocsp_url: str | None = None,
    ) -> Issued:
        exts = self._ca_extensions(path_length) + _distribution_extensions(aia_ca_issuers, ocsp_url, crl_url)
        return self._issue(name, self._name(name), issuer, key, days, not_before, not_after, hash, exts)

    def leaf(
        self,
        name: str,
        issuer: Issued | None,
        *,
        email: str | None = None,
        dns: str | None = None,
        subject_email: str | None = None,
        cn: str | None = None,
        key: KeyType = "rsa2048",
        days: int = 825,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        hash: HashName = "sha256",
        key_usage: Iterable[str] | None = DEFAULT_LEAF_KEY_USAGE,
        extended_key_usage: Iterable[str] | None = None,
        aia_ca_issuers: str | Sequence[str] | None = None,
        crl_url: str | None = None,
        ocsp_url: str | None = None,
        self_signed: bool = False,
        policies: Iterable[str] = (),
    ) -> Issued:
        """End-entity certificate.

        ``email`` -> SAN rfc822Name, ``dns`` -> SAN dNSName, ``subject_email`` -> subject
        emailAddress attribute.  ``key_usage=None`` omits the keyUsage extension (EC keys
        that should receive mail want ``{"digitalSignature", "keyAgreement"}``).
        ``self_signed=True`` requires ``issuer=None`` and yields a non-CA self-signed leaf.
        ``policies`` are dotted certificate policy OIDs (a certificatePolicies extension when given).
        """
        if self_signed != (issuer is None):
            raise ValueError("pass issuer=None exactly when self_signed=True")
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn or email or dns or name)]
        if subject_email:
            attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, subject_email))
        exts: list[tuple[x509.ExtensionType, bool]] = [
            (x509.BasicConstraints(ca=False, path_length=None), True)
        ]
        if key_usage is not None:
            exts.append((_key_usage(key_usage), True))
        if extended_key_usage is not None:
            exts.append((x509.ExtendedKeyUsage([_EKU[n] for n in extended_key_usage]), False))
        if policies:
            exts.append((x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier(oid), None)
                                                   for oid in policies]), False))
        sans: list[x509.GeneralName] = []
        if email:
            sans.append(x509.RFC822Name(email))
        if dns:
            sans.append(x509.DNSName(dns))
        if sans:
            exts.append((x509.SubjectAlternativeName(sans), False))
        exts += _distribution_extensions(aia_ca_issuers, ocsp_url, crl_url)
        return self._issue(
            name, self._name(name, attrs), issuer, key, days, not_before, not_after, hash, exts
        )

    def with_duplicated_extension(self, name: str, issued: Issued,
                                  oid: str = "2.5.29.17") -> Issued:  # subjectAltName by default
        """A copy of ``issued`` (same key, same issuer) whose extension ``oid`` appears twice."""
        signer = issued.issuer.key if issued.issuer else issued.key
        cert = _duplicate_extension(issued.cert, signer, oid)
        cert_path = self._path(f"{name}.pem")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return Issued(cert=cert, key=issued.key, cert_path=cert_path, key_path=issued.key_path, name=name,
                      issuer=issued.issuer)

    def bundle(self, path_name: str, *certs: Issued | x509.Certificate) -> Path:
        """Write several certificates into one PEM file (for -CAfile, anchor folders...)."""
        path = self._path(path_name)
        path.write_bytes(
            b"".join(
                (c.cert if isinstance(c, Issued) else c).public_bytes(serialization.Encoding.PEM)
                for c in certs
            )
        )
        return path

    def pkcs12(
        self, issued: Issued, password: bytes | None, path_name: str, *, chain: Sequence[Issued] = ()
    ) -> Path:
        """Write key + cert (+ ``chain`` CA certs) as PKCS#12, mode 0600.

        ``password=None`` writes an unencrypted, MAC-less file; otherwise cryptography's
        best available encryption (PBES2/AES-256, HMAC-SHA256 MAC; readable by OpenSSL 3).
        """
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        )
        data = crypto_pkcs12.serialize_key_and_certificates(
            issued.name.encode(), issued.key, issued.cert, [c.cert for c in chain] or None, enc
        )
        path = self._path(path_name)
        _write_private(path, data)
        return path

    # -- internals --------------------------------------------------------------------

    def _path(self, file_name: str) -> Path:
        if not _SAFE_NAME.match(file_name):
            raise ValueError(f"unsafe file name {file_name!r}")
        return self.directory / file_name

    @staticmethod
    def _name(name: str, attrs: list[x509.NameAttribute[str]] | None = None) -> x509.Name:
        return x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]
            + (attrs or [x509.NameAttribute(NameOID.COMMON_NAME, name)])
        )

    @staticmethod
    def _ca_extensions(path_length: int | None = None) -> list[tuple[x509.ExtensionType, bool]]:
        return [
            (x509.BasicConstraints(ca=True, path_length=path_length), True),
            (_key_usage({"keyCertSign", "cRLSign"}), True),
        ]

    def _issue(
        self,
        name: str,
        subject: x509.Name,
        issuer: Issued | None,
        key_type: KeyType,
        days: int,
        not_before: datetime.datetime | None,
        not_after: datetime.datetime | None,
        hash_name: HashName,
        extensions: Sequence[tuple[x509.ExtensionType, bool]],
    ) -> Issued:
        cert_path, key_path = self._path(f"{name}.pem"), self._path(f"{name}.key")
        key = _new_key(key_type)
        signing_key = issuer.key if issuer else key
        start = not_before or datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(
            hours=1
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.cert.subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(not_after or start + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()), critical=False
            )
        )
        for ext_value, critical in extensions:
            builder = builder.add_extension(ext_value, critical=critical)
        cert = builder.sign(signing_key, _BUILDER_HASHES.get(hash_name, hashes.SHA256()))
        if hash_name not in _BUILDER_HASHES:
            cert = _resign(cert, signing_key, hash_name)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        return Issued(cert=cert, key=key, cert_path=cert_path, key_path=key_path, name=name, issuer=issuer)
