"""Self-tests for the test-support helpers: tests/pki.py + tests/opensslpeer.py, openssl only."""

from __future__ import annotations

import datetime
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import opensslpeer as peer
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID
from pki import PKI, HashName, Issued

E = TypeVar("E", bound=x509.ExtensionType)

# lone LF, stray CR, trailing blanks: only byte-exact (-binary) handling survives these
CONTENT = b"Content-Type: text/plain\r\n\r\nhello  \r\nlone\nlf\r\nstray\r\r\nend\t\r\n"
ALICE, BOB = "alice@a.example", "bob@b.example"


@dataclass
class World:
    pki: PKI
    root: Issued
    inter: Issued
    alice: Issued
    bob: Issued
    ec: Issued
    ca_file: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    pki = PKI(tmp_path_factory.mktemp("pki"))
    root = pki.root("root")
    inter = pki.intermediate(
        "inter", root, aia_ca_issuers="http://ca.example/root.cer", crl_url="http://ca.example/c.crl"
    )
    alice = pki.leaf("alice", inter, email=ALICE, subject_email=ALICE, ocsp_url="http://ocsp.example/")
    bob = pki.leaf("bob", root, email=BOB, dns="b.example", key="rsa3072")
    ec = pki.leaf(
        "ec", root, email="ec@b.example", key="ec256", key_usage={"digitalSignature", "keyAgreement"}
    )
    return World(pki, root, inter, alice, bob, ec, pki.bundle("anchors.pem", root))


def _bare_lf(data: bytes) -> int:
    return len(re.findall(rb"(?<!\r)\n", data))


def _ext(issued: Issued, ext_type: type[E]) -> x509.Extension[E]:
    return issued.cert.extensions.get_extension_for_class(ext_type)


def test_sign_encrypt_decrypt_verify_roundtrip(world: World) -> None:
    signed = peer.sign(CONTENT, world.alice, extra_certs=[world.inter])
    assert _bare_lf(signed.replace(CONTENT, b"")) == 0  # framing + base64 are pure CRLF
    assert b'protocol="application/pkcs7-signature"; micalg="sha-256"' in signed
    wire = peer.encrypt(signed, [world.bob.cert_path], headers={"From": ALICE, "To": BOB, "Subject": "hi"})
    # openssl writes To, From, Subject in that fixed order, whatever order the options had
    assert wire.startswith(f"To: {BOB}\r\nFrom: {ALICE}\r\nSubject: hi\r\nMIME-Version: 1.0\r\n".encode())
    assert b"application/pkcs7-mime; smime-type=enveloped-data" in wire and _bare_lf(wire) == 0
    assert peer.decrypt(wire, world.bob) == signed
    assert peer.verify(signed, world.ca_file) == CONTENT
    with pytest.raises(AssertionError, match="Verify error"):  # intermediate missing, root only anchor
        peer.verify(peer.sign(CONTENT, world.alice), world.ca_file)


def test_certificate_fields(world: World) -> None:
    alice, bob, root = world.alice.cert, world.bob.cert, world.root.cert
    assert _ext(world.alice, x509.SubjectAlternativeName).value.get_values_for_type(x509.RFC822Name) == [
        ALICE
    ]
    assert alice.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)[0].value == ALICE
    assert bob.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS) == []
    assert _ext(world.bob, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [
        "b.example"
    ]
    assert root.issuer == root.subject and _ext(world.root, x509.BasicConstraints).value.ca
    assert _ext(world.root, x509.KeyUsage).critical and _ext(world.root, x509.KeyUsage).value.key_cert_sign
    assert _ext(world.alice, x509.AuthorityKeyIdentifier).value.key_identifier == (
        _ext(world.inter, x509.SubjectKeyIdentifier).value.digest
    )
    assert _ext(world.alice, x509.KeyUsage).value.key_encipherment
    assert not _ext(world.alice, x509.BasicConstraints).value.ca
    aia = {d.access_location.value for d in _ext(world.inter, x509.AuthorityInformationAccess).value}
    assert aia == {"http://ca.example/root.cer"}
    assert alice.serial_number > 0 and alice.serial_number != bob.serial_number
    assert world.alice.chain() == [world.alice, world.inter, world.root]
    bare = world.pki.leaf("bare", None, self_signed=True, key_usage=None, cn="Bare Leaf")
    assert bare.cert.issuer == bare.cert.subject
    assert x509.KeyUsage not in {type(e.value) for e in bare.cert.extensions}


def test_key_files_are_private(world: World) -> None:
    p12 = world.pki.pkcs12(world.alice, None, "alice.p12")
    for path in (world.alice.key_path, world.ec.key_path, p12):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert world.alice.key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize("password", [None, b"s3cret"])
def test_pkcs12_loads(world: World, password: bytes | None) -> None:
    path = world.pki.pkcs12(world.alice, password, f"alice-{bool(password)}.p12", chain=[world.inter])
    loaded = pkcs12.load_pkcs12(path.read_bytes(), password)
    assert loaded.cert is not None and loaded.cert.certificate == world.alice.cert
    assert [c.certificate for c in loaded.additional_certs] == [world.inter.cert]
    assert loaded.key is not None and loaded.key.public_key() == world.alice.key.public_key()


@pytest.mark.parametrize(
    ("signer", "kwargs", "marker"),
    [
        ("ec", {}, "ecdsa-with-SHA256"),
        ("bob", {"pss": True}, "rsassaPss"),
        ("bob", {"md": "sha512", "nodetach": True}, "sha512"),
        ("bob", {"legacy_smime": True}, "sha256WithRSAEncryption"),
    ],
)
def test_sign_variants(world: World, signer: str, kwargs: dict[str, object], marker: str) -> None:
    signed = peer.sign(CONTENT, getattr(world, signer), **kwargs)  # type: ignore[arg-type]
    assert marker in peer.cmsprint(signed)
    assert peer.verify(signed, world.ca_file) == CONTENT
    if kwargs.get("legacy_smime"):
        assert b'protocol="application/x-pkcs7-signature"' in signed


@pytest.mark.parametrize(
    ("kwargs", "marker"),
    [
        ({"oaep": True}, "rsaesOaep"),
        ({"oaep": "sha256"}, "OBJECT            :mgf1"),
        ({"keyid": True}, "subjectKeyIdentifier"),
        ({"cipher": "aes-256-gcm"}, "aes-256-gcm"),
        ({"cipher": "des3"}, "des-ede3-cbc"),
        ({"cipher": "des"}, "des-cbc"),
        ({"cipher": "rc2-40", "legacy_smime": True}, "rc2-cbc"),
    ],
)
def test_encrypt_variants(world: World, kwargs: dict[str, object], marker: str) -> None:
    wire = peer.encrypt(CONTENT, [world.alice.cert_path, world.bob.cert_path], **kwargs)  # type: ignore[arg-type]
    assert marker in peer.cmsprint(wire)
    assert peer.decrypt(wire, world.alice) == CONTENT and peer.decrypt(wire, world.bob) == CONTENT


def test_ec_recipient(world: World) -> None:
    wire = peer.encrypt(CONTENT, [world.ec.cert_path, world.bob.cert_path], oaep=True)
    assert "dhSinglePass-stdDH-sha1kdf-scheme" in peer.cmsprint(wire)
    assert peer.decrypt(wire, world.ec) == CONTENT


def test_openssl_line_ending_quirks(world: World) -> None:
    crlf_only = b"Content-Type: text/plain\r\n\r\nhello  \r\n"
    signed = peer.sign(crlf_only, world.bob)
    lf_wire = signed.replace(b"\r\n", b"\n")
    assert peer.verify(lf_wire, world.ca_file, binary=False) == crlf_only  # text mode re-canonicalises
    with pytest.raises(AssertionError, match="content verify error"):
        peer.verify(lf_wire, world.ca_file)
    with pytest.raises(AssertionError, match="content verify error"):  # -binary without -crlfeol
        peer.run(["cms", "-verify", "-binary", "-CAfile", world.ca_file, "-purpose", "any"], signed)
    with pytest.raises(AssertionError, match="content verify error"):  # lone LF is not canonical
        peer.verify(peer.sign(CONTENT, world.bob), world.ca_file, binary=False)


def test_validity_window_and_weak_hashes(world: World) -> None:
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    old_root = world.pki.root("old-root", not_before=past)
    old = world.pki.leaf("old", old_root, not_before=past, not_after=past + datetime.timedelta(days=30))
    anchors = world.pki.bundle("old-anchors.pem", old_root)
    signed = peer.sign(CONTENT, old)
    assert peer.verify(signed, anchors, attime=int(past.timestamp()) + 86400) == CONTENT
    with pytest.raises(AssertionError, match="certificate has expired"):
        peer.verify(signed, anchors)
    weak_hashes: list[tuple[HashName, x509.ObjectIdentifier]] = [
        ("sha1", SignatureAlgorithmOID.RSA_WITH_SHA1),
        ("md5", SignatureAlgorithmOID.RSA_WITH_MD5),
    ]
    for hash_name, oid in weak_hashes:
        weak = world.pki.leaf(f"weak-{hash_name}", world.root, email=BOB, hash=hash_name)
        assert weak.cert.signature_algorithm_oid == oid
        assert b": OK" in peer.run(["verify", "-CAfile", world.ca_file, weak.cert_path])
    ec_root = world.pki.root("ec-sha1", key="ec256", hash="sha1")
    assert ec_root.cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA1
    assert b": OK" in peer.run(["verify", "-CAfile", ec_root.cert_path, ec_root.cert_path])
