"""The agent's decisions (Process Outgoing / Process Incoming) on the run-time PKI, without a mail server."""

from __future__ import annotations

import datetime as dt

import pytest
from conftest import CANARY, World, envelope, keypair, plain_message

from directmilter import cms
from directmilter.agent.crypto import open_message
from directmilter.config import load_config
from directmilter.errors import (
    MalformedMessage,
    NotEncrypted,
    NoTrustedRecipients,
    SenderNotConfigured,
)

BOB = "bob@direct.b.test"
CAROL = "carol@direct.b.test"


def secure(agent_for, world: World, message: bytes | None = None, *rcpts: str, sender: str = "alice@direct.a.test"):
    return agent_for(world.hisp_a()).outgoing(envelope(message or plain_message(sender=sender), sender, *rcpts))


@pytest.mark.conformance("ALG-4", "ALG-8", "AS-4.2.3-1", "AS-2.4-5", "AS-4.2.2-1")
def test_untrusted_recipient_removed_and_trusted_one_kept(world: World, agent_for) -> None:
    result = secure(agent_for, world, None, BOB, CAROL)
    assert result.recipients == (BOB,)
    assert set(result.rejected) == {CAROL}
    assert "no path to a trust anchor" in result.rejected[CAROL].reason
    assert result.certificates == (world.bob.cert,)


@pytest.mark.conformance("ALG-9", "ALG-10")
def test_no_trusted_recipient_rejects_the_message(world: World, agent_for) -> None:
    with pytest.raises(NoTrustedRecipients) as caught:
        secure(agent_for, world, None, CAROL)
    assert caught.value.reason.startswith(f"recipient {CAROL}: ")
    assert set(caught.value.rejected) == {CAROL}


@pytest.mark.conformance("ALG-3", "AS-1.0-1")
def test_sender_without_key_is_not_configured(world: World, agent_for) -> None:
    with pytest.raises(SenderNotConfigured, match=r"nokey@elsewhere\.test: no private key"):
        secure(agent_for, world, None, BOB, sender="nokey@elsewhere.test")


@pytest.mark.conformance("AS-1.4-8")
def test_expired_signing_certificate_is_never_used(world: World, agent_for) -> None:
    expired = world.pki.leaf("alice-expired", world.r1, email="alice@direct.a.test",
                             not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
                             not_after=dt.datetime(2021, 1, 1, tzinfo=dt.UTC))
    body = world.hisp_a_body()
    body["addresses"] = {"alice@direct.a.test": {"keys": [keypair(expired)]}}
    config = world.hisp_a(addresses=body["addresses"])
    with pytest.raises(SenderNotConfigured, match="signing certificate expired 2021-01-01"):
        agent_for(config).outgoing(envelope(plain_message()))


@pytest.mark.conformance("AS-1.4-2")
def test_org_certificate_signs_for_address_without_own_key(world: World, agent_for) -> None:
    """al2 has no address key: the domain's organisational certificate signs, and bob's side trusts it."""
    sent = secure(agent_for, world, plain_message(sender="al2@direct.a.test"), BOB, sender="al2@direct.a.test")
    received = agent_for(world.hisp_b()).incoming(envelope(sent.message, "al2@direct.a.test", BOB))
    assert received.recipients == (BOB,)
    assert received.signers == (world.a_org.cert,)


@pytest.mark.conformance("AS-5.2-1")
def test_org_certificate_of_recipient_domain_used_when_no_address_certificate(world: World, agent_for) -> None:
    b_org = world.pki.leaf("b-org", world.r1, dns="direct.b.test")
    body = world.hisp_a_body()
    config = world.hisp_a(certificates={"files": [*body["certificates"]["files"], str(b_org.cert_path)]})
    result = agent_for(config).outgoing(envelope(plain_message(), "alice@direct.a.test", "dave@direct.b.test"))
    assert result.certificates == (b_org.cert,)


@pytest.mark.conformance("AS-4.2.1-1", "ALG-13")
def test_per_address_incoming_anchors_override_the_domain(world: World, agent_for) -> None:
    """bob trusts R1 through the domain; bob2 is given R2 only, so alice's message reaches bob alone."""
    sent = secure(agent_for, world, None, BOB, "bob2@direct.b.test")
    body = world.hisp_b_body()
    body["addresses"]["bob2@direct.b.test"]["anchors"] = [str(world.r2.cert_path)]
    received = agent_for(world.hisp_b(addresses=body["addresses"])).incoming(
        envelope(sent.message, "alice@direct.a.test", BOB, "bob2@direct.b.test"))
    assert received.recipients == (BOB,)
    assert "no path to a trust anchor" in received.rejected["bob2@direct.b.test"].reason


def test_outgoing_anchors_are_separate_from_incoming(world: World, agent_for) -> None:
    domain = world.hisp_a_body()["domains"]["direct.a.test"]
    config = world.hisp_a(domains={"direct.a.test": {**domain, "outgoing_anchors": [str(world.r2.cert_path)]}})
    result = agent_for(config).outgoing(envelope(plain_message(), "alice@direct.a.test", BOB, CAROL))
    assert result.recipients == (CAROL,)


@pytest.mark.conformance("AS-2.4-5", "ALG-2")
def test_envelope_not_headers_decides(world: World, agent_for) -> None:
    """Header To names an untrusted party, RCPT TO a trusted one: only the envelope counts."""
    message = plain_message(to="mallory@untrusted.test")
    result = secure(agent_for, world, message, BOB)
    assert result.recipients == (BOB,)
    # Incoming: the signer must be bound to MAIL FROM, not to the header From.
    b = agent_for(world.hisp_b())
    with pytest.raises(NoTrustedRecipients, match=r"not bound to eve@direct\.a\.test"):
        b.incoming(envelope(result.message, "eve@direct.a.test", BOB))


@pytest.mark.conformance("AS-2.1-1")
@pytest.mark.parametrize("raw", [
    b"From: alice@direct.a.test\r\nthis line has no colon\r\n\r\nbody\r\n",
    b"From: alice@direct.a.test\r\nSubject: a\x00b\r\n\r\nbody\r\n",
    b" leading continuation\r\nFrom: alice@direct.a.test\r\n\r\nbody\r\n",
])
def test_not_rfc5322_is_refused(world: World, agent_for, raw: bytes) -> None:
    with pytest.raises(MalformedMessage, match="RFC 5322"):
        secure(agent_for, world, raw, BOB)


@pytest.mark.conformance("AS-2.1-2")
@pytest.mark.parametrize(("content_type", "body", "reason"), [
    (b"multipart/mixed", b"--x\r\n\r\nhi\r\n--x--\r\n", "no boundary parameter"),
    (b'multipart/mixed; boundary="x"', b"--x\r\n\r\nhi\r\n", "never terminated"),
])
def test_invalid_mime_is_refused(world: World, agent_for, content_type: bytes, body: bytes, reason: str) -> None:
    raw = b"From: alice@direct.a.test\r\nMIME-Version: 1.0\r\nContent-Type: " + content_type + b"\r\n\r\n" + body
    with pytest.raises(MalformedMessage, match=reason):
        secure(agent_for, world, raw, BOB)


@pytest.mark.conformance("AS-2.2-1")
def test_message_without_from_is_refused(world: World, agent_for) -> None:
    with pytest.raises(MalformedMessage, match="no From header"):
        secure(agent_for, world, b"To: bob@direct.b.test\r\nSubject: x\r\n\r\nbody\r\n", BOB)


@pytest.mark.conformance("AS-2.2-3", "AS-2.2-4")
def test_missing_date_and_message_id_are_added_inside_and_outside(world: World, agent_for) -> None:
    raw = b"From: alice@direct.a.test\r\nTo: bob@direct.b.test\r\nSubject: x\r\n\r\nbody\r\n"
    sent = secure(agent_for, world, raw, BOB)
    outer = cms.parse_message(sent.message)
    assert outer.get("date") and outer.get("message-id", ).endswith("@direct.a.test>")
    received = agent_for(world.hisp_b()).incoming(envelope(sent.message, "alice@direct.a.test", BOB))
    inner = cms.parse_message(received.message)
    assert inner.get("message-id") == outer.get("message-id")


@pytest.mark.conformance("AS-2.2-7", "AS-2.4-7", "AS-2.2-4")
def test_bcc_dropped_subject_hidden_and_ids_kept(world: World, agent_for) -> None:
    raw = plain_message(extra=b"Bcc: bob2@direct.b.test\r\n")
    sent = secure(agent_for, world, raw, BOB, "bob2@direct.b.test")
    assert CANARY.encode() not in sent.message
    assert b"Bcc" not in sent.message.split(b"\r\n\r\n", 1)[0]  # (the base64 body holds "Bcc" one time in 20)
    outer = cms.parse_message(sent.message)
    assert outer.get("message-id") == "<test-1@direct.a.test>"
    assert outer.get("from") == "alice@direct.a.test" and outer.get("to") == BOB
    received = agent_for(world.hisp_b()).incoming(envelope(sent.message, "alice@direct.a.test", BOB))
    assert b"Bcc" not in received.message
    assert f"Subject: {CANARY}".encode() in received.message


def test_round_trip_keeps_the_original_message_byte_for_byte(world: World, agent_for) -> None:
    raw = plain_message(body="Grüße, trailing  \r\nFrom the clinic\r\n.\r\n".encode())
    sent = secure(agent_for, world, raw, BOB)
    received = agent_for(world.hisp_b()).incoming(envelope(sent.message, "alice@direct.a.test", BOB))
    assert received.message == raw


def test_bare_lf_input_is_canonicalised(world: World, agent_for) -> None:
    raw = plain_message().replace(b"\r\n", b"\n")
    sent = secure(agent_for, world, raw, BOB)
    assert b"\n" not in sent.message.replace(b"\r\n", b"")
    received = agent_for(world.hisp_b()).incoming(envelope(sent.message.replace(b"\r\n", b"\n"),
                                                          "alice@direct.a.test", BOB))
    assert received.message == plain_message()


@pytest.mark.conformance("AS-2.6-2")
def test_outgoing_never_signs_with_sha1(world: World, agent_for) -> None:
    sent = secure(agent_for, world, None, BOB)
    secured = cms.parse_secured(sent.message, ("aes256-cbc",))
    plain = secured.envelope.decrypt(world.hisp_b().identities_for(BOB))
    _, report = cms.read_signed(plain, ("sha1", "sha256"))
    assert [r.digest for r in report.results] == ["sha256"]


@pytest.mark.conformance("ALG-15")
def test_incoming_recipient_without_key_is_removed(world: World, agent_for) -> None:
    sent = secure(agent_for, world, None, BOB)
    received = agent_for(world.hisp_b()).incoming(envelope(sent.message, "alice@direct.a.test", BOB,
                                                          "nokey@direct.b.test"))
    assert received.recipients == (BOB,)
    assert "no private key" in received.rejected["nokey@direct.b.test"].reason


def test_plaintext_incoming_is_refused(world: World, agent_for) -> None:
    with pytest.raises(NotEncrypted, match="text/plain, not an S/MIME encrypted message"):
        agent_for(world.hisp_b()).incoming(envelope(plain_message(), "alice@direct.a.test", BOB))


def test_null_sender_falls_back_to_header_from(world: World, agent_for) -> None:
    """Legacy notifications arrive with MAIL FROM <>: the signer is bound to the header From instead."""
    sent = secure(agent_for, world, None, BOB)
    received = agent_for(world.hisp_b()).incoming(envelope(sent.message, "", BOB))
    assert received.recipients == (BOB,)


def test_recipients_with_different_keys_share_one_verified_content(world: World, agent_for) -> None:
    """Each set of keys decrypts for itself, but the same content is verified and kept once; one set of keys
    (bob named twice) takes the path without a digest of the content."""
    sent = secure(agent_for, world, None, BOB, "bob2@direct.b.test")
    config = world.hisp_b()
    opened = open_message(config, sent.message, (BOB, "bob2@direct.b.test"))
    assert len(opened.contents) == 1
    assert opened.by_recipient == {BOB: 0, "bob2@direct.b.test": 0}
    alone = open_message(config, sent.message, (BOB, BOB))
    assert alone.by_recipient == {BOB: 0} and len(alone.contents) == 1
    assert alone.contents[0].message == opened.contents[0].message
    assert CANARY.encode() in opened.contents[0].message


@pytest.mark.conformance("AS-4.0-1", "AS-4.2.2-4", "AS-4.2.3-3")
@pytest.mark.parametrize("what", ["signer", "intermediate"])
def test_an_expired_signer_or_intermediate_is_refused_on_receipt(world: World, agent_for, what: str) -> None:
    """Issue 20 (a mutant the suite let through): bob receives a message signed (by openssl) with a certificate
    that expired in 2021, or whose intermediate did; the intermediate travels in the signature. Refused, naming
    the expiry; the same message signed while everything is valid is delivered."""
    import opensslpeer as peer

    past = {"not_before": dt.datetime(2020, 1, 1, tzinfo=dt.UTC), "not_after": dt.datetime(2021, 1, 1, tzinfo=dt.UTC)}
    inter = world.pki.intermediate(f"exp-I-{what}", world.r1, **(past if what == "intermediate" else {}))
    signer = world.pki.leaf(f"exp-{what}", inter, email="alice@direct.a.test",
                            **(past if what == "signer" else {}))
    fresh = world.pki.intermediate(f"exp-I2-{what}", world.r1)
    good = world.pki.leaf(f"exp-good-{what}", fresh, email="alice@direct.a.test")
    b = agent_for(world.hisp_b())

    def sent_by(cert, chain) -> bytes:
        signed = peer.sign(b"Content-Type: text/plain\r\n\r\nresults\r\n", cert, extra_certs=[chain])
        return b"From: alice@direct.a.test\r\nTo: bob@direct.b.test\r\n" + peer.encrypt(signed, [world.bob.cert_path])

    assert b.incoming(envelope(sent_by(good, fresh), "alice@direct.a.test", BOB)).recipients == (BOB,)
    with pytest.raises(NoTrustedRecipients) as caught:
        b.incoming(envelope(sent_by(signer, inter), "alice@direct.a.test", BOB))
    assert "expired 2021-01-01" in caught.value.rejected[BOB].reason, caught.value.rejected[BOB]


@pytest.mark.conformance("AS-2.4-5", "ALG-2")
@pytest.mark.parametrize("routing_check", [True, False], ids=["routing-check-on", "routing-check-off"])
def test_incoming_envelope_decides_and_the_routing_check_is_the_one_exception(world: World, agent_for,
                                                                               routing_check: bool) -> None:
    """The checklist's AS-2.4-5 and ALG-2 expect a bob-signed message with MAIL FROM bob and header From eve, and
    one whose header To names somebody else than RCPT TO alice, to be accepted. Decided (issue 20): the routing
    check stays on by default ([domains] routing_check, as the Java reference implementation does), because the
    envelope is not protected and the signed headers are: with it on, both are refused as tampered routing; with
    routing_check = false they are accepted, trust following the envelope. Either way the same bytes with MAIL
    FROM eve are refused: the signer is bound to the envelope sender, never to a header."""
    from directmilter.errors import TamperedRouting

    body = world.hisp_a_body()
    body["domains"]["direct.a.test"]["routing_check"] = routing_check
    a = agent_for(load_config(world.write_config(f"routing-{routing_check}", body)))
    b = agent_for(world.hisp_b())
    alice = "alice@direct.a.test"
    from_eve = b.outgoing(envelope(plain_message(sender="eve@direct.b.test", to=alice), BOB, alice)).message
    to_other = b.outgoing(envelope(plain_message(sender=BOB, to="someone@else.test"), BOB, alice)).message
    for message in (from_eve, to_other):
        if routing_check:
            with pytest.raises(NoTrustedRecipients) as caught:
                a.incoming(envelope(message, BOB, alice))
            assert isinstance(caught.value.rejected[alice], TamperedRouting), caught.value.rejected[alice]
        else:
            received = a.incoming(envelope(message, BOB, alice))
            assert received.recipients == (alice,) and received.signers == (world.bob.cert,)
    with pytest.raises(NoTrustedRecipients, match=r"not bound to eve@direct\.b\.test"):
        a.incoming(envelope(from_eve, "eve@direct.b.test", alice))


def test_the_refusal_names_the_first_certificates_fault(world: World, agent_for) -> None:
    """Several candidates, none usable: the reason given is the first one's (here: bound to another address),
    not the last one's (here: expired), unless the message's fetch budget ran out."""
    from directmilter.agent.trust_model import trusted_certificates

    agent = agent_for(world.hisp_a())
    old = dt.datetime(2021, 1, 1, tzinfo=dt.UTC)
    expired = world.pki.leaf("first-fault-expired", world.r1, email=BOB, not_before=old - dt.timedelta(days=9),
                             not_after=old)
    trusted, error = trusted_certificates(agent.context.validator, BOB, [world.bob2.cert, expired.cert],
                                          [world.r1.cert], [])
    assert trusted == [] and error is not None
    assert "is not bound to bob@direct.b.test" in error.reason and "expired" not in error.reason, error.reason
    trusted, error = trusted_certificates(agent.context.validator, BOB, [expired.cert, world.bob2.cert],
                                          [world.r1.cert], [])
    assert error is not None and "expired 2021-01-01" in error.reason, error.reason
