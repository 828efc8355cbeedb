"""Tampering with a secured message in transit: refused with one of our errors, or harmless — never a traceback.

HISP A secures alice's message to bob once; HISP B then receives mutilated copies. A change either makes
:meth:`Agent.incoming` raise a :class:`DirectMilterError`, or leaves what bob gets byte for byte what the untouched
message gives. The second outcome is real but narrow: a flip that does not change the decoded CMS (the unused low
bits before base64 ``=`` padding), or a CBC IV flip that only changes something the parser does not care about in
the unauthenticated framing around the signed part (the case of the first header name, ``Content-Type``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from asn1crypto import cms as asn1_cms
from conftest import World, envelope, plain_message
from hypothesis import given, settings
from hypothesis import strategies as st

from directmilter import cms
from directmilter.agent import Agent, MessageEnvelope
from directmilter.cms.enveloped import encrypt
from directmilter.cms.mime import fold_base64
from directmilter.errors import (
    DirectMilterError,
    NoSignerCertificate,
    NoTrustedRecipients,
    NoTrustPath,
    SignatureInvalid,
)

ALICE = "alice@direct.a.test"
BOB = "bob@direct.b.test"
CAROL = "carol@direct.b.test"
CIPHERS = ("aes256-cbc", "aes128-gcm")
SETTINGS = settings(deadline=None)


@dataclass(frozen=True)
class Sample:
    """One secured message, split into its header block and its base64 body, and what bob gets from it."""

    cipher: str
    message: bytes
    head: bytes  # header block and the empty line
    der: bytes
    delivered: bytes

    @property
    def body(self) -> bytes:
        return self.message[len(self.head):]

    def with_der(self, der: bytes) -> bytes:
        return self.head + fold_base64(der)


@dataclass
class Hisps:
    a: Agent
    b: Agent
    samples: dict[str, Sample]

    def receive(self, message: bytes, sender: str = ALICE) -> bytes:
        return self.b.incoming(MessageEnvelope(sender, (BOB,), message)).message

    def check(self, sample: Sample, tampered: bytes) -> str:
        """The property: our error, or exactly the untouched message's outcome. Any other exception escapes."""
        try:
            result = self.b.incoming(MessageEnvelope(ALICE, (BOB,), tampered))
        except DirectMilterError as exc:
            return type(exc).__name__
        assert result.recipients == (BOB,)
        assert result.message == sample.delivered, "a tampered message was delivered with different content"
        return "delivered"


def _secure(world: World, a: Agent, b: Agent, cipher: str) -> Sample:
    # 16 more body bytes change the DER length by 16 (== 1 mod 3): within three tries the base64 ends in padding,
    # so random flips can also land on the padding bits
    for extra in range(8):
        body = b"Patient summary attached.\r\n" + b"0123456789abcde\n" * extra
        message = a.outgoing(envelope(plain_message(body=body))).message
        head, _, encoded = message.partition(b"\r\n\r\n")
        der = base64.b64decode(re.sub(rb"\s+", b"", encoded), validate=True)
        if len(der) % 3:
            delivered = b.incoming(MessageEnvelope(ALICE, (BOB,), message)).message
            return Sample(cipher, message, head + b"\r\n\r\n", der, delivered)
    raise AssertionError("could not make a secured message whose base64 ends in padding")


@pytest.fixture(scope="module")
def hisps(world: World) -> Iterator[Hisps]:
    b = Agent(world.hisp_b())
    made: list[Agent] = [b]
    try:
        samples: dict[str, Sample] = {}
        for cipher in CIPHERS:
            a = Agent(world.hisp_a(agent={"cipher": cipher}))
            made.append(a)
            samples[cipher] = _secure(world, a, b, cipher)
        yield Hisps(a=made[1], b=b, samples=samples)
    finally:
        for agent in made:
            agent.close()


def test_the_untouched_messages_are_delivered(hisps: Hisps) -> None:
    for sample in hisps.samples.values():
        assert b"Patient summary attached." in sample.delivered
        assert base64.b64encode(sample.der).endswith(b"=")
        assert hisps.check(sample, sample.message) == "delivered"


# --- properties ------------------------------------------------------------------------------------------------


def _positions(draw: st.DrawFn, length: int, head: int = 400, tail: int = 120) -> list[tuple[int, int]]:
    """1 to 3 distinct (offset, xor) pairs; offsets anywhere, or biased to the start (recipient info, IV) and the end
    (last cipher blocks, base64 padding)."""
    anywhere = st.integers(0, length - 1)
    start = st.integers(0, min(head, length) - 1)
    end = st.integers(max(0, length - tail), length - 1)
    offsets = draw(st.lists(st.one_of(anywhere, start, end), min_size=1, max_size=3, unique=True))
    return [(offset, draw(st.integers(1, 255))) for offset in offsets]


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for offset, value in flips:
        out[offset] ^= value
    return bytes(out)


@settings(SETTINGS, max_examples=70)
@given(data=st.data())
def test_flipped_base64_bytes_are_refused_or_harmless(hisps: Hisps, data: st.DataObject) -> None:
    sample = hisps.samples[data.draw(st.sampled_from(CIPHERS), label="cipher")]
    flips = _positions(data.draw, len(sample.body))
    tampered = sample.head + _flip(sample.body, flips)
    assert tampered != sample.message
    hisps.check(sample, tampered)


@settings(SETTINGS, max_examples=50)
@given(data=st.data())
def test_flipped_der_bytes_are_refused_or_harmless(hisps: Hisps, data: st.DataObject) -> None:
    sample = hisps.samples[data.draw(st.sampled_from(CIPHERS), label="cipher")]
    flips = _positions(data.draw, len(sample.der))
    hisps.check(sample, sample.with_der(_flip(sample.der, flips)))


@settings(SETTINGS, max_examples=30)
@given(data=st.data())
def test_truncated_messages_are_always_refused(hisps: Hisps, data: st.DataObject) -> None:
    sample = hisps.samples[data.draw(st.sampled_from(CIPHERS), label="cipher")]
    if data.draw(st.booleans(), label="truncate the DER"):
        tampered = sample.with_der(sample.der[: data.draw(st.integers(0, len(sample.der) - 1), label="keep")])
    else:
        # cut anywhere before the last base64 character (a cut that only drops the final CRLF changes nothing)
        last = len(sample.message.rstrip(b"\r\n")) - 1
        tampered = sample.message[: data.draw(st.integers(0, last), label="keep")]
    with pytest.raises(DirectMilterError):
        hisps.b.incoming(MessageEnvelope(ALICE, (BOB,), tampered))


# --- the harmless cases exist ------------------------------------------------------------------------------------


def test_non_canonical_base64_padding_bits_change_nothing(hisps: Hisps) -> None:
    sample = hisps.samples["aes256-cbc"]
    encoded = sample.body.rstrip(b"\r\n")
    index = len(sample.head) + len(encoded.rstrip(b"=")) - 1  # the last data character, whose low bits are unused
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    other = alphabet[alphabet.index(sample.message[index]) ^ 0x01]  # its lowest bit, unused with either padding
    tampered = sample.message[:index] + bytes([other]) + sample.message[index + 1:]
    assert tampered != sample.message
    assert base64.b64decode(re.sub(rb"\s+", b"", tampered[len(sample.head):])) == sample.der
    assert hisps.check(sample, tampered) == "delivered"


def test_iv_flip_changing_the_case_of_the_first_header_name_changes_nothing(hisps: Hisps) -> None:
    """CBC is malleable: flipping IV bit 0x20 of byte 0 turns 'Content-Type' into 'content-Type' in the decrypted
    framing. The parser reads header names case-insensitively and the signed part is untouched: delivered as is."""
    sample = hisps.samples["aes256-cbc"]
    info = asn1_cms.ContentInfo.load(sample.der)
    iv = info["content"]["encrypted_content_info"]["content_encryption_algorithm"]["parameters"].native
    assert isinstance(iv, bytes) and len(iv) == 16 and sample.der.count(iv) == 1
    tampered = _flip(sample.der, [(sample.der.index(iv), 0x20)])
    assert hisps.check(sample, sample.with_der(tampered)) == "delivered"
    # the same flip on byte 5 ('n' of 'Content') breaks the header name: refused
    tampered = _flip(sample.der, [(sample.der.index(iv) + 5, 0x01)])
    assert hisps.check(sample, sample.with_der(tampered)) != "delivered"


# --- ALG-18: what verification means -----------------------------------------------------------------------------


def _reencrypt_for_bob(world: World, hisps: Hisps, plaintext: bytes) -> bytes:
    """The untouched message's headers around a new envelope for bob holding ``plaintext``."""
    sample = hisps.samples["aes256-cbc"]
    return sample.with_der(encrypt(plaintext, [world.bob.cert], cipher="aes256-cbc", key_transport="rsa-pkcs1v15",
                                   recipient_id="issuer-serial"))


def _opened(hisps: Hisps) -> tuple[bytes, cms.SignedEntity]:
    sample = hisps.samples["aes256-cbc"]
    config = hisps.b.context.config
    plaintext = cms.parse_secured(sample.message, config.crypto.accept_ciphers).envelope.decrypt(
        config.identities_for(BOB))
    return plaintext, cms.read_signed(plaintext, config.crypto.accept_digests)[0]


def _refusal(hisps: Hisps, message: bytes, sender: str = ALICE) -> DirectMilterError:
    with pytest.raises(NoTrustedRecipients) as caught:
        hisps.receive(message, sender)
    return caught.value.rejected[BOB]


@pytest.mark.conformance("ALG-18")
def test_a_byte_flipped_in_the_signed_content_is_refused(world: World, hisps: Hisps) -> None:
    plaintext, _ = _opened(hisps)
    assert hisps.receive(_reencrypt_for_bob(world, hisps, plaintext)) == hisps.samples["aes256-cbc"].delivered
    changed = plaintext.replace(b"Patient summary", b"Patient sunmary", 1)
    assert changed != plaintext
    refusal = _refusal(hisps, _reencrypt_for_bob(world, hisps, changed))
    assert isinstance(refusal, SignatureInvalid)
    assert "message digest does not match" in refusal.reason


def _replace_signature(plaintext: bytes, signed: cms.SignedEntity, der: bytes) -> bytes:
    old = fold_base64(signed.signature_der)
    assert plaintext.count(old) == 1
    return plaintext.replace(old, fold_base64(der))


@pytest.mark.conformance("ALG-18")
def test_a_byte_flipped_in_the_signature_value_is_refused(world: World, hisps: Hisps) -> None:
    plaintext, signed = _opened(hisps)
    info = asn1_cms.ContentInfo.load(signed.signature_der)
    value = info["content"]["signer_infos"][0]["signature"].native
    assert signed.signature_der.endswith(value)  # no unsigned attributes after it
    der = _flip(signed.signature_der, [(len(signed.signature_der) - 7, 0x04)])
    refusal = _refusal(hisps, _reencrypt_for_bob(world, hisps, _replace_signature(plaintext, signed, der)))
    assert isinstance(refusal, SignatureInvalid)
    assert "does not verify" in refusal.reason


@pytest.mark.conformance("ALG-18")
def test_a_signature_without_its_certificate_is_refused(world: World, hisps: Hisps) -> None:
    plaintext, signed = _opened(hisps)
    info = asn1_cms.ContentInfo.load(signed.signature_der)
    content = info["content"]
    stripped = asn1_cms.ContentInfo({
        "content_type": "signed_data",
        "content": asn1_cms.SignedData({
            "version": content["version"],
            "digest_algorithms": content["digest_algorithms"],
            "encap_content_info": content["encap_content_info"],
            "signer_infos": content["signer_infos"],
        }),
    }).dump()
    refusal = _refusal(hisps, _reencrypt_for_bob(world, hisps, _replace_signature(plaintext, signed, stripped)))
    assert isinstance(refusal, NoSignerCertificate)


@pytest.mark.conformance("ALG-18")
def test_a_signer_issued_by_an_unknown_ca_is_refused(world: World, hisps: Hisps) -> None:
    """carol's certificate is properly bound but issued under R2, which bob does not trust."""
    carol = hisps.b.context.config.identities_for(CAROL)
    message = plain_message(sender=CAROL)
    secured = cms.secure(cms.parse_message(message), carol, [world.bob.cert])
    refusal = _refusal(hisps, secured, sender=CAROL)
    assert isinstance(refusal, NoTrustPath)


@pytest.mark.conformance("ALG-16")
def test_a_failed_signature_of_a_trusted_signer_does_not_count_beside_a_valid_untrusted_one(world: World,
                                                                                           hisps: Hisps) -> None:
    """Issue 20 (a mutant the suite let through): alice signs, and so does a stranger's self-made certificate for
    her address. With both signatures sound the message is delivered (alice's counts). With alice's signature value
    damaged, the only valid signature is the stranger's, whom bob does not trust: refused."""
    from directmilter.keys.identity import PrivateIdentity

    plaintext, signed = _opened(hisps)
    alice = hisps.a.context.config.identities_for(ALICE)
    made = world.pki.leaf("tamper-stranger", None, email=ALICE, self_signed=True)
    both = cms.sign_detached(signed.content, [*alice, PrivateIdentity(made.cert, made.key)], "sha256")
    assert hisps.receive(_reencrypt_for_bob(world, hisps, _replace_signature(plaintext, signed, both)))

    info = asn1_cms.ContentInfo.load(both)
    ours = {identity.certificate.serial_number for identity in alice}
    for signer in info["content"]["signer_infos"]:
        if signer["sid"].chosen["serial_number"].native in ours:
            value = bytearray(signer["signature"].native)
            value[-5] ^= 0x01
            signer["signature"] = bytes(value)
    damaged = info.dump(force=True)
    refusal = _refusal(hisps, _reencrypt_for_bob(world, hisps, _replace_signature(plaintext, signed, damaged)))
    assert isinstance(refusal, NoTrustPath), refusal


@pytest.mark.conformance("ALG-18")
def test_with_no_valid_signature_the_first_signers_fault_is_the_reason(world: World, hisps: Hisps) -> None:
    """Two signers, neither valid: one's signature value damaged, the other's certificate left out. The refusal
    gives the first SignerInfo's fault (the order is DER's, fixed), whichever of the two faults that is."""
    from directmilter.keys.identity import PrivateIdentity

    plaintext, signed = _opened(hisps)
    alice = hisps.a.context.config.identities_for(ALICE)
    made = world.pki.leaf("tamper-second-signer", None, email=ALICE, self_signed=True)
    ours = {identity.certificate.serial_number for identity in alice}
    faults: set[type[DirectMilterError]] = set()
    for damaged_is_ours in (True, False):
        info = asn1_cms.ContentInfo.load(cms.sign_detached(signed.content, [*alice, PrivateIdentity(made.cert,
                                                                                                    made.key)],
                                                           "sha256"))
        for signer in info["content"]["signer_infos"]:
            if (signer["sid"].chosen["serial_number"].native in ours) == damaged_is_ours:
                value = bytearray(signer["signature"].native)
                value[-5] ^= 0x01
                signer["signature"] = bytes(value)
        info["content"]["certificates"] = [c for c in info["content"]["certificates"]
                                           if (c.chosen.serial_number in ours) == damaged_is_ours]
        damaged = info.dump(force=True)
        first = asn1_cms.ContentInfo.load(damaged)["content"]["signer_infos"][0]
        first_is_damaged = (first["sid"].chosen["serial_number"].native in ours) == damaged_is_ours
        fault = SignatureInvalid if first_is_damaged else NoSignerCertificate
        refusal = _refusal(hisps, _reencrypt_for_bob(world, hisps, _replace_signature(plaintext, signed, damaged)))
        assert isinstance(refusal, fault), (damaged_is_ours, fault, refusal)
        faults.add(fault)
    assert faults == {SignatureInvalid, NoSignerCertificate}  # each fault was once the first
