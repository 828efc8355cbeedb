"""CMS EnvelopedData (RFC 5652 section 6) and AuthEnvelopedData with AES-GCM (RFC 5083/5084).

Encryption: one random content key, AES-CBC (or GCM), and a KeyTransRecipientInfo per recipient certificate with
RSA PKCS#1 v1.5 or RSA-OAEP, identified by issuer+serial or subject key identifier. Decryption parses the envelope
once (:class:`Envelope`), refuses forbidden ciphers by name before touching any key, and then tries a recipient's
private keys until one opens it, as the agent algorithm's Process Incoming asks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher as _Cipher
from cryptography.hazmat.primitives.ciphers import algorithms as ciphers
from cryptography.hazmat.primitives.ciphers import modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from directmilter.cms import algorithms
from directmilter.errors import CMSError, DecryptionFailed, NotEncrypted, NotEncryptedForRecipient
from directmilter.keys.identity import PrivateIdentity

_GCM_NONCE = 12
_GCM_TAG = 16


class GCMParameters(core.Sequence):  # type: ignore[misc]
    """RFC 5084 3.2: the parameters of id-aes*-GCM, which asn1crypto does not define."""

    _fields: ClassVar = [("aes_nonce", core.OctetString), ("aes_icvlen", core.Integer, {"default": 12})]


# --- encryption ------------------------------------------------------------------------------------------------


def encrypt(
    content: bytes,
    recipients: Sequence[x509.Certificate],
    *,
    cipher: str = "aes256-cbc",
    key_transport: str = "rsa-pkcs1v15",
    recipient_id: str = "issuer-serial",
) -> bytes:
    """A DER ContentInfo holding ``content`` encrypted for every certificate in ``recipients``."""
    if not recipients:
        raise CMSError("no recipient certificate to encrypt to")
    algorithm = algorithms.cipher(cipher)
    if key_transport not in algorithms.KEY_TRANSPORTS or recipient_id not in algorithms.RECIPIENT_IDS:
        raise CMSError(f"unknown key transport {key_transport!r} or recipient id {recipient_id!r}")
    key = os.urandom(algorithm.key_size)
    infos = [_recipient_info(cert, key, key_transport, recipient_id) for cert in recipients]
    version = "v0" if recipient_id == "issuer-serial" else "v2"
    if algorithm.aead:
        nonce = os.urandom(_GCM_NONCE)
        sealed = AESGCM(key).encrypt(nonce, content, None)
        encrypted_info = _encrypted_content_info(
            algorithm.asn1, GCMParameters({"aes_nonce": nonce, "aes_icvlen": _GCM_TAG}), sealed[:-_GCM_TAG]
        )
        structure = cms.AuthEnvelopedData(
            {
                "version": "v0",
                "recipient_infos": infos,
                "auth_encrypted_content_info": encrypted_info,
                "mac": sealed[-_GCM_TAG:],
            }
        )
        kind = "authenticated_enveloped_data"
    else:
        iv = os.urandom(16)
        padder = sym_padding.PKCS7(128).padder()
        encryptor = _Cipher(ciphers.AES(key), modes.CBC(iv)).encryptor()
        body = encryptor.update(padder.update(content) + padder.finalize()) + encryptor.finalize()
        structure = cms.EnvelopedData(
            {
                "version": version,
                "recipient_infos": infos,
                "encrypted_content_info": _encrypted_content_info(algorithm.asn1, core.OctetString(iv), body),
            }
        )
        kind = "enveloped_data"
    return bytes(cms.ContentInfo({"content_type": kind, "content": structure}).dump())


def _encrypted_content_info(asn1_name: str, params: core.Asn1Value, body: bytes) -> cms.EncryptedContentInfo:
    return cms.EncryptedContentInfo(
        {
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": asn1_name, "parameters": core.Any.load(params.dump())},
            "encrypted_content": body,
        }
    )


def _recipient_info(cert: x509.Certificate, key: bytes, key_transport: str, recipient_id: str) -> cms.RecipientInfo:
    public_key = cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise CMSError(f"recipient certificate {cert.subject.rfc4514_string()} has no RSA key for key transport")
    if key_transport == "rsa-oaep":
        # Default RSAES-OAEP parameters (SHA-1, MGF1-SHA-1): what OpenSSL, BouncyCastle and .NET peers all read.
        encrypted = public_key.encrypt(key, _oaep(algorithms.hash_for("sha1"), algorithms.hash_for("sha1")))
        transport = {"algorithm": "rsaes_oaep", "parameters": algos.RSAESOAEPParams.load(b"\x30\x00")}
    else:
        encrypted = public_key.encrypt(key, padding.PKCS1v15())
        transport = {"algorithm": "rsaes_pkcs1v15"}
    asn1_cert = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    if recipient_id == "subject-key-identifier":
        rid = cms.RecipientIdentifier({"subject_key_identifier": _key_identifier(cert)})
        version = "v2"
    else:
        rid = cms.RecipientIdentifier(
            {"issuer_and_serial_number": {"issuer": asn1_cert.issuer, "serial_number": asn1_cert.serial_number}}
        )
        version = "v0"
    return cms.RecipientInfo(
        {
            "ktri": {
                "version": version,
                "rid": rid,
                "key_encryption_algorithm": transport,
                "encrypted_key": encrypted,
            }
        }
    )


def _key_identifier(cert: x509.Certificate) -> bytes:
    try:
        return bytes(cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest)
    except x509.ExtensionNotFound:
        return bytes(x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest)


def _oaep(
    hash_algorithm: hashes.HashAlgorithm, mgf_hash: hashes.HashAlgorithm, label: bytes | None = None
) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(mgf_hash), algorithm=hash_algorithm, label=label or None)


# --- decryption ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """A parsed EnvelopedData / AuthEnvelopedData whose content cipher has been checked against policy."""

    cipher: algorithms.Cipher
    recipient_infos: tuple[cms.KeyTransRecipientInfo, ...]
    _content_info: cms.EncryptedContentInfo
    _mac: bytes | None
    _auth_attrs: bytes | None

    @classmethod
    def parse(
        cls, der: bytes, accepted_ciphers: frozenset[str] | tuple[str, ...] = algorithms.CIPHERS_ACCEPT
    ) -> Envelope:
        try:
            info = cms.ContentInfo.load(der, strict=False)
            kind = info["content_type"].native
            if kind not in ("enveloped_data", "authenticated_enveloped_data"):
                raise NotEncrypted(f"S/MIME body holds {kind}, not EnvelopedData (AS 2.4)")
            data = info["content"]
            data.native  # noqa: B018 -- force a full parse so truncated input fails here
            content_info = (
                data["encrypted_content_info"] if kind == "enveloped_data" else data["auth_encrypted_content_info"]
            )
            algorithm = content_info["content_encryption_algorithm"]["algorithm"]
            ktris = tuple(ri.chosen for ri in data["recipient_infos"] if ri.name == "ktri")
            mac = data["mac"].native if kind == "authenticated_enveloped_data" else None
            auth = data["auth_attrs"] if kind == "authenticated_enveloped_data" else None
        except CMSError:
            raise
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise CMSError(f"encrypted body is not a valid CMS EnvelopedData ({exc})") from exc
        found = algorithms.cipher_for(algorithm.native, algorithm.dotted, accepted_ciphers)
        if found.aead != (kind == "authenticated_enveloped_data"):
            raise CMSError(f"cipher {found.name} does not belong in {kind}")
        if not ktris:
            raise CMSError("envelope has no RSA key-transport recipient (only ktri is supported)")
        auth_bytes = bytes(core.SetOf(contents=auth.contents).dump()) if auth else None
        return cls(found, ktris, content_info, mac, auth_bytes)

    def decrypt(self, identities: Sequence[PrivateIdentity]) -> bytes:
        """The content, opened with the first of ``identities`` the envelope was made for."""
        matched = [(ri, ident) for ri in self.recipient_infos for ident in identities if _matches(ri, ident)]
        if not matched:
            raise NotEncryptedForRecipient("message is not encrypted to any of the recipient's certificates")
        failures: list[str] = []
        for ri, identity in matched:
            try:
                return self._open(_unwrap_key(ri, identity, self.cipher.key_size))
            except DecryptionFailed as exc:
                failures.append(f"{identity.certificate.subject.rfc4514_string()}: {exc.reason}")
        raise DecryptionFailed("message cannot be decrypted: " + "; ".join(failures))

    def _open(self, key: bytes) -> bytes:
        body = self._content_info["encrypted_content"].native
        if body is None:
            raise CMSError("envelope has no encrypted content")
        params = self._content_info["content_encryption_algorithm"]["parameters"]
        try:
            if self.cipher.aead:
                gcm = GCMParameters.load(params.dump())
                tag_length = gcm["aes_icvlen"].native
                if self._mac is None or len(self._mac) != tag_length or tag_length not in (12, 13, 14, 15, 16):
                    raise DecryptionFailed("AES-GCM authentication tag is missing or has a wrong length")
                return AESGCM(key).decrypt(gcm["aes_nonce"].native, body + self._mac, self._auth_attrs)
            iv = params.native if isinstance(params.native, bytes) else core.OctetString.load(params.dump()).native
            decryptor = _Cipher(ciphers.AES(key), modes.CBC(iv)).decryptor()
            padded = decryptor.update(body) + decryptor.finalize()
            unpadder = sym_padding.PKCS7(128).unpadder()
            return unpadder.update(padded) + unpadder.finalize()
        except DecryptionFailed:
            raise
        except Exception as exc:  # InvalidTag, bad padding, wrong IV length: all mean the same to the operator
            raise DecryptionFailed("content does not decrypt (wrong key, or the ciphertext was changed)") from exc


def _matches(ri: cms.KeyTransRecipientInfo, identity: PrivateIdentity) -> bool:
    rid = ri["rid"]
    cert = identity.certificate
    if rid.name == "issuer_and_serial_number":
        asn1_cert = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
        return bool(
            rid.chosen["serial_number"].native == asn1_cert.serial_number
            and rid.chosen["issuer"] == asn1_cert.issuer
        )
    return bool(rid.chosen.native == _key_identifier(cert))


def _unwrap_key(ri: cms.KeyTransRecipientInfo, identity: PrivateIdentity, key_size: int) -> bytes:
    key = identity.private_key
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DecryptionFailed("key transport needs an RSA private key")
    algorithm = ri["key_encryption_algorithm"]
    name = algorithm["algorithm"].native
    try:
        if name == "rsaes_oaep":
            params = algorithm["parameters"]
            label = params["p_source_algorithm"]["parameters"].native
            scheme = _oaep(
                algorithms.hash_for(algorithms.digest_name(params["hash_algorithm"]["algorithm"].native)),
                algorithms.hash_for(
                    algorithms.digest_name(params["mask_gen_algorithm"]["parameters"]["algorithm"].native)
                ),
                label,
            )
            content_key = key.decrypt(ri["encrypted_key"].native, scheme)
        elif name == "rsaes_pkcs1v15":
            content_key = key.decrypt(ri["encrypted_key"].native, padding.PKCS1v15())
        else:
            raise DecryptionFailed(f"key transport algorithm {name} is not supported")
    except ValueError as exc:
        raise DecryptionFailed("the content key does not decrypt with this private key") from exc
    if len(content_key) != key_size:
        # Also what RSA v1.5 implicit rejection looks like when the key is wrong.
        raise DecryptionFailed("the content key does not decrypt with this private key")
    return content_key
