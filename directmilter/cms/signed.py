"""CMS SignedData (RFC 5652 section 5) for detached S/MIME signatures.

Built on asn1crypto structures and ``cryptography`` primitives because ``cryptography``'s own PKCS#7 module has no
verification API. Signing always includes the signer's certificate and chain (AS 2.5.2) and the signed attributes
RFC 5751 2.5 asks for; verification checks every SignerInfo independently and reports each result, because the
agent needs *one* valid signature whose certificate the recipient trusts (agent algorithm, Process Incoming).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from directmilter.cms import algorithms, ber
from directmilter.cms.der import MALFORMED_INPUT, issued_as, load_certificate, public_key, subject_key_identifier, tlv
from directmilter.cms.mime import Chunk
from directmilter.errors import (
    CMSError,
    ForbiddenAlgorithm,
    NoSignerCertificate,
    SignatureInvalid,
)
from directmilter.keys.identity import PrivateIdentity
from directmilter.memo import kept

#: Advertised in every signature (RFC 5751 2.5.2): the ciphers we prefer to receive, strongest first.
_CAPABILITIES = ("aes256_cbc", "aes128_cbc", "aes256_gcm", "aes128_gcm")


# --- signing ---------------------------------------------------------------------------------------------------


def sign_detached(content: Chunk | Sequence[Chunk], signers: Sequence[PrivateIdentity], digest: str) -> bytes:
    """A DER ContentInfo holding a detached SignedData over ``content`` (whole, or in pieces), one SignerInfo per
    identity.

    Assembled from DER pieces rather than asn1crypto structures: everything but the signing time, the digest and
    the signature value is the same for every message of an identity and is encoded once (:func:`_identity_parts`).
    Building it through asn1crypto cost three times the RSA signature itself on every message.
    """
    if digest not in algorithms.DIGESTS_SEND:
        raise ForbiddenAlgorithm(f"digest {digest} may not be used for signing (Applicability Statement 2.6)")
    if not signers:
        raise CMSError("no signing key given")
    content_digest = _hash(digest, content)
    digest_algorithm = _digest_algorithm(digest)
    # DER: each SET OF in the order of its elements' encodings (X.690 11.6).
    signer_infos = b"".join(sorted(_signer_info(identity, digest, content_digest) for identity in signers))
    certificates = b"".join(sorted(_unique_der(
        der for identity in signers for der in _der_chain(identity.certificate, identity.chain))))
    signed_data = tlv(0x30, b"".join([
        b"\x02\x01\x01",  # version 1
        tlv(0x31, digest_algorithm),
        _DATA_CONTENT_INFO,  # encapContentInfo without content: detached
        tlv(0xA0, certificates),
        tlv(0x31, signer_infos),
    ]))
    return tlv(0x30, _SIGNED_DATA_OID + tlv(0xA0, signed_data))


def _signer_info(identity: PrivateIdentity, digest: str, content_digest: bytes) -> bytes:
    sid, certificate_digest_algorithm = _identity_parts(identity.certificate.public_bytes(serialization.Encoding.DER),
                                                        digest)
    attributes = sorted([  # DER: the elements of a SET OF in the order of their encodings (X.690 11.6)
        _CONTENT_TYPE_ATTRIBUTE,
        _attribute(_SIGNING_TIME_OID, tlv(0x17, datetime.now(UTC).strftime("%y%m%d%H%M%SZ").encode())),
        _attribute(_MESSAGE_DIGEST_OID, tlv(0x04, content_digest)),
        _CAPABILITIES_ATTRIBUTE,
    ])
    to_sign = tlv(0x31, b"".join(attributes))  # the DER of the SET OF, as RFC 5652 5.4 requires
    key = identity.private_key
    hash_algorithm = algorithms.hash_for(digest)
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(to_sign, padding.PKCS1v15(), hash_algorithm)
        signature_algorithm = _RSA_SIGNATURE
    else:
        signature = key.sign(to_sign, ec.ECDSA(hash_algorithm))
        signature_algorithm = _ecdsa_algorithm(digest)
    return tlv(0x30, b"".join([
        b"\x02\x01\x01",  # version 1: issuerAndSerialNumber
        sid,
        certificate_digest_algorithm,
        b"\xa0" + to_sign[1:],  # the same attributes, as [0] IMPLICIT
        signature_algorithm,
        tlv(0x04, signature),
    ]))


def _attribute(oid: bytes, value: bytes) -> bytes:
    return tlv(0x30, oid + tlv(0x31, value))


@kept(256)
def _identity_parts(certificate_der: bytes, digest: str) -> tuple[bytes, bytes]:
    """The signer identifier (issuer and serial) of a certificate, and the digest AlgorithmIdentifier."""
    cert = asn1_x509.Certificate.load(certificate_der)
    sid = cms.IssuerAndSerialNumber({"issuer": cert.issuer, "serial_number": cert.serial_number}).dump()
    return sid, _digest_algorithm(digest)


@functools.lru_cache(maxsize=16)
def _digest_algorithm(digest: str) -> bytes:
    return bytes(algos.DigestAlgorithm({"algorithm": algorithms.asn1_digest(digest)}).dump())


@functools.lru_cache(maxsize=16)
def _ecdsa_algorithm(digest: str) -> bytes:
    return bytes(algos.SignedDigestAlgorithm({"algorithm": f"{algorithms.asn1_digest(digest)}_ecdsa"}).dump())


_SIGNED_DATA_OID = cms.ContentType("signed_data").dump()
_DATA_CONTENT_INFO = cms.EncapsulatedContentInfo({"content_type": "data"}).dump()
_SIGNING_TIME_OID = cms.CMSAttributeType("signing_time").dump()
_MESSAGE_DIGEST_OID = cms.CMSAttributeType("message_digest").dump()
_CONTENT_TYPE_OID = cms.CMSAttributeType("content_type").dump()
_DATA_OID = cms.ContentType("data").dump()
_CONTENT_TYPE_ATTRIBUTE = cms.CMSAttribute({"type": "content_type", "values": ["data"]}).dump()
_CAPABILITIES_ATTRIBUTE = cms.CMSAttribute(
    {"type": "smime_capabilities", "values": [[{"capability_id": cap} for cap in _CAPABILITIES]]}).dump()
_RSA_SIGNATURE = algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"}).dump()


def _der_chain(cert: x509.Certificate, chain: Iterable[x509.Certificate]) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in (cert, *chain)]


def _unique_der(ders: Iterable[bytes]) -> list[bytes]:
    return list(dict.fromkeys(ders))


def _hash(digest: str, data: Chunk | Sequence[Chunk]) -> bytes:
    hashed = hashlib.new(digest)
    for piece in (data,) if isinstance(data, bytes | bytearray | memoryview) else data:
        hashed.update(piece)
    return hashed.digest()


# --- verification ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureResult:
    """The outcome for one SignerInfo: ``error`` is None when the signature verifies."""

    certificate: x509.Certificate | None
    digest: str | None
    error: CMSError | None

    @property
    def valid(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class SignatureReport:
    """Every SignerInfo's result, and all certificates the SignedData carried (for path building)."""

    results: tuple[SignatureResult, ...]
    certificates: tuple[x509.Certificate, ...]

    @property
    def valid(self) -> tuple[SignatureResult, ...]:
        return tuple(r for r in self.results if r.valid)


#: More SignerInfos than this in one signature are refused before any is checked: each costs a digest of the
#: content and a public-key operation, and real Direct mail has one (two while a certificate is being rolled).
MAX_SIGNERS = 8


def verify_detached(
    content: Chunk,
    signature_der: bytes,
    accepted_digests: frozenset[str] | tuple[str, ...] = algorithms.DIGESTS_ACCEPT,
    max_certificates: int | None = None,
) -> SignatureReport:
    """Check each SignerInfo of a detached SignedData against the exact ``content`` bytes.

    Structural problems (not a SignedData, embedded content, no SignerInfo) raise; per-signer problems (unknown or
    forbidden digest, missing certificate, digest mismatch, bad signature) are reported in the result. The DER is
    read by hand (:mod:`directmilter.cms.ber`); each SignerInfo only when it is checked, so that a malformed one
    is that signer's error. The work is bounded before it starts: at most ``max_certificates`` certificates are
    loaded and :data:`MAX_SIGNERS` SignerInfos checked, and the content is hashed once per digest algorithm.
    """
    der = signature_der
    try:
        content_info = ber.children(der, ber.element(der, 0, len(der)), ber.SEQUENCE, "ContentInfo")
        if len(content_info) < 2:
            raise ber.BERError("ContentInfo has no content")
        kind = ber.oid(der, content_info[0], "ContentInfo contentType")
        if kind != _SIGNED_DATA_OID:
            raise CMSError(f"signature part holds {_oid_name(cms.ContentType, kind)}, not SignedData")
        explicit = ber.children(der, content_info[1], 0xA0, "ContentInfo content")
        if not explicit:
            raise ber.BERError("ContentInfo content is empty")
        fields = ber.children(der, explicit[0], ber.SEQUENCE, "SignedData")
        if len(fields) < 4 or fields[-1].tag != ber.SET:
            raise ber.BERError("SignedData lacks its encapsulated content info or signer infos")
        encap = ber.children(der, fields[2], ber.SEQUENCE, "EncapsulatedContentInfo")
        if not encap:
            raise ber.BERError("EncapsulatedContentInfo is empty")
        content_type = ber.oid(der, encap[0], "eContentType")
        if len(encap) > 1:
            if encap[1].tag == 0xA0:
                raise CMSError("signature is not detached: SignedData carries its own content (AS 2.5.1)")
            raise ber.BERError(f"eContent has identifier {encap[1].tag:#04x}, not [0]")
        certificates = next((f for f in fields[3:-1] if f.tag == 0xA0), None)
        choices = ber.children(der, certificates, 0xA0, "certificates") if certificates else []
        if max_certificates is not None and len(choices) > max_certificates:
            raise CMSError(f"the signature carries {len(choices)} certificates, more than the limit of "
                           f"{max_certificates} ([limits] max_certificates)")
        crypto_certs = tuple(load_certificate(ber.encoding(der, c)) for c in choices if c.tag == ber.SEQUENCE)
        signer_infos = ber.children(der, fields[-1], ber.SET, "SignerInfos")
        if len(signer_infos) > MAX_SIGNERS:
            raise CMSError(f"the signature has {len(signer_infos)} SignerInfos, more than the limit of {MAX_SIGNERS}")
    except CMSError:
        raise
    except MALFORMED_INPUT as exc:
        raise CMSError(f"signature: not a valid CMS SignedData ({exc})") from exc
    if not signer_infos:
        raise SignatureInvalid("signature: SignedData has no SignerInfo")
    digests: dict[str, bytes] = {}  # the content's digest by algorithm: several signers share one
    results = tuple(_verify_one(der, info, content, content_type, crypto_certs, accepted_digests, digests)
                    for info in signer_infos)
    return SignatureReport(results=results, certificates=crypto_certs)


@kept(64)
def _oid_name(kind: type[core.ObjectIdentifier], encoded: bytes) -> str:
    """asn1crypto's name for an encoded OID of ``kind`` (its dotted form when it has none)."""
    return str(kind.load(encoded).native)


class _SignerInfo(NamedTuple):
    """The fields of a SignerInfo (RFC 5652 5.3), as encoded."""

    who: ber.Identifier
    digest_algorithm: bytes  # the DER of the OID
    signed_attrs: ber.Element | None
    signature_algorithm: bytes  # the DER of the whole AlgorithmIdentifier
    signature: bytes


def _read_signer_info(der: bytes, info: ber.Element) -> _SignerInfo:
    parts = ber.children(der, info, ber.SEQUENCE, "SignerInfo")
    if len(parts) < 5:
        raise ber.BERError(f"a SignerInfo has {len(parts)} fields, not at least 5")
    ber.integer(der, parts[0], "SignerInfo version")
    who = ber.identifier(der, parts[1], "SignerIdentifier")
    digest = ber.algorithm(der, parts[2], "DigestAlgorithmIdentifier")[0]
    rest = parts[3:]
    attrs = rest.pop(0) if rest[0].tag == 0xA0 else None
    if len(rest) < 2:
        raise ber.BERError("a SignerInfo lacks its signature algorithm or value")
    ber.expect(rest[0], ber.SEQUENCE, "SignatureAlgorithmIdentifier")
    if rest[2:] and (len(rest) > 3 or rest[2].tag != 0xA1):
        raise ber.BERError("a SignerInfo has fields after its signature value that are not unsignedAttrs")
    signature = ber.octet_string(der, rest[1], "signature value")
    return _SignerInfo(who, digest, attrs, ber.encoding(der, rest[0]), signature)


def _verify_one(
    der: bytes,
    element: ber.Element,
    content: Chunk,
    content_type: bytes,
    crypto_certs: tuple[x509.Certificate, ...],
    accepted_digests: frozenset[str] | tuple[str, ...],
    digests: dict[str, bytes],
) -> SignatureResult:
    cert: x509.Certificate | None = None
    digest: str | None = None
    try:
        info = _read_signer_info(der, element)
        cert = _find_signer(info, crypto_certs)
        digest = algorithms.digest_name(_oid_name(algos.DigestAlgorithmId, info.digest_algorithm), accepted_digests)
        if cert is None:
            raise NoSignerCertificate(f"signature carries no signer certificate for {_describe_sid(info)} (AS 2.5.2)")
        signed = _signed_bytes(der, info, content, content_type, digest, digests)
        _check_signature(cert, info, signed, digest)
    except CMSError as exc:
        return SignatureResult(certificate=cert, digest=digest, error=exc)
    except MALFORMED_INPUT as exc:
        return SignatureResult(certificate=cert, digest=digest, error=CMSError(f"malformed SignerInfo ({exc})"))
    return SignatureResult(certificate=cert, digest=digest, error=None)


def _find_signer(info: _SignerInfo, certs: tuple[x509.Certificate, ...]) -> x509.Certificate | None:
    issuer, serial, key_identifier = info.who
    if issuer is not None and serial is not None:
        return next((cert for cert in certs if issued_as(cert, issuer, serial)), None)
    return next((cert for cert in certs if subject_key_identifier(cert) == key_identifier), None)


def _describe_sid(info: _SignerInfo) -> str:
    issuer, serial, key_identifier = info.who
    if issuer is not None:
        return f"issuer {asn1_x509.Name.load(issuer).human_friendly}, serial {serial:X}"
    return f"subject key identifier {(key_identifier or b'').hex()}"


def _signed_bytes(der: bytes, info: _SignerInfo, content: Chunk, content_type: bytes, digest: str,
                  digests: dict[str, bytes]) -> Chunk:
    """What the signature value covers: the DER SET of the signed attributes, or the content itself."""
    attrs = info.signed_attrs
    if attrs is None:
        if content_type != _DATA_OID:
            raise SignatureInvalid("signature without signed attributes over non-data content (RFC 5652 5.3)")
        return content
    # Attribute types are compared as encoded OIDs, and values as encoded: they are all we look at.
    found: dict[bytes, list[list[ber.Element]]] = {}
    for attr in ber.children(der, attrs, 0xA0, "signedAttrs"):
        parts = ber.children(der, attr, ber.SEQUENCE, "Attribute")
        if len(parts) != 2:
            raise ber.BERError(f"an Attribute has {len(parts)} fields, not 2")
        kind = ber.oid(der, parts[0], "attribute type")
        found.setdefault(kind, []).append(ber.children(der, parts[1], ber.SET, "attribute values"))
    for name, oid in (("content_type", _CONTENT_TYPE_OID), ("message_digest", _MESSAGE_DIGEST_OID)):
        if len(found.get(oid, [])) != 1:
            raise SignatureInvalid(f"signed attribute {name} must occur exactly once (RFC 5652 5.3)")
    if ber.encoding(der, _single_value(found[_CONTENT_TYPE_OID][0], "content_type")) != content_type:
        raise SignatureInvalid("signed contentType attribute does not match the content (RFC 5652 11.1)")
    value = _single_value(found[_MESSAGE_DIGEST_OID][0], "message_digest")
    ber.expect(value, ber.OCTET_STRING, "message_digest attribute")
    if digest not in digests:
        digests[digest] = _hash(digest, content)
    if bytes(der[value.start : value.end]) != digests[digest]:
        raise SignatureInvalid("message digest does not match: the signed content was changed")
    # Re-tag the received [0] IMPLICIT bytes as a SET, keeping them exactly as the signer encoded them.
    return tlv(ber.SET, bytes(der[attrs.start : attrs.end]))


def _single_value(values: list[ber.Element], name: str) -> ber.Element:
    if len(values) != 1:
        raise SignatureInvalid(f"signed attribute {name} must have exactly one value")
    return values[0]


def _check_signature(cert: x509.Certificate, info: _SignerInfo, signed: Chunk, digest: str) -> None:
    name = _oid_name(algos.SignedDigestAlgorithmId, _algorithm_oid(info.signature_algorithm))
    if name.startswith(("md2", "md5")):
        raise ForbiddenAlgorithm(f"signature algorithm {name} uses MD5/MD2 (Applicability Statement 2.6)")
    signature = info.signature
    signed = signed if isinstance(signed, bytes) else bytes(signed)  # no signed attributes: rare, and small
    try:
        key = public_key(cert)
    except UnsupportedAlgorithm as exc:
        raise SignatureInvalid(f"the signer's certificate has a key of a type that is not supported ({exc})") from exc
    hash_algorithm = algorithms.hash_for(digest)
    try:
        if isinstance(key, rsa.RSAPublicKey) and name == "rsassa_pss":
            algorithm = algos.SignedDigestAlgorithm.load(info.signature_algorithm)
            key.verify(signature, signed, _pss_padding(algorithm, digest), hash_algorithm)
        elif isinstance(key, rsa.RSAPublicKey) and (name == "rsassa_pkcs1v15" or name.endswith("_rsa")):
            key.verify(signature, signed, padding.PKCS1v15(), hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and (name == "ecdsa" or name.endswith("_ecdsa")):
            key.verify(signature, signed, ec.ECDSA(hash_algorithm))
        else:
            raise SignatureInvalid(
                f"signature algorithm {name} does not fit the signer's {type(key).__name__} key"
            )
    except InvalidSignature as exc:
        raise SignatureInvalid("signature value does not verify with the signer's certificate") from exc


@kept(64)
def _algorithm_oid(algorithm: bytes) -> bytes:
    """The OID of an AlgorithmIdentifier (whose parameters do not matter to its name)."""
    return ber.algorithm(algorithm, ber.element(algorithm, 0, len(algorithm)), "signature algorithm")[0]


def _pss_padding(algorithm: algos.SignedDigestAlgorithm, digest: str) -> padding.PSS:
    params = algorithm["parameters"]
    pss_hash = algorithms.digest_name(params["hash_algorithm"]["algorithm"].native)
    mgf_hash = algorithms.digest_name(params["mask_gen_algorithm"]["parameters"]["algorithm"].native)
    if pss_hash != digest:
        raise SignatureInvalid(f"RSA-PSS hash {pss_hash} differs from the signer's digest {digest}")
    salt = params["salt_length"].native
    return padding.PSS(mgf=padding.MGF1(algorithms.hash_for(mgf_hash)), salt_length=salt)
