"""Third-party Direct Project vectors (shared/vectors, see its INDEX.md): the reference implementations' own messages.

The vectors never enter this repository: tests read them where they are, and copy private keys (which the
configuration loader wants at mode 0600) into pytest's tmp_path at run time. Without the shared folder every test
here skips, saying why.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import OFFLINE, World, keypair, vectors_or_skip
from cryptography import x509

from directmilter import cms
from directmilter.agent import MessageEnvelope
from directmilter.config import Config, load_config
from directmilter.errors import (
    ForbiddenAlgorithm,
    NotEncryptedForRecipient,
    NoTrustedRecipients,
    TrustError,
)
from directmilter.trust.binding import Binding, bound_to

conformance = pytest.mark.conformance

JAVA_AGENT = "DirectProjectJavaRI-agent"
JAVA_CERTS = f"{JAVA_AGENT}/certs"
JAVA_MESSAGES = f"{JAVA_AGENT}/org/nhindirect/stagent"
DOTNET_AGENT = "nhin-d-dotnet/unittests/agent"

GM2552 = "gm2552@securehealthemail.com"
RYAN = "ryan@securehealthemail.com"
JOHN = "john@securehealthemail.com"
TOBY = "toby@redmond.hsgincubator.com"
BIFF = "biff@nhind.hsgincubator.com"


def vector(relative: str) -> Path:
    path = vectors_or_skip() / relative
    if not path.is_file():
        pytest.skip(f"vector {relative} missing from {vectors_or_skip()} (see its INDEX.md)")
    return path


def private_copy(tmp_path: Path, relative: str) -> Path:
    """A copy of a vector's key file in tmp_path, mode 0600 as the configuration loader requires."""
    target = tmp_path / Path(relative).name
    shutil.copyfile(vector(relative), target)
    target.chmod(0o600)
    return target


def secret_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def load(world: World, tmp_path: Path, name: str, body: dict[str, Any]) -> Config:
    """Write (under a name unique to the test) and load a configuration; all its paths are absolute.

    Offline like the World's HISPs: the vectors' domains are real names, and no test here looks anything up.
    """
    return load_config(world.write_config(f"vectors-{tmp_path.name}-{name}", {"discovery": OFFLINE, **body}))


# --- V1: AES-128 / RSA v1.5 / SHA-256, wrapped; valid today ----------------------------------------------------


def v1_domain(tmp_path: Path) -> dict[str, Any]:
    """securehealthemail.com hosted with ryan's key and the SimpleInterop anchor."""
    return {
        "keys": [{"cert": str(vector(f"{JAVA_CERTS}/ryan.der")),
                  "key": str(private_copy(tmp_path, f"{JAVA_CERTS}/ryanKey.der"))}],
        "anchors": [str(vector(f"{JAVA_CERTS}/secureHealthEmailCACert.der"))],
    }


def v1_message() -> bytes:
    return vector(f"{JAVA_MESSAGES}/EncryptedMessage2.txt").read_bytes()


@conformance("AS-2.4-1", "AS-2.4-7", "AS-4.2.2-8", "ALG-17")
def test_v1_is_delivered_as_the_inner_wrapped_message(world: World, tmp_path: Path, agent_for: Any) -> None:
    config = load(world, tmp_path, "v1", {"domains": {"securehealthemail.com": v1_domain(tmp_path)}})
    message = v1_message()
    outer = email.message_from_bytes(message, policy=email.policy.compat32)
    assert outer.get_content_type() == "application/pkcs7-mime" and outer["Subject"] is None

    result = agent_for(config).incoming(MessageEnvelope(GM2552, (RYAN,), message))

    assert result.recipients == (RYAN,) and result.rejected == {}
    delivered = email.message_from_bytes(result.message, policy=email.policy.compat32)
    # the inner message's own headers, which the outer (routing) header block does not carry
    assert delivered["Subject"] == "test pic"
    assert delivered["Message-ID"] == "<4C07A6B7.6020205@securehealthemail.com>"
    assert delivered["User-Agent"].startswith("Mozilla/5.0")
    assert "SMTP ID 337" in delivered["Received"]
    assert delivered.get_content_type() == "multipart/mixed"
    assert b"pkcs7" not in result.message.lower()
    # the signer is gm2552's address certificate; neither it nor its CA carries AIA, and that is accepted
    gm2552 = x509.load_der_x509_certificate(vector(f"{JAVA_CERTS}/gm2552.der").read_bytes())
    assert result.signers == (gm2552,)
    with pytest.raises(x509.ExtensionNotFound):
        gm2552.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    # the envelope really is AES-128 / RSA PKCS#1 v1.5, and the signature SHA-256
    secured = cms.parse_secured(cms.canonicalize(message), config.crypto.accept_ciphers)
    assert secured.envelope.cipher.name == "aes128-cbc"
    assert {ri.key_transport for ri in secured.envelope.recipient_infos} == {
        "rsaes_pkcs1v15"
    }
    plaintext = secured.envelope.decrypt(config.identities_for(RYAN))
    _, report = cms.read_signed(plaintext, config.crypto.accept_digests)
    assert [r.digest for r in report.valid] == ["sha256"]


def v1_with_john(world: World, tmp_path: Path) -> Config:
    """ryan under the domain's key, plus a hosted john with a key of his own that V1 was never encrypted to."""
    john = world.pki.leaf("john-securehealthemail", world.r1, email=JOHN)
    return load(world, tmp_path, "v1-john", {
        "domains": {"securehealthemail.com": v1_domain(tmp_path)},
        "addresses": {JOHN: {"keys": [keypair(john)]}},
    })


@conformance("ALG-12")
def test_v1_recipient_not_among_the_recipient_infos_is_refused(world: World, tmp_path: Path, agent_for: Any) -> None:
    agent = agent_for(v1_with_john(world, tmp_path))
    result = agent.incoming(MessageEnvelope(GM2552, (RYAN, JOHN), v1_message()))
    assert result.recipients == (RYAN,)
    assert set(result.rejected) == {JOHN}
    assert isinstance(result.rejected[JOHN], NotEncryptedForRecipient)
    assert JOHN in result.rejected[JOHN].reason
    assert b"Subject: test pic" in result.message


@conformance("ALG-12")
def test_v1_for_only_a_recipient_it_was_not_encrypted_to_is_refused(
    world: World, tmp_path: Path, agent_for: Any
) -> None:
    agent = agent_for(v1_with_john(world, tmp_path))
    with pytest.raises(NoTrustedRecipients) as caught:
        agent.incoming(MessageEnvelope(GM2552, (JOHN,), v1_message()))
    assert set(caught.value.rejected) == {JOHN}
    assert isinstance(caught.value.rejected[JOHN], NotEncryptedForRecipient)


# --- V2, V3, V4: 3DES, refused whatever keys we hold ------------------------------------------------------------


LEGACY_3DES = [
    pytest.param(f"{JAVA_MESSAGES}/EncryptedMessage3.txt", "biff@nhind.hsgincubator.com", GM2552,
                 marks=conformance("AS-2.7-3"), id="V2"),
    pytest.param(f"{JAVA_MESSAGES}/LargeEncAttachment.txt", "biff@nhind.hsgincubator.com", GM2552,
                 marks=conformance("AS-2.7-3"), id="V3"),
    pytest.param(f"{JAVA_MESSAGES}/EncryptedMessage.txt", "user1@cerner.com", "user1@cerner.com",
                 marks=conformance("AS-2.7-3", "AS-2.4-3"), id="V4"),
]


def legacy_config(world: World, tmp_path: Path, recipient: str, with_keys: bool) -> Config:
    """The recipient's domain hosted with the vector's anchor, and (with_keys) the very key the envelope opens with."""
    domain = recipient.rpartition("@")[2]
    if domain == "cerner.com":  # V4: only the 2010 nhin-d user1 key matches (INDEX.md)
        anchor = vector("nhin-d/java/gateway/src/test/resources/certs/cacert.der")
        keys = [{"cert": str(vector("nhin-d/java/config/config-store/src/test/resources/certs/user1.der")),
                 "key": str(private_copy(tmp_path, "nhin-d/java/config/config-store/src/test/resources/certs/"
                                                   "user1key.der"))}]
    else:  # V2, V3: gm2552's legacy PKCS#12 (RC2-40 PBE)
        anchor = vector(f"{JAVA_CERTS}/msanchor.der")
        keys = [{"pkcs12": str(private_copy(tmp_path, f"{JAVA_CERTS}/gm2552encrypted.p12")),
                 "password_file": str(secret_file(tmp_path, "gm2552.pw", "1kingpuff"))}]
    table: dict[str, Any] = {"anchors": [str(anchor)]}
    if with_keys:
        table["keys"] = keys
    return load(world, tmp_path, f"legacy-{with_keys}", {"domains": {domain: table}})


@pytest.mark.parametrize("with_keys", [False, True], ids=["no-keys", "recipient-key"])
@pytest.mark.parametrize(("relative", "sender", "recipient"), LEGACY_3DES)
def test_3des_vectors_are_refused_naming_3des(
    world: World, tmp_path: Path, agent_for: Any, relative: str, sender: str, recipient: str, with_keys: bool
) -> None:
    config = legacy_config(world, tmp_path, recipient, with_keys)
    if with_keys:
        assert config.identities_for(recipient), "the vector's own key must load, or 'regardless of keys' is moot"
    message = vector(relative).read_bytes()
    with pytest.raises(ForbiddenAlgorithm) as caught:
        agent_for(config).incoming(MessageEnvelope(sender, (recipient,), message))
    assert "3DES" in caught.value.reason


@conformance("AS-2.4-3")
def test_v4_is_refused_for_its_cipher_not_its_legacy_media_type() -> None:
    """V4 is labelled application/x-pkcs7-mime and begins with white space: both are read (AS 2.4), then 3DES is
    what refuses it."""
    message = vector(f"{JAVA_MESSAGES}/EncryptedMessage.txt").read_bytes()
    assert message[:1] in (b" ", b"\t")
    assert b"Content-Type: application/x-pkcs7-mime;" in message
    normalised = cms.canonicalize(message).lstrip(b" \t")
    with pytest.raises(ForbiddenAlgorithm, match="3DES"):
        cms.parse_secured(normalised, ("aes128-cbc", "aes256-cbc"))


# --- V6: RSA-OAEP, signature fine, signer not bound ---------------------------------------------------------------


V6_MESSAGES = ["envelopeSignature.eml", "envelopeSignatureContentType1.eml", "envelopeSignatureContentType2.eml"]
V6_DATE = dt.datetime(2015, 6, 13, 12, 0, tzinfo=dt.UTC)


def v6_config(world: World, tmp_path: Path) -> Config:
    pfx = private_copy(tmp_path, f"{DOTNET_AGENT}/Certificates/nhind/Private/nhind_umamalga1_vm1.pfx")
    return load(world, tmp_path, "v6", {"domains": {"nhind.hsgincubator.com": {
        "keys": [{"pkcs12": str(pfx), "password_file": str(secret_file(tmp_path, "pfx.pw", "passw0rd!"))}],
        "anchors": [str(vector(f"{DOTNET_AGENT}/Certificates/nhind/IncomingAnchors/umamalga1.cer"))],
    }}})


@conformance("AS-4.1.2-1")
@pytest.mark.parametrize("name", V6_MESSAGES)
def test_v6_decrypts_and_verifies_but_its_unbound_signer_is_refused(
    world: World, tmp_path: Path, agent_for: Any, name: str
) -> None:
    config = v6_config(world, tmp_path)
    identities = config.identities_for(BIFF)
    # the PFX holds biff and nancy; the loader must return both (the envelope is for biff, UM-AMALGA1-VM1 #2)
    assert sorted(i.certificate.serial_number for i in identities) == [1, 2]
    message = vector(f"{DOTNET_AGENT}/TestMessages/{name}").read_bytes()

    secured = cms.parse_secured(cms.canonicalize(message), config.crypto.accept_ciphers)
    assert [ri.key_transport for ri in secured.envelope.recipient_infos] == [
        "rsaes_oaep"
    ]
    assert secured.envelope.cipher.name == "aes128-cbc"
    _, report = cms.read_signed(secured.envelope.decrypt(identities), config.crypto.accept_digests)
    assert report.valid, [r.error for r in report.results]
    signer = report.valid[0].certificate
    assert signer is not None
    with pytest.raises(x509.ExtensionNotFound):
        signer.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert bound_to(signer, TOBY) is None
    agent = agent_for(config)
    # its path to the anchor is fine at the vector's date: binding is the only thing wrong with it
    agent.context.validator.validate(signer, config.anchors_for(BIFF, "incoming"), report.certificates,
                                     moment=V6_DATE)

    with pytest.raises(NoTrustedRecipients) as caught:
        agent.incoming(MessageEnvelope(TOBY, (BIFF,), message), moment=V6_DATE)
    refusal = caught.value.rejected[BIFF]
    assert isinstance(refusal, TrustError)
    assert f"is not bound to {TOBY}" in refusal.reason
    assert "no subjectAltName" in refusal.reason


# --- C1, C2: binding of the RI's own certificates --------------------------------------------------------------


def java_cert(name: str) -> x509.Certificate:
    return x509.load_der_x509_certificate(vector(f"{JAVA_CERTS}/{name}").read_bytes())


@conformance("AS-4.1.1-1")
def test_c2_alt_name_only_certificate_is_address_bound() -> None:
    cert = java_cert("altNameOnly.der")
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.RFC822Name) == ["altNameOnly@test.email.com"]
    assert names.get_values_for_type(x509.DNSName) == []
    assert bound_to(cert, "altNameOnly@test.email.com") is Binding.ADDRESS
    assert bound_to(cert, "ALTNAMEONLY@Test.Email.COM") is Binding.ADDRESS
    assert bound_to(cert, "other@test.email.com") is None
    assert bound_to(cert, "altNameOnly@email.com") is None


@conformance("AS-4.1.2-1")
def test_c1_cernerdemos_org_certificate_is_bound_to_its_whole_domain() -> None:
    cert = java_cert("cernerdemos.der")
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["messaging.cernerdemos.com"]
    for address in ("anyone@messaging.cernerdemos.com", "Dr.Who@MESSAGING.cernerdemos.com"):
        assert bound_to(cert, address) is Binding.ORGANIZATION
    for address in ("x@cernerdemos.com", "x@sub.messaging.cernerdemos.com", "messaging.cernerdemos.com"):
        assert bound_to(cert, address) is None
