"""The SignedData and EnvelopedData directmilter assembles by hand are DER: byte for byte what asn1crypto writes
when it re-encodes them canonically (sorted SETs, minimal lengths), for every option and recipient order."""

from __future__ import annotations

import pytest
from asn1crypto import cms
from conftest import World, keypair
from cryptography.hazmat.primitives.serialization import Encoding

from directmilter.cms.enveloped import encrypt
from directmilter.cms.signed import _identity_parts, sign_detached, verify_detached
from directmilter.config import load_config
from directmilter.errors import CMSError


@pytest.mark.parametrize("cipher", ["aes256-cbc", "aes128-gcm"])
@pytest.mark.parametrize("recipient_id", ["issuer-serial", "subject-key-identifier"])
@pytest.mark.parametrize("key_transport", ["rsa-pkcs1v15", "rsa-oaep"])
def test_envelopes_are_canonical_der(world: World, cipher: str, recipient_id: str, key_transport: str) -> None:
    for recipients in ([world.bob, world.bob2, world.carol], [world.carol, world.bob2, world.bob]) * 4:
        der = encrypt(b"x" * 1000, [r.cert for r in recipients], cipher=cipher, recipient_id=recipient_id,
                      key_transport=key_transport)  # random keys: the sorted order changes from run to run
        assert cms.ContentInfo.load(der).dump(force=True) == der


@pytest.mark.parametrize("digest", ["sha256", "sha384", "sha512"])
def test_signatures_are_canonical_der(world: World, digest: str) -> None:
    for address in ("alice@direct.a.test", "al2@direct.a.test"):
        der = sign_detached([b"hello ", memoryview(b"world")], world.hisp_a().identities_for(address), digest)
        info = cms.ContentInfo.load(der)
        assert info.dump(force=True) == der
        assert info["content"]["signer_infos"][0]["signed_attrs"].dump(force=True)[1:] == \
            info["content"]["signer_infos"][0]["signed_attrs"].dump()[1:]


def test_several_signers_give_sorted_sets(world: World) -> None:
    """An address with three keys signs three times: the signerInfos and certificates SETs are in DER order."""
    leaves = [world.pki.leaf(f"der-multi-{i}", world.r1, email="multi@direct.a.test") for i in range(3)]
    body = world.hisp_a_body()
    body["addresses"]["multi@direct.a.test"] = {"keys": [keypair(leaf) for leaf in leaves]}
    identities = load_config(world.write_config("der-multi", body)).identities_for("multi@direct.a.test")
    for _ in range(4):  # random signature values: the order of the SignerInfos changes from run to run
        der = sign_detached(b"hello", identities, "sha256")
        info = cms.ContentInfo.load(der)
        assert len(info["content"]["signer_infos"]) == 3 and len(info["content"]["certificates"]) == 3
        assert info.dump(force=True) == der


def test_a_malformed_signer_identifier_is_a_clean_rejection(world: World) -> None:
    """A SignerInfo whose sid is not what it should be is that signer's error, not an exception (which would
    defer the message as an internal error instead of refusing it)."""
    identities = world.hisp_a().identities_for("alice@direct.a.test")
    der = sign_detached(b"hello", identities, "sha256")
    sid = _identity_parts(identities[0].certificate.public_bytes(Encoding.DER), "sha256")[0]
    bent = der.replace(sid, b"\xa5" + sid[1:], 1)
    assert bent != der
    report = verify_detached(b"hello", bent)
    assert [type(r.error) for r in report.results] == [CMSError]


def test_small_certificates_are_kept_by_encoding_and_large_ones_are_not() -> None:
    """The certificates of every message of a correspondent are loaded once; a crafted huge one cannot fill memory
    (every kept certificate is at most 16 KiB)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from directmilter.cms.der import load_certificate

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kept")])
    now = datetime.datetime.now(datetime.UTC)

    def certificate(padding: int) -> bytes:
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=1)))
        if padding:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\0" * padding), False)
        return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)

    small, large = certificate(0), certificate(20_000)
    assert load_certificate(small) is load_certificate(bytes(small))
    assert load_certificate(large) == load_certificate(large)
    assert load_certificate(large) is not load_certificate(large)
    with pytest.raises(ValueError):
        load_certificate(b"\x30\x03\x02\x01\x00")
