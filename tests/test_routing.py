"""Routing-tamper detection (issue 9; the Java reference implementation's default): the envelope is not
protected, the wrapped headers are. A RCPT TO the signed message does not name, or a MAIL FROM that is not its
From or Sender, is refused as tampered; the check can be switched off per hosted domain or address."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import World, envelope, plain_message

from directmilter.agent import Agent
from directmilter.config import load_config
from directmilter.errors import NoTrustedRecipients, TamperedRouting
from directmilter.replies import reply_for

ALICE, BOB, BOB2 = "alice@direct.a.test", "bob@direct.b.test", "bob2@direct.b.test"


def secured(world: World, message: bytes, sender: str, *recipients: str) -> bytes:
    agent = Agent(world.hisp_a())
    try:
        return agent.outgoing(envelope(message, sender, *recipients)).message
    finally:
        agent.close()


def receiver(world: World, name: str, **domain: Any) -> Agent:
    body = world.hisp_b_body()
    body["domains"]["direct.b.test"].update(domain)
    return Agent(load_config(world.write_config(name, body)))


def test_recipient_added_in_transit_is_refused(world: World) -> None:
    """Sent to bob (To: bob); in transit bob2 is added to the envelope: bob gets it, bob2 is refused as tampered."""
    wire = secured(world, plain_message(to=BOB), ALICE, BOB, BOB2)  # encrypted to both, but only bob is named
    agent = receiver(world, "routing-on")
    try:
        result = agent.incoming(envelope(wire, ALICE, BOB, BOB2))
    finally:
        agent.close()
    assert result.recipients == (BOB,)
    refused = result.rejected[BOB2]
    assert isinstance(refused, TamperedRouting) and "not named in the signed message" in refused.reason
    assert (reply_for(refused).code, reply_for(refused).status) == ("550", "5.7.1")


def test_a_recipient_refused_first_does_not_stop_the_others(world: World) -> None:
    """Each recipient is decided on its own, in envelope order: one refused before bob (not encrypted to it, or not
    named in the signed message) leaves bob's copy delivered."""
    agent = receiver(world, "routing-order")
    try:
        only_bob = secured(world, plain_message(to=BOB), ALICE, BOB)
        result = agent.incoming(envelope(only_bob, ALICE, BOB2, BOB))
        assert result.recipients == (BOB,) and "not encrypted to" in result.rejected[BOB2].reason
        both = secured(world, plain_message(to=BOB), ALICE, BOB, BOB2)  # encrypted to both, only bob named
        result = agent.incoming(envelope(both, ALICE, BOB2, BOB))
        assert result.recipients == (BOB,) and isinstance(result.rejected[BOB2], TamperedRouting)
    finally:
        agent.close()


def test_sender_changed_in_transit_is_refused(world: World) -> None:
    """Signed with the organisation's certificate (bound to the whole domain, so a changed MAIL FROM in that domain
    still matches the signer): only the protected From/Sender shows the change."""
    wire = secured(world, plain_message(to=BOB), "clinic@direct.a.test", BOB)
    agent = receiver(world, "routing-sender")
    try:
        with pytest.raises(NoTrustedRecipients, match="is not the signed message's From"):
            agent.incoming(envelope(wire, "mallory@direct.a.test", BOB))
    finally:
        agent.close()


def test_cc_passes_and_a_sender_header_does_not_stand_for_from(world: World) -> None:
    """Cc recipients are named; a Sender field naming MAIL FROM does not let the delivered From show someone else
    (alice could otherwise sign mail that shows any author)."""
    message = plain_message(to=BOB, extra=f"Cc: {BOB2}\r\nSender: {ALICE}\r\n".encode())
    agent = receiver(world, "routing-cc")
    try:
        assert agent.incoming(envelope(secured(world, message, ALICE, BOB, BOB2), ALICE, BOB, BOB2)).recipients == (
            BOB, BOB2)
        forged = message.replace(f"From: {ALICE}".encode(), b"From: Dr Who <chief@direct.a.test>")
        with pytest.raises(NoTrustedRecipients, match="is not the signed message's From"):
            agent.incoming(envelope(secured(world, forged, ALICE, BOB, BOB2), ALICE, BOB, BOB2))
    finally:
        agent.close()


def test_check_can_be_switched_off_per_domain(world: World) -> None:
    wire = secured(world, plain_message(to=BOB), ALICE, BOB, BOB2)
    agent = receiver(world, "routing-off", routing_check=False)
    try:
        assert agent.incoming(envelope(wire, ALICE, BOB, BOB2)).recipients == (BOB, BOB2)
    finally:
        agent.close()


def test_single_use_certificates_each_do_their_own_job(world: World) -> None:
    """An address with a signing-only and an encryption-only certificate: only the signing one signs (issue 9;
    recipients' signing-only certificates are never encrypted to: tests/test_discovery.py)."""
    import opensslpeer as peer

    from directmilter.config import load_config as load

    signing = world.pki.leaf("dave-sign", world.r1, email="dave@direct.a.test", key_usage=["digitalSignature"])
    sealing = world.pki.leaf("dave-seal", world.r1, email="dave@direct.a.test", key_usage=["keyEncipherment"])
    body = world.hisp_a_body()
    body["addresses"]["dave@direct.a.test"] = {"keys": [
        {"cert": str(sealing.cert_path), "key": str(sealing.key_path)},
        {"cert": str(signing.cert_path), "key": str(signing.key_path)}]}
    agent = Agent(load(world.write_config("single-use", body)))
    try:
        wire = agent.outgoing(envelope(plain_message(sender="dave@direct.a.test", to=BOB), "dave@direct.a.test",
                                       BOB)).message
    finally:
        agent.close()
    signature = peer.cmsprint(peer.decrypt(wire, world.bob))
    assert signature.count("signerInfos:") == 1 and signature.count("d.issuerAndSerialNumber:") == 1
    assert f"{signing.cert.serial_number:X}"[-12:] in signature.replace(":", "").upper()
    assert f"{sealing.cert.serial_number:X}"[-12:] not in signature.replace(":", "").upper().split("SIGNERINFOS")[1]


def test_null_mail_from_cannot_show_another_author(world: World) -> None:
    """A null MAIL FROM (legacy notifications): the signer is bound to the outer From, alice. The wrapped message
    she signed must show her as its From too; one showing someone else is refused, whatever the routing check."""
    import opensslpeer as peer

    def wire(inner_from: str) -> bytes:
        inner = plain_message(to=BOB).replace(f"From: {ALICE}".encode(), f"From: {inner_from}".encode())
        signed = peer.sign(b"Content-Type: message/rfc822\r\n\r\n" + inner, world.alice)
        return (f"From: {ALICE}\r\nTo: {BOB}\r\nMessage-ID: <null-1@direct.a.test>\r\n".encode()
                + peer.encrypt(signed, [world.bob.cert_path]))

    agent = receiver(world, "routing-null", routing_check=False)
    try:
        assert agent.incoming(envelope(wire(ALICE), "", BOB)).recipients == (BOB,)
        with pytest.raises(NoTrustedRecipients, match=r"null MAIL FROM, and the delivered From "
                                                      r"\(chief@direct\.a\.test\) is not the signer's address"):
            agent.incoming(envelope(wire("chief@direct.a.test"), "", BOB))
    finally:
        agent.close()


def test_an_envelope_that_opens_to_different_content_per_recipient_delivers_one_body(world: World) -> None:
    """One SMTP transaction delivers one body. Should the recipients' keys open different contents (both sound,
    both signed), the first recipient's is delivered, to every recipient whose keys open the same, and each one
    whose content differs is refused, wherever it stands in the envelope. Such an envelope cannot be made without
    breaking the cipher, so two openings of real messages are joined by hand here."""
    import opensslpeer as peer

    from directmilter.agent.crypto import Opened, open_message
    from directmilter.agent.incoming import _decide
    from directmilter.errors import CMSError

    carol = "carol@direct.b.test"
    everyone = f"{BOB}, {BOB2}, {carol}"

    def made(body: bytes, *to: Any) -> bytes:
        inner = b"Content-Type: message/rfc822\r\n\r\n" + plain_message(to=everyone, body=body)
        return f"From: {ALICE}\r\n".encode() + peer.encrypt(peer.sign(inner, world.alice), [c.cert_path for c in to])

    agent = receiver(world, "routing-split")
    try:
        config = agent.context.config
        first = open_message(config, made(b"One summary.\r\n", world.bob, world.bob2), [BOB, BOB2])
        second = open_message(config, made(b"Another summary.\r\n", world.carol), [carol])
        contents = (first.contents[0], second.contents[0])
        opened = Opened(ALICE, contents, {BOB: 0, BOB2: 0, carol: 1})
        for order, delivered, content in (((BOB, carol, BOB2), (BOB, BOB2), 0), ((carol, BOB, BOB2), (carol,), 1)):
            result = _decide(agent.context, envelope(b"", ALICE, *order), opened, None, True, None)
            assert result.recipients == delivered and result.message is contents[content].message, order
            for refused in set(order) - set(delivered):
                assert isinstance(result.rejected[refused], CMSError)
                assert "opens to different content" in result.rejected[refused].reason
    finally:
        agent.close()

