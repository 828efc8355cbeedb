"""Interop with the OpenSSL CLI (tests/opensslpeer.py) as an independent S/MIME peer.

Outgoing: what HISP A's agent writes for bob is decrypted, verified against R1 and unwrapped by openssl, and its
structure is read with the standard library and ``openssl cms -print``, never with our own parser. Incoming: what
openssl signs (as alice) and encrypts (to bob) is delivered by HISP B's agent exactly as signed, or refused with an
error of the right type whose reason names the cause.
"""

from __future__ import annotations

import email
import re
from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from typing import Any

import opensslpeer
import pytest
from conftest import CANARY, World, envelope, plain_message

from directmilter.agent import IncomingMessage, OutgoingMessage
from directmilter.errors import (
    DirectMilterError,
    ForbiddenAlgorithm,
    NoSignerCertificate,
    NotEncryptedForRecipient,
    NoTrustedRecipients,
    NoTrustPath,
    NotSigned,
    SignatureInvalid,
    TrustError,
)

ALICE, BOB, BOB2, CAROL = "alice@direct.a.test", "bob@direct.b.test", "bob2@direct.b.test", "carol@direct.b.test"
conformance = pytest.mark.conformance

# --- outgoing: openssl reads what we send ----------------------------------------------------------------------


def send(agent_for, world: World, message: bytes | None = None, **agent: Any) -> OutgoingMessage:
    """alice -> bob and carol (under the untrusted R2) through HISP A, with ``agent`` as the [agent] table."""
    config = world.hisp_a(agent=agent) if agent else world.hisp_a()
    result = agent_for(config).outgoing(envelope(message or plain_message(), ALICE, BOB, CAROL))
    assert result.recipients == (BOB,) and set(result.rejected) == {CAROL}
    return result


def printed_algorithms(printed: str, field: str) -> list[str]:
    """The ``algorithm:`` names under every ``field:`` of ``openssl cms -print`` output."""
    return re.findall(rf"\b{field}: *\n *algorithm: (\S+)", printed)


@dataclass(frozen=True)
class PeerView:
    """An outgoing message as openssl at bob's side sees it."""

    outer: EmailMessage  # the wire message's headers
    signed: EmailMessage  # the decrypted multipart/signed entity
    inner: bytes  # the original message, unwrapped from the message/rfc822 content openssl verified
    envelope: str  # cmsprint of the EnvelopedData
    signature: str  # cmsprint of the detached SignedData


def peer_reads(world: World, wire: bytes) -> PeerView:
    """Everything openssl must find in any outgoing message, whatever the configured algorithms."""
    assert wire.isascii(), "the wire message must be 7-bit"
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", wire) is None, "the wire message must have CRLF line ends only"
    assert CANARY.encode() not in wire
    outer = email.message_from_bytes(wire, policy=policy.default)
    assert outer.get_content_type() == "application/pkcs7-mime"
    decrypted = opensslpeer.decrypt(wire, world.bob)
    with pytest.raises(AssertionError, match="cms -decrypt"):  # carol was removed: no RecipientInfo for her
        opensslpeer.decrypt(wire, world.carol)
    content = opensslpeer.verify(decrypted, world.r1.cert_path)
    signed = email.message_from_bytes(decrypted, policy=policy.default)
    assert signed.get_content_type() == "multipart/signed"
    assert signed.get_param("protocol") == "application/pkcs7-signature"
    parts = signed.get_payload()
    assert [p.get_content_type() for p in parts] == ["message/rfc822", "application/pkcs7-signature"]
    header, _, inner = content.partition(b"\r\n\r\n")
    assert header.lower().startswith(b"content-type: message/rfc822")
    assert email.message_from_bytes(inner, policy=policy.default)["subject"] == CANARY
    envelope_print, signature_print = opensslpeer.cmsprint(wire), opensslpeer.cmsprint(decrypted)
    assert envelope_print.count("d.ktri:") == 1  # bob only
    assert "eContent: <ABSENT>" in signature_print  # detached
    # OpenSSL prints the serial in hex with a leading zero nibble when the value needs one: compare the numbers.
    serials = [int(v, 16) for v in re.findall(r"serialNumber: (?:0x)?([0-9A-Fa-f]+)\n", signature_print)]
    assert serials.count(world.alice.cert.serial_number) == 2, "alice's certificate and the SignerInfo naming it"
    assert "subject: O=directmilter test PKI, CN=alice@direct.a.test\n" in signature_print
    return PeerView(outer, signed, inner, envelope_print, signature_print)


CIPHERS = [
    pytest.param("aes128-cbc", "aes-128-cbc", "enveloped-data", marks=conformance("AS-2.7-1"), id="aes128-cbc"),
    pytest.param("aes256-cbc", "aes-256-cbc", "enveloped-data", marks=conformance("AS-2.7-2"), id="aes256-cbc"),
    pytest.param("aes256-gcm", "aes-256-gcm", "authEnveloped-data", id="aes256-gcm"),
]
KEY_TRANSPORTS = {"rsa-pkcs1v15": "rsaEncryption", "rsa-oaep": "rsaesOaep"}
RECIPIENT_IDS = {"issuer-serial": "d.issuerAndSerialNumber:", "subject-key-identifier": "d.subjectKeyIdentifier:"}


@conformance("AS-2.4-1", "AS-2.4-2", "AS-2.4-4", "AS-2.4-7", "AS-2.5.1-1", "AS-2.5.1-2", "AS-2.5.2-1", "AS-2.6-1",
             "AS-2.7-5", "ALG-4")
@pytest.mark.parametrize("recipient_id", RECIPIENT_IDS)
@pytest.mark.parametrize("key_transport", KEY_TRANSPORTS)
@pytest.mark.parametrize(("cipher", "openssl_cipher", "smime_type"), CIPHERS)
def test_openssl_opens_and_verifies_what_we_send(
    world: World, agent_for, cipher: str, openssl_cipher: str, smime_type: str, key_transport: str, recipient_id: str
) -> None:
    sent = send(agent_for, world, cipher=cipher, key_transport=key_transport, recipient_id=recipient_id)
    view = peer_reads(world, sent.message)
    assert view.outer.get_param("smime-type") == smime_type
    assert view.signed.get_param("micalg") == "sha-256"
    assert view.inner == plain_message()
    assert printed_algorithms(view.envelope, "contentEncryptionAlgorithm") == [openssl_cipher]
    assert printed_algorithms(view.envelope, "keyEncryptionAlgorithm") == [KEY_TRANSPORTS[key_transport]]
    assert RECIPIENT_IDS[recipient_id] in view.envelope
    assert printed_algorithms(view.signature, "digestAlgorithm") == ["sha256"]


@conformance("AS-2.6-5", "AS-2.6-6")
@pytest.mark.parametrize("digest", ["sha384", "sha512"])
def test_sending_digest_is_configurable(world: World, agent_for, digest: str) -> None:
    view = peer_reads(world, send(agent_for, world, digest=digest).message)
    assert view.signed.get_param("micalg") == f"sha-{digest[3:]}"
    assert printed_algorithms(view.signature, "digestAlgorithm") == [digest]


@conformance("AS-2.5.3-1")
def test_8bit_text_trailing_spaces_from_and_dot_lines_survive_at_openssl(world: World, agent_for) -> None:
    body = "Grüße aus der Klinik   \r\nFrom the ward: all well\r\n.\r\n..leading dots\r\n \t\r\nend  ".encode()
    message = plain_message(body=body, extra=b"Content-Transfer-Encoding: 8bit\r\n")
    assert peer_reads(world, send(agent_for, world, message).message).inner == message


# --- incoming: we read what openssl sends ----------------------------------------------------------------------

WRAPPED = b"Content-Type: message/rfc822\r\n\r\n" + plain_message()
UNWRAPPED = b"Content-Type: text/plain; charset=utf-8\r\n\r\nPatient summary attached.\r\n"
OUTER = {"to": BOB, "from": ALICE, "subject": "outer subject"}


def to_bob(world: World, entity: bytes, *, recipients: tuple[Any, ...] | None = None, **encrypt: Any) -> bytes:
    """``entity`` encrypted by openssl to bob (or ``recipients``), with AES-256-CBC unless told otherwise."""
    certs = recipients or (world.bob,)
    return opensslpeer.encrypt(entity, [c.cert_path for c in certs], headers=OUTER, **encrypt)


def signed(world: World, entity: bytes = WRAPPED, signer: str = "alice", **sign: Any) -> bytes:
    return opensslpeer.sign(entity, getattr(world, signer), **sign)


def receive(agent_for, world: World, wire: bytes, *rcpts: str, sender: str = ALICE, **agent: Any) -> IncomingMessage:
    config = world.hisp_b(agent=agent) if agent else world.hisp_b()
    return agent_for(config).incoming(envelope(wire, sender, *(rcpts or (BOB,))))


@conformance("AS-2.4-1", "AS-2.4-2", "AS-2.5.1-3", "ALG-17")
@pytest.mark.parametrize(("entity", "expected"), [
    pytest.param(WRAPPED, plain_message(), id="wrapped"),
    pytest.param(UNWRAPPED, b"To: bob@direct.b.test\r\nFrom: alice@direct.a.test\r\nSubject: outer subject\r\n"
                 b"MIME-Version: 1.0\r\n" + UNWRAPPED, id="unwrapped"),
])
@pytest.mark.parametrize(("sign", "encrypt"), [
    pytest.param({}, {}, marks=conformance("AS-2.6-1", "AS-2.7-2"), id="sha256-aes256"),
    pytest.param({}, {"cipher": "aes128"}, marks=conformance("AS-2.7-1"), id="aes128"),
    pytest.param({}, {"cipher": "aes192"}, marks=conformance("AS-2.7-4"), id="aes192"),
    pytest.param({}, {"cipher": "aes-256-gcm"}, id="aes256-gcm"),
    pytest.param({}, {"oaep": True}, id="oaep"),
    pytest.param({}, {"oaep": "sha256"}, id="oaep-sha256"),
    pytest.param({}, {"keyid": True}, id="keyid"),
    pytest.param({"md": "sha1"}, {}, marks=conformance("AS-2.6-3"), id="sha1"),
    pytest.param({"md": "sha384"}, {}, marks=conformance("AS-2.6-5"), id="sha384"),
    pytest.param({"md": "sha512"}, {}, marks=conformance("AS-2.6-5"), id="sha512"),
    pytest.param({"pss": True}, {}, id="rsa-pss"),
    pytest.param({"legacy_smime": True}, {}, marks=conformance("AS-2.5.1-4"), id="smime-x-pkcs7-signature"),
    pytest.param({}, {"legacy_smime": True}, marks=conformance("AS-2.4-3"), id="smime-x-pkcs7-mime"),
])
def test_openssl_messages_are_delivered_as_signed(
    world: World, agent_for, sign: dict[str, Any], encrypt: dict[str, Any], entity: bytes, expected: bytes
) -> None:
    received = receive(agent_for, world, to_bob(world, signed(world, entity, **sign), **encrypt))
    assert received.recipients == (BOB,) and received.rejected == {}
    assert received.signers == (world.alice.cert,)
    assert received.message == expected


def with_extra_part(smime: bytes) -> bytes:
    """openssl's multipart/signed with a third part before the closing delimiter."""
    boundary = re.search(rb'boundary="([^"]+)"', smime)
    assert boundary
    close = b"\r\n--" + boundary[1] + b"--"
    extra = b"\r\n--" + boundary[1] + b"\r\nContent-Type: text/plain\r\n\r\nsmuggled\r\n"
    return smime.replace(close, extra + close[2:], 1)


def with_flipped_signature(smime: bytes) -> bytes:
    """One byte of the signature value changed (a base64 line near the end of the DER, i.e. in the RSA value)."""
    lines = smime.split(b"\r\n")
    last = max(i for i, line in enumerate(lines) if line.startswith(b"--"))
    line = lines[last - 2]
    lines[last - 2] = (b"B" if line[:1] == b"A" else b"A") + line[1:]
    return b"\r\n".join(lines)


Build = Callable[[World], bytes]
REFUSALS: list[Any] = [
    pytest.param(lambda w: to_bob(w, signed(w), cipher="des3"), ForbiddenAlgorithm, r"\b3DES\b",
                 id="des3", marks=conformance("AS-2.7-3")),
    pytest.param(lambda w: to_bob(w, signed(w), cipher="des"), ForbiddenAlgorithm, r"\bDES \(des-cbc\)",
                 id="des", marks=conformance("AS-2.7-3")),
    pytest.param(lambda w: to_bob(w, signed(w), cipher="rc2-40"), ForbiddenAlgorithm, r"\bRC2\b",
                 id="rc2-40", marks=conformance("AS-2.7-3")),
    pytest.param(lambda w: to_bob(w, signed(w, md="md5")), ForbiddenAlgorithm, r"\bMD5\b",
                 id="md5", marks=conformance("AS-2.6-4")),
    pytest.param(lambda w: to_bob(w, signed(w, nocerts=True)), NoSignerCertificate, "no signer certificate",
                 id="nocerts", marks=conformance("AS-2.5.2-1", "ALG-18", "AS-4.2.2-3")),
    pytest.param(lambda w: to_bob(w, signed(w, nodetach=True)), NotSigned, "opaque signed-data",
                 id="opaque-signed-data", marks=conformance("AS-2.5.1-3", "ALG-14")),
    pytest.param(lambda w: to_bob(w, UNWRAPPED), NotSigned, "text/plain, not multipart/signed",
                 id="unsigned", marks=conformance("AS-2.4-4", "ALG-14")),
    pytest.param(lambda w: to_bob(w, with_extra_part(signed(w))), NotSigned, "exactly two parts .*has 3 parts",
                 id="three-parts", marks=conformance("ALG-14")),
    pytest.param(lambda w: to_bob(w, signed(w).replace(b"application/pkcs7-signature\"", b"application/pgp-sig\"")),
                 NotSigned, "protocol 'application/pgp-sig'", id="wrong-protocol", marks=conformance("ALG-14")),
    pytest.param(lambda w: to_bob(w, signed(w).replace(b"Patient summary", b"Patient summarx", 1)),
                 SignatureInvalid, "message digest does not match", id="tampered",
                 marks=conformance("AS-2.5.3-1", "ALG-18", "ALG-19")),
    pytest.param(lambda w: to_bob(w, with_flipped_signature(signed(w))), SignatureInvalid,
                 "signature value does not verify", id="tampered-signature", marks=conformance("ALG-18")),
    pytest.param(lambda w: to_bob(w, signed(w, signer="bob")), TrustError, f"not bound to {re.escape(ALICE)}",
                 id="signer-not-sender", marks=conformance("AS-2.4-5")),
    pytest.param(lambda w: to_bob(w, signed(w), recipients=(w.bob2,)), NotEncryptedForRecipient,
                 "not encrypted to any of the recipient's certificates", id="not-for-bob", marks=conformance("ALG-12")),
]


@pytest.mark.parametrize(("build", "error", "reason"), REFUSALS)
def test_openssl_messages_are_refused_naming_the_cause(
    world: World, agent_for, build: Build, error: type[DirectMilterError], reason: str
) -> None:
    assert_refused(receive_refused(agent_for, world, build(world)), error, reason)


def receive_refused(agent_for, world: World, wire: bytes, *, sender: str = ALICE, **agent: Any) -> DirectMilterError:
    """The error that kept bob from the message: a whole-message error, or bob's entry in the refusal."""
    with pytest.raises(DirectMilterError) as caught:
        receive(agent_for, world, wire, sender=sender, **agent)
    refused = caught.value
    return refused.rejected[BOB] if isinstance(refused, NoTrustedRecipients) else refused


def assert_refused(refused: DirectMilterError, error: type[DirectMilterError], reason: str) -> None:
    assert isinstance(refused, error), f"{type(refused).__name__}: {refused.reason}"
    assert re.search(reason, refused.reason), refused.reason


@conformance("ALG-18", "ALG-19", "AS-4.2.2-1")
def test_signer_under_untrusted_root_is_refused(world: World, agent_for) -> None:
    wire = to_bob(world, signed(world, plain_message(sender=CAROL), signer="carol"))
    assert_refused(receive_refused(agent_for, world, wire, sender=CAROL), NoTrustPath, "no path to a trust anchor")


@conformance("AS-2.6-6")
def test_config_without_sha1_refuses_sha1(world: World, agent_for) -> None:
    wire = to_bob(world, signed(world, md="sha1"))
    refused = receive_refused(agent_for, world, wire, accept_digests=["sha256", "sha384", "sha512"])
    assert_refused(refused, ForbiddenAlgorithm, "SHA1 is not accepted by this STA's configuration")


@conformance("AS-2.7-5")
def test_config_without_aes128_refuses_aes128(world: World, agent_for) -> None:
    wire = to_bob(world, signed(world), cipher="aes128")
    refused = receive_refused(agent_for, world, wire, accept_ciphers=["aes256-cbc", "aes256-gcm"])
    assert_refused(refused, ForbiddenAlgorithm, "aes128-cbc is not accepted by this STA's configuration")


# --- mixed outcomes --------------------------------------------------------------------------------------------


@conformance("ALG-12")
def test_only_recipients_the_envelope_was_made_for_are_delivered(world: World, agent_for) -> None:
    received = receive(agent_for, world, to_bob(world, signed(world)), BOB, BOB2)
    assert received.recipients == (BOB,)
    assert_refused(received.rejected[BOB2], NotEncryptedForRecipient,
                   f"recipient {re.escape(BOB2)}: message is not encrypted")
    assert received.message == plain_message()


@conformance("ALG-16")
def test_one_trusted_signer_among_untrusted_ones_is_enough(world: World, agent_for) -> None:
    """openssl signs with carol (R2, untrusted, not alice) and alice (R1): alice's signature carries the message."""
    signers = [a for who in (world.carol, world.alice) for a in ("-signer", who.cert_path, "-inkey", who.key_path)]
    smime = opensslpeer.run(["cms", "-sign", "-binary", "-crlfeol", "-md", "sha256", *signers], WRAPPED)
    smime = re.sub(rb"(?<!\r)\n", b"\r\n", smime)  # openssl's base64 lines end in bare LF; the entity is CRLF
    assert opensslpeer.cmsprint(smime).count("d.issuerAndSerialNumber:") == 2
    received = receive(agent_for, world, to_bob(world, smime))
    assert received.recipients == (BOB,)
    assert received.signers == (world.alice.cert,)
    assert received.message == plain_message()


@conformance("AS-2.4-1")
def test_plain_openssl_cli_usage_is_delivered(world: World, agent_for) -> None:
    """`openssl cms -sign -md sha256 | openssl cms -encrypt -aes256` as a person types it: text mode, LF input."""
    lf = WRAPPED.replace(b"\r\n", b"\n")
    smime = opensslpeer.run(["cms", "-sign", "-md", "sha256", "-signer", world.alice.cert_path,
                             "-inkey", world.alice.key_path], lf)
    wire = opensslpeer.run(["cms", "-encrypt", "-aes256", world.bob.cert_path], smime)
    assert b"\r" not in wire
    assert receive(agent_for, world, wire).message == plain_message()
