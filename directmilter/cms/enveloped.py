"""CMS EnvelopedData (RFC 5652 section 6) and AuthEnvelopedData with AES-GCM (RFC 5083/5084).

Encryption: one random content key, AES-CBC (or GCM), and a KeyTransRecipientInfo per recipient certificate with
RSA PKCS#1 v1.5 or RSA-OAEP, identified by issuer+serial or subject key identifier. Decryption parses the envelope
once (:class:`Envelope`), refuses forbidden ciphers by name before touching any key, and then tries a recipient's
private keys until one opens it, as the agent algorithm's Process Incoming asks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher as _Cipher
from cryptography.hazmat.primitives.ciphers import algorithms as ciphers
from cryptography.hazmat.primitives.ciphers import modes

from directmilter.cms import algorithms, ber
from directmilter.cms.der import MALFORMED_INPUT, header, issued_as
from directmilter.cms.mime import Chunk
from directmilter.errors import CMSError, DecryptionFailed, NotEncrypted, NotEncryptedForRecipient
from directmilter.keys.identity import PrivateIdentity
from directmilter.memo import kept

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
    return b"".join(encrypt_stream((content,), len(content), recipients, cipher=cipher, key_transport=key_transport,
                                   recipient_id=recipient_id))


def encrypt_stream(
    content: Iterable[Chunk],
    length: int,
    recipients: Sequence[x509.Certificate],
    *,
    cipher: str = "aes256-cbc",
    key_transport: str = "rsa-pkcs1v15",
    recipient_id: str = "issuer-serial",
) -> Iterator[bytes]:
    """The DER ContentInfo of :func:`encrypt`, in pieces, from ``content`` in pieces of ``length`` bytes in all.

    The ciphertext's length follows from ``length`` (CBC pads to the next block; GCM adds nothing, its tag is a
    field of its own), so every DER length is known up front and no part of the message is ever held whole.
    """
    if not recipients:
        raise CMSError("no recipient certificate to encrypt to")
    algorithm = algorithms.cipher(cipher)
    if key_transport not in algorithms.KEY_TRANSPORTS or recipient_id not in algorithms.RECIPIENT_IDS:
        raise CMSError(f"unknown key transport {key_transport!r} or recipient id {recipient_id!r}")
    key = os.urandom(algorithm.key_size)
    # DER: a SET OF in the order of its elements' encodings (X.690 11.6), as asn1crypto wrote it before.
    infos = b"".join(sorted(_recipient_info(cert, key, key_transport, recipient_id) for cert in recipients))
    params: core.Asn1Value
    encryptor: Any
    if algorithm.aead:
        nonce = os.urandom(_GCM_NONCE)
        params = GCMParameters({"aes_nonce": nonce, "aes_icvlen": _GCM_TAG})
        encryptor = _Cipher(ciphers.AES(key), modes.GCM(nonce)).encryptor()
        kind, version, sealed_length, mac_length = "authenticated_enveloped_data", 0, length, 2 + _GCM_TAG
    else:
        iv = os.urandom(16)
        params = core.OctetString(iv)
        encryptor = _Cipher(ciphers.AES(key), modes.CBC(iv)).encryptor()
        version = 0 if recipient_id == "issuer-serial" else 2
        kind, sealed_length, mac_length = "enveloped_data", (length // 16 + 1) * 16, 0
    content_algorithm = algos.EncryptionAlgorithm(
        {"algorithm": algorithm.asn1, "parameters": core.Any.load(params.dump())}).dump()
    info_head = cms.ContentType("data").dump() + content_algorithm + header(0x80, sealed_length)
    info_length = len(info_head) + sealed_length
    fields = core.Integer(version).dump() + header(0x31, len(infos)) + infos + header(0x30, info_length)
    data_length = len(fields) + info_length + mac_length
    explicit = header(0x30, data_length)
    outer = cms.ContentType(kind).dump() + header(0xA0, len(explicit) + data_length)
    yield header(0x30, len(outer) + len(explicit) + data_length) + outer + explicit + fields + info_head
    padder = None if algorithm.aead else sym_padding.PKCS7(128).padder()
    written = 0
    for piece in blocks(content):
        written += len(piece)
        yield encryptor.update(padder.update(piece) if padder else piece)
    if written != length:
        raise CMSError(f"internal: {written} bytes to encrypt, {length} announced")
    yield (encryptor.update(padder.finalize()) if padder else b"") + encryptor.finalize()
    if algorithm.aead:
        yield header(0x04, _GCM_TAG) + encryptor.tag


def blocks(pieces: Iterable[Chunk], size: int = 1 << 20) -> Iterator[Chunk]:
    """``pieces`` cut into at most ``size`` bytes each, without copying (memoryview slices)."""
    for piece in pieces:
        if len(piece) <= size:
            yield piece
            continue
        with memoryview(piece) as view:
            for start in range(0, len(view), size):
                yield view[start : start + size]


def _recipient_info(cert: x509.Certificate, key: bytes, key_transport: str, recipient_id: str) -> bytes:
    """The DER of a KeyTransRecipientInfo (RFC 5652 6.2.1) carrying ``key`` for ``cert``'s RSA key."""
    public_key = cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise CMSError(f"recipient certificate {cert.subject.rfc4514_string()} has no RSA key for key transport")
    if key_transport == "rsa-oaep":
        # Default RSAES-OAEP parameters (SHA-1, MGF1-SHA-1): what OpenSSL, BouncyCastle and .NET peers all read.
        encrypted = public_key.encrypt(key, _oaep(algorithms.hash_for("sha1"), algorithms.hash_for("sha1")))
    else:
        encrypted = public_key.encrypt(key, padding.PKCS1v15())
    head = _recipient_head(cert.public_bytes(serialization.Encoding.DER), key_transport, recipient_id)
    body = head + header(0x04, len(encrypted)) + encrypted
    return header(0x30, len(body)) + body


@kept(1024)
def _recipient_head(certificate_der: bytes, key_transport: str, recipient_id: str) -> bytes:
    """What a certificate's KeyTransRecipientInfo holds before the encrypted key (the same for every message):
    version, recipient identifier and key transport algorithm, encoded once."""
    if key_transport == "rsa-oaep":
        transport = {"algorithm": "rsaes_oaep", "parameters": algos.RSAESOAEPParams.load(b"\x30\x00")}
    else:
        transport = {"algorithm": "rsaes_pkcs1v15"}
    if recipient_id == "subject-key-identifier":
        rid = cms.RecipientIdentifier(
            {"subject_key_identifier": _key_identifier(x509.load_der_x509_certificate(certificate_der))})
        version = 2
    else:
        asn1_cert = asn1_x509.Certificate.load(certificate_der)
        rid = cms.RecipientIdentifier(
            {"issuer_and_serial_number": {"issuer": asn1_cert.issuer, "serial_number": asn1_cert.serial_number}}
        )
        version = 0
    return bytes(core.Integer(version).dump() + rid.dump() + cms.KeyEncryptionAlgorithm(transport).dump())


@kept(1024)
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


class Recipient(NamedTuple):
    """A KeyTransRecipientInfo (RFC 5652 6.2.1): whom it names (issuer and serial, or key identifier), and the
    content key encrypted for them."""

    who: ber.Identifier
    key_transport: str  # asn1crypto's name of the key encryption algorithm (or its dotted OID)
    algorithm: bytes  # the DER of the KeyEncryptionAlgorithmIdentifier, for its parameters
    encrypted_key: bytes


@dataclass(frozen=True)
class Envelope:
    """A parsed EnvelopedData / AuthEnvelopedData whose content cipher has been checked against policy.

    The DER is walked by hand (:mod:`directmilter.cms.ber`) down to the encrypted content, which stays where it
    lies in the buffer (as spans: BER may cut it into many OCTET STRINGs); only the small fields are read out.
    """

    cipher: algorithms.Cipher
    recipient_infos: tuple[Recipient, ...]
    _der: bytes | bytearray = field(repr=False)
    _spans: tuple[tuple[int, int], ...]
    _params: tuple[bytes, int]  # the IV (CBC), or the nonce and the tag length (GCM)
    _mac: bytes | None
    _auth_attrs: bytes | None

    @classmethod
    def parse(
        cls, der: bytes | bytearray, accepted_ciphers: frozenset[str] | tuple[str, ...] = algorithms.CIPHERS_ACCEPT
    ) -> Envelope:
        try:
            content_info = ber.children(der, ber.element(der, 0, len(der)), ber.SEQUENCE, "ContentInfo")
            if len(content_info) < 2:
                raise ber.BERError("ContentInfo has no content")
            content_type = ber.oid(der, content_info[0], "ContentInfo contentType")
            if content_type not in (_ENVELOPED_DATA, _AUTH_ENVELOPED_DATA):
                raise NotEncrypted(f"S/MIME body holds {_name(cms.ContentType, content_type)}, not EnvelopedData "
                                   "(AS 2.4)")
            aead = content_type == _AUTH_ENVELOPED_DATA
            kind = "authenticated_enveloped_data" if aead else "enveloped_data"
            explicit = ber.children(der, content_info[1], 0xA0, "ContentInfo content")
            if not explicit:
                raise ber.BERError("ContentInfo content is empty")
            fields = [f for f in ber.children(der, explicit[0], ber.SEQUENCE, kind) if f.tag != 0xA0]  # no originator
            if len(fields) < (4 if aead else 3) or fields[1].tag != ber.SET:
                raise ber.BERError(f"{kind} lacks its recipient infos or encrypted content info")
            recipients = tuple(_recipient(der, info) for info in ber.children(der, fields[1], ber.SET, "RecipientInfos")
                               if _key_transport(info))
            encrypted = ber.children(der, fields[2], ber.SEQUENCE, "EncryptedContentInfo")
            if len(encrypted) < 2:
                raise ber.BERError("EncryptedContentInfo lacks its content encryption algorithm")
            oid, given = ber.algorithm(der, encrypted[1], "ContentEncryptionAlgorithmIdentifier")
            name, dotted = _cipher_name(oid)
            params = ber.encoding(der, given) if given is not None else None
            if len(encrypted) > 2 and encrypted[2].tag not in (0x80, 0xA0):
                raise ber.BERError(f"encryptedContent has identifier {encrypted[2].tag:#04x}, not [0]")
            spans = _segments(der, encrypted[2]) if len(encrypted) > 2 else ()
            mac = auth = None
            if aead:
                rest = fields[3:]
                auth_field = rest.pop(0) if rest and rest[0].tag in (0xA1, 0x81) else None
                if not rest:
                    raise ber.BERError("AuthEnvelopedData has no mac")
                mac = ber.octet_string(der, rest[0], "AuthEnvelopedData mac")
                if auth_field is not None:
                    # The AAD is the DER of the attributes tagged as a SET (RFC 5083 2.2), as the sender encoded them.
                    values = bytes(der[auth_field.start : auth_field.end])
                    auth = header(0x31, len(values)) + values
        except CMSError:
            raise
        except MALFORMED_INPUT as exc:
            raise CMSError(f"encrypted body is not a valid CMS EnvelopedData ({exc})") from exc
        found = algorithms.cipher_for(name, dotted, accepted_ciphers)
        if found.aead != aead:
            raise CMSError(f"cipher {found.name} does not belong in {kind}")
        if not recipients:
            raise CMSError("envelope has no RSA key-transport recipient (only ktri is supported)")
        try:
            parameters = _parameters(found, params)
        except MALFORMED_INPUT as exc:
            raise CMSError(f"encrypted body is not a valid CMS EnvelopedData (parameters of {found.name}: {exc})") \
                from exc
        return cls(found, recipients, der, spans, parameters, mac, auth)

    def decrypt(self, identities: Sequence[PrivateIdentity]) -> bytearray:
        """The content, opened with the first of ``identities`` the envelope was made for; at most
        :data:`MAX_KEY_ATTEMPTS` recipient infos that name them are tried."""
        try:
            matched = [(ri, ident) for ri in self.recipient_infos for ident in identities if _matches(ri, ident)]
        except MALFORMED_INPUT as exc:
            raise CMSError(f"encrypted body has a malformed recipient info ({exc})") from exc
        if not matched:
            raise NotEncryptedForRecipient("message is not encrypted to any of the recipient's certificates")
        failures: list[str] = []
        if len(matched) > MAX_KEY_ATTEMPTS:  # each attempt is a private-key operation: a stranger's to multiply
            failures.append(f"{len(matched) - MAX_KEY_ATTEMPTS} more recipient infos naming the same keys not tried")
        for ri, identity in matched[:MAX_KEY_ATTEMPTS]:
            try:
                return self._open(_unwrap_key(ri, identity, self.cipher.key_size))
            except DecryptionFailed as exc:
                failures.append(f"{identity.certificate.subject.rfc4514_string()}: {exc.reason}")
        raise DecryptionFailed("message cannot be decrypted: " + "; ".join(failures))

    def _open(self, key: bytes) -> bytearray:
        if not self._spans:
            raise CMSError("envelope has no encrypted content")
        try:
            decryptor = self._decryptor(key)
            total = sum(end - start for start, end in self._spans)
            plain = bytearray(total + 16)  # decrypted in place: the one copy of the content this costs
            length = 0
            with memoryview(self._der) as source, memoryview(plain) as target:
                for start, end in self._spans:
                    for piece in blocks((source[start:end],)):
                        length += decryptor.update_into(piece, target[length:])
                tail = decryptor.finalize()
                target[length : length + len(tail)] = tail
                length += len(tail)
            del plain[length:]
            if not self.cipher.aead:
                _unpad(plain)
            return plain
        except DecryptionFailed:
            raise
        except Exception as exc:  # InvalidTag, bad padding, wrong IV length: all mean the same to the operator
            raise DecryptionFailed("content does not decrypt (wrong key, or the ciphertext was changed)") from exc

    def _decryptor(self, key: bytes) -> Any:
        iv, tag_length = self._params
        if self.cipher.aead:
            if self._mac is None or len(self._mac) != tag_length or tag_length not in (12, 13, 14, 15, 16):
                raise DecryptionFailed("AES-GCM authentication tag is missing or has a wrong length")
            decryptor = _Cipher(ciphers.AES(key), modes.GCM(iv, self._mac, min_tag_length=tag_length)).decryptor()
            if self._auth_attrs is not None:
                decryptor.authenticate_additional_data(self._auth_attrs)
            return decryptor
        if sum(end - start for start, end in self._spans) % 16:
            raise DecryptionFailed("CBC ciphertext is not a whole number of blocks")
        return _Cipher(ciphers.AES(key), modes.CBC(iv)).decryptor()


def _unpad(plain: bytearray) -> None:
    """Remove PKCS#7 padding (RFC 5652 6.3) in place."""
    count = plain[-1] if plain else 0
    if not 1 <= count <= 16 or plain[-count:] != bytes((count,)) * count:
        raise DecryptionFailed("content does not decrypt (wrong key, or the ciphertext was changed)")
    del plain[-count:]


# --- reading the envelope's parts ----------------------------------------------------------------------------

#: A message is encrypted once to each of a recipient's certificates; more recipient infos than this that name
#: our keys are a stranger making us spend private-key operations (RSA decryptions) on one message.
MAX_KEY_ATTEMPTS = 4
_ENVELOPED_DATA = cms.ContentType("enveloped_data").dump()
_AUTH_ENVELOPED_DATA = cms.ContentType("authenticated_enveloped_data").dump()


def _segments(der: bytes | bytearray, element: ber.Element) -> tuple[tuple[int, int], ...]:
    return tuple(ber.octets(der, element))  # at most ber.MAX_PIECES of them


@kept(64)
def _name(kind: type[core.ObjectIdentifier], encoded: bytes) -> str:
    """asn1crypto's name for an encoded OID of ``kind`` (its dotted form when it has none)."""
    return str(kind.load(encoded).native)


@kept(64)
def _cipher_name(encoded: bytes) -> tuple[str, str]:
    oid = algos.EncryptionAlgorithmId.load(encoded)
    return str(oid.native), str(oid.dotted)


def _parameters(cipher: algorithms.Cipher, params: bytes | None) -> tuple[bytes, int]:
    """The IV of a CBC cipher, or the nonce and tag length of GCM (RFC 5084 3.2)."""
    if params is None:
        raise ber.BERError("they are missing")
    if cipher.aead:
        gcm = GCMParameters.load(params)
        return bytes(gcm["aes_nonce"].native), int(gcm["aes_icvlen"].native)
    return ber.octet_string(params, ber.top(params, ber.OCTET_STRING, "IV"), "IV"), 0


def _key_transport(info: ber.Element) -> bool:
    """Whether a RecipientInfo is a KeyTransRecipientInfo; the other kinds ([1] to [4]) are passed over."""
    if info.tag == ber.SEQUENCE:
        return True
    if 0xA1 <= info.tag <= 0xA4:
        return False
    raise ber.BERError(f"a RecipientInfo has identifier {info.tag:#04x}")


def _recipient(der: bytes | bytearray, info: ber.Element) -> Recipient:
    """Read what :func:`_matches` and :func:`_unwrap_key` need, so that malformed input fails while parsing."""
    parts = ber.children(der, info, ber.SEQUENCE, "KeyTransRecipientInfo")
    if len(parts) != 4:
        raise ber.BERError(f"a KeyTransRecipientInfo has {len(parts)} fields, not 4")
    ber.integer(der, parts[0], "KeyTransRecipientInfo version")
    who = ber.identifier(der, parts[1], "RecipientIdentifier")
    name = _name(cms.KeyEncryptionAlgorithmId, ber.algorithm(der, parts[2], "KeyEncryptionAlgorithmIdentifier")[0])
    encoded = ber.encoding(der, parts[2])
    if name == "rsaes_oaep":
        _oaep_scheme(encoded)
    return Recipient(who, name, encoded, ber.octet_string(der, parts[3], "encryptedKey"))


def _oaep_scheme(algorithm: bytes) -> padding.OAEP:
    params = cms.KeyEncryptionAlgorithm.load(algorithm)["parameters"]
    label = params["p_source_algorithm"]["parameters"].native
    return _oaep(
        algorithms.hash_for(algorithms.digest_name(params["hash_algorithm"]["algorithm"].native)),
        algorithms.hash_for(algorithms.digest_name(params["mask_gen_algorithm"]["parameters"]["algorithm"].native)),
        label,
    )


def _matches(ri: Recipient, identity: PrivateIdentity) -> bool:
    cert = identity.certificate
    issuer, serial, key_identifier = ri.who
    if issuer is not None and serial is not None:
        return issued_as(cert, issuer, serial)
    return key_identifier == _key_identifier(cert)


def _unwrap_key(ri: Recipient, identity: PrivateIdentity, key_size: int) -> bytes:
    key = identity.private_key
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DecryptionFailed("key transport needs an RSA private key")
    try:
        if ri.key_transport == "rsaes_oaep":
            content_key = key.decrypt(ri.encrypted_key, _oaep_scheme(ri.algorithm))
        elif ri.key_transport == "rsaes_pkcs1v15":
            content_key = key.decrypt(ri.encrypted_key, padding.PKCS1v15())
        else:
            raise DecryptionFailed(f"key transport algorithm {ri.key_transport} is not supported")
    except ValueError as exc:
        raise DecryptionFailed("the content key does not decrypt with this private key") from exc
    if len(content_key) != key_size:
        # Also what RSA v1.5 implicit rejection looks like when the key is wrong.
        raise DecryptionFailed("the content key does not decrypt with this private key")
    return content_key
