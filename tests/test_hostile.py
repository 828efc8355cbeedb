"""Hostile input reachable from the network, and the limits that bound it.

Every case ends in a clean refusal (one of our errors, which the milter maps to a 5.x.x reply) within bounded
time: MIME bombs (nesting 1,000 deep, 100,000 header fields, unterminated multiparts), truncated base64, CMS with
wrong lengths or unknown algorithms, huge counts of recipients and certificates, and random bytes (hypothesis).
The long run is ``HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/test_hostile.py`` (100,000 examples).
"""

from __future__ import annotations

import base64
import contextlib
import re
import time
from collections.abc import Callable, Iterator

import opensslpeer as peer
import pytest
from asn1crypto import cms as asn1_cms
from conftest import World, envelope, plain_message
from hypothesis import given
from hypothesis import strategies as st

from directmilter import cms
from directmilter.agent import Agent
from directmilter.cms.mime import fold_base64, multipart_spans, parse_entity
from directmilter.config import load_config
from directmilter.errors import DirectMilterError, MalformedMessage, MessageTooLarge, NoTrustedRecipients
from directmilter.replies import reply_for

ALICE, BOB = "alice@direct.a.test", "bob@direct.b.test"
SMIME_HEAD = (b"From: alice@direct.a.test\r\nTo: bob@direct.b.test\r\nMIME-Version: 1.0\r\n"
              b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\n")


@pytest.fixture(scope="module")
def agents(world: World) -> Iterator[tuple[Agent, Agent]]:
    limits = {"max_message_size": 1 << 20, "max_headers": 200, "max_mime_depth": 20, "max_certificates": 10}
    a = Agent(load_config(world.write_config("hostile-a", {**world.hisp_a_body(), "limits": limits})))
    b = Agent(load_config(world.write_config("hostile-b", {**world.hisp_b_body(), "limits": limits})))
    yield a, b
    a.close()
    b.close()


def refused_quickly(action: Callable[[], object], seconds: float = 5.0) -> DirectMilterError:
    started = time.monotonic()
    with pytest.raises(DirectMilterError) as caught:
        action()
    assert time.monotonic() - started < seconds
    assert not reply_for(caught.value).temporary, caught.value.reason  # a decision, not a deferral
    return caught.value


def nested(depth: int) -> bytes:
    body = b"Content-Type: text/plain\r\n\r\ncore\r\n"
    for level in range(depth):
        boundary = f"b{level}".encode()
        body = (b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n--" + boundary + b"\r\n" + body
                + b"\r\n--" + boundary + b"--\r\n")
    return b"From: alice@direct.a.test\r\nTo: bob@direct.b.test\r\nMIME-Version: 1.0\r\n" + body


def test_oversized_message_is_refused_before_any_work(agents: tuple[Agent, Agent]) -> None:
    a, b = agents
    big = plain_message(body=b"x" * (2 << 20))
    for call in (a.outgoing, b.incoming):
        error = refused_quickly(lambda: call(envelope(big, ALICE, BOB)))  # noqa: B023
        assert isinstance(error, MessageTooLarge) and "max_message_size" in error.reason
        assert (reply_for(error).code, reply_for(error).status) == ("552", "5.3.4")


def test_mime_nested_1000_deep_is_refused(agents: tuple[Agent, Agent]) -> None:
    error = refused_quickly(lambda: agents[0].outgoing(envelope(nested(1000), ALICE, BOB)))
    assert isinstance(error, MalformedMessage) and "deeper than 20 levels" in error.reason
    assert agents[0].outgoing(envelope(nested(5), ALICE, BOB)).recipients == (BOB,)  # real nesting is fine


def test_giant_header_blocks_are_refused(agents: tuple[Agent, Agent]) -> None:
    many = b"".join(b"X-Filler-%d: y\r\n" % i for i in range(100_000)) + plain_message()
    assert isinstance(refused_quickly(lambda: agents[0].outgoing(envelope(many[: 1 << 20], ALICE, BOB))),
                      MalformedMessage)
    one_huge = b"X-Huge: " + b"a" * 900_000 + b"\r\n" + plain_message()
    refused_or_fine(lambda: agents[0].outgoing(envelope(one_huge, ALICE, BOB)))


def test_hostile_fields_read_before_the_signature_cost_little(world: World, agents: tuple[Agent, Agent]) -> None:
    """Issue 19: the decrypted multipart/signed carries a Content-Type with 400 KB of ``;`` in quotes (the standard
    library's parameter splitter takes the square of that: minutes of a crypto worker), and the outer From holds
    50,000 nested comments (its address reader overflowed the stack, which reached the sender as a 451). Neither
    is covered by the signature: the message is opened and delivered, with no error and no deferral."""
    signed = peer.sign(b"Content-Type: text/plain\r\n\r\nstill readable\r\n", world.alice)
    junk = b'x-junk="' + b";" * 400_000 + b'"; '
    signed = signed.replace(b"Content-Type: multipart/signed; ", b"Content-Type: multipart/signed; " + junk, 1)
    assert junk in signed
    wire = (b"From: " + b"(" * 50_000 + b"x" + b")" * 50_000 + b" alice@direct.a.test\r\nTo: bob@direct.b.test\r\n"
            + peer.encrypt(signed, [world.bob.cert_path]))
    received = agents[1].incoming(envelope(wire, ALICE, BOB))
    assert received.recipients == (BOB,) and b"still readable" in bytes(received.message)


def test_recipient_infos_naming_our_key_cost_a_bounded_number_of_decryptions(
        world: World, agents: tuple[Agent, Agent], secured: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19: 2,000 RecipientInfos that all name bob's certificate, each with a wrong key: every one cost an RSA
    decryption. At most MAX_KEY_ATTEMPTS are tried; the message is refused (5.x), saying why."""
    from directmilter.cms import enveloped as enveloped_module

    attempts: list[int] = []
    real_unwrap = enveloped_module._unwrap_key
    monkeypatch.setattr(enveloped_module, "_unwrap_key", lambda *a: attempts.append(1) or real_unwrap(*a))
    info = asn1_cms.ContentInfo.load(der_of(secured))
    genuine = info["content"]["recipient_infos"][0]
    forged = asn1_cms.RecipientInfo.load(genuine.dump())
    forged.chosen["encrypted_key"] = asn1_cms.OctetString(bytes(len(genuine.chosen["encrypted_key"].native)))
    info["content"]["recipient_infos"] = [forged] * 2000
    error = refused_quickly(lambda: agents[1].incoming(envelope(SMIME_HEAD + fold_base64(info.dump(force=True)),
                                                                 ALICE, BOB)))
    assert len(attempts) == enveloped_module.MAX_KEY_ATTEMPTS, len(attempts)
    assert "1996 more recipient infos naming the same keys not tried" in error.reason, error.reason


def refused_or_fine(action: Callable[[], object]) -> None:
    """Either processed or refused with one of our errors, in bounded time; never another exception."""
    started = time.monotonic()
    with contextlib.suppress(DirectMilterError):
        action()
    assert time.monotonic() - started < 10


@pytest.fixture(scope="module")
def secured(world: World, agents: tuple[Agent, Agent]) -> bytes:
    return agents[0].outgoing(envelope(plain_message(), ALICE, BOB)).message


def der_of(message: bytes) -> bytes:
    return base64.b64decode(message.split(b"\r\n\r\n", 1)[1])


def test_truncated_base64_and_wrong_lengths_are_refused(agents: tuple[Agent, Agent], secured: bytes) -> None:
    b = agents[1]
    head, body = secured.split(b"\r\n\r\n", 1)
    for cut in (len(body) // 2, len(body) - 7, 10):
        refused_quickly(lambda: b.incoming(envelope(head + b"\r\n\r\n" + body[:cut], ALICE, BOB)))  # noqa: B023
    der = bytearray(der_of(secured))
    for offset in (1, 2, 5, 20, 40):  # length octets of the outer and inner structures
        for value in (0x00, 0x7F, 0xFF):
            bent = bytearray(der)
            bent[offset] = value
            refused_or_fine(lambda: b.incoming(envelope(SMIME_HEAD + fold_base64(bytes(bent)), ALICE, BOB)))  # noqa: B023


def test_unknown_algorithms_and_huge_counts_are_refused(world: World, agents: tuple[Agent, Agent],
                                                          secured: bytes) -> None:
    b = agents[1]
    info = asn1_cms.ContentInfo.load(der_of(secured))
    enveloped = info["content"]
    enveloped["encrypted_content_info"]["content_encryption_algorithm"]["algorithm"] = "1.2.3.4.5.6.7"
    refused_quickly(lambda: b.incoming(envelope(SMIME_HEAD + fold_base64(info.dump(force=True)), ALICE, BOB)))
    # 5,000 recipient infos: bounded work (each one is looked at once), refused or opened
    info = asn1_cms.ContentInfo.load(der_of(secured))
    recipients = info["content"]["recipient_infos"]
    decoy = recipients[0]
    info["content"]["recipient_infos"] = [decoy] * 5000
    refused_or_fine(lambda: b.incoming(envelope(SMIME_HEAD + fold_base64(info.dump(force=True)), ALICE, BOB)))
    # a signature carrying more certificates than [limits] max_certificates
    extra = [world.pki.leaf(f"extra-{i}", world.r1, email=f"x{i}@direct.a.test") for i in range(12)]
    signed = peer.sign(b"Content-Type: text/plain\r\n\r\nhi\r\n", world.alice, extra_certs=[e.cert_path for e in extra])
    wire = b"From: alice@direct.a.test\r\nTo: bob@direct.b.test\r\n" + peer.encrypt(signed, [world.bob.cert_path])
    error = refused_quickly(lambda: b.incoming(envelope(wire, ALICE, BOB)))
    assert isinstance(error, NoTrustedRecipients) and "max_certificates" in error.reason


@given(st.binary(max_size=4096))
def test_random_bytes_as_a_secured_message(agents: tuple[Agent, Agent], data: bytes) -> None:
    refused_or_fine(lambda: agents[1].incoming(envelope(SMIME_HEAD + data, ALICE, BOB)))
    refused_or_fine(lambda: agents[1].incoming(envelope(data, ALICE, BOB)))


@given(st.lists(st.sampled_from([b"--b\r\n", b"--b--\r\n", b"\r\n", b"Content-Type: multipart/mixed; boundary=b\r\n",
                                 b"Content-Type: message/rfc822\r\n", b"X: y\r\n", b"text\r\n", b" folded\r\n",
                                 b"=?utf-8?q?x?=\r\n", b"\x00", b"\xff\xfe"]), max_size=300))
def test_random_mime_structure(agents: tuple[Agent, Agent], pieces: list[bytes]) -> None:
    message = b"From: alice@direct.a.test\r\nTo: bob@direct.b.test\r\n" + b"".join(pieces)
    refused_or_fine(lambda: agents[0].outgoing(envelope(message, ALICE, BOB)))
    refused_or_fine(lambda: cms.parse_message(message))


def regex_spans(raw: bytes, boundary: bytes) -> tuple[list[tuple[int, int]], bool]:
    """RFC 2046 5.1.1 delimiters found the obvious way, to check the fast finder against."""
    start: int | None = None
    spans: list[tuple[int, int]] = []
    for match in re.finditer(rb"--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r\n|$)", raw):
        at = match.start()
        if at != 0 and (raw[at - 2 : at] != b"\r\n" or (start is not None and at - 2 < start)):
            continue
        if start is not None:
            spans.append((start, at - 2))
        if match.group(1):
            return spans, True
        start = match.end()
    if start is not None:
        spans.append((start, len(raw)))
    return spans, False


@given(st.lists(st.sampled_from([b"--b", b"--", b"-", b"b", b"\r\n", b"\r", b"\n", b" ", b"\t", b"x"]), max_size=60))
def test_multipart_delimiters_are_found_exactly(pieces: list[bytes]) -> None:
    body = b"".join(pieces)
    entity = parse_entity(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + body)
    spans, closed = multipart_spans(entity)
    expected, expected_closed = regex_spans(body, b"b")
    offset = entity.body_start
    assert ([(a - offset, b - offset) for a, b in spans], closed) == (expected, expected_closed)


@given(st.data())
def test_mutated_cms(agents: tuple[Agent, Agent], secured: bytes, data: st.DataObject) -> None:
    der = bytearray(der_of(secured))
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(der) - 1))
        der[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(der)))
    refused_or_fine(lambda: agents[1].incoming(envelope(SMIME_HEAD + fold_base64(bytes(der[:cut])), ALICE, BOB)))


@pytest.mark.parametrize("what", ["size", "headers"])
def test_milter_refuses_over_the_limits_through_postfix(world: World, what: str) -> None:
    """Through a real Postfix: a body past max_message_size is counted, not kept, and refused at end of data
    with 552 5.3.4; too many header fields with 554 5.6.0. Nothing reaches the wire."""
    from milterd import Milterd
    from mta import Postfix, Sink, scratch_dir, submit

    with scratch_dir("directmilter-limits-") as root, Sink(root / "wire") as sink:
        conf = world.write_config(f"limits-{what}", {
            **world.hisp_a_body(), "limits": {"max_message_size": 100_000, "max_headers": 50},
            "milter": {"internal_hosts": [], "submission_daemons": ["ORIGINATING"], "workers": 0}})
        milter = Milterd(conf, root / "milter.log")
        a = Postfix(root=root / "a", name="mx.a.test", mailboxes={ALICE: "alice"},
                    relay={"direct.b.test": f"127.0.0.1:{sink.port}"}, milter=milter.postfix_spec)
        message = (plain_message(body=b"y" * 200_000) if what == "size"
                   else b"".join(b"X-Many-%d: z\r\n" % i for i in range(80)) + plain_message())
        with milter, a:
            result = submit(a.submission_port, ALICE, [BOB], message)
            assert submit(a.submission_port, ALICE, [BOB], plain_message()).ok  # the milter is still fine
            sink.wait(1)
            time.sleep(0.5)
            assert len(sink.messages()) == 1
    assert result.data is not None
    expected = ("552", "5.3.4") if what == "size" else ("554", "5.6.0")
    assert (str(result.data[0]), result.data[1][:5]) == expected, result.data
