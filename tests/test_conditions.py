"""Every failure condition's default action through real Postfix instances: what the SMTP client is told, and that
nothing is delivered or relayed. (discovery_unavailable: tests/test_discovery.py, with a DNS server that never
answers; quarantine: tests/test_actions.py.)"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import opensslpeer as peer
import pytest
from conftest import World, plain_message
from milterd import Milterd
from mta import Postfix, Sink, SmtpResult, scratch_dir, submit

ALICE, BOB, BOB2, CAROL = "alice@direct.a.test", "bob@direct.b.test", "bob2@direct.b.test", "carol@direct.b.test"
DAVE = "dave@direct.b.test"
LIMIT = 256 * 1024
MILTER = {"internal_hosts": [], "submission_daemons": ["ORIGINATING"]}


@pytest.fixture(scope="module")
def rig(world: World) -> Iterator[dict[str, Any]]:
    """HISP A (submission, relaying to a sink) and HISP B (MX, delivering to maildirs), default actions."""
    limits = {"max_message_size": LIMIT}
    body_a = world.hisp_a_body()
    weak = world.pki.leaf("cond-weak-dave", world.r1, email=DAVE, key="rsa1024")  # trusted, but a 1024-bit key
    body_a["certificates"]["files"].append(str(weak.cert_path))
    with scratch_dir("directmilter-conditions-") as root, Sink(root / "wire") as sink:
        conf_a = world.write_config("cond-a", {**body_a, "milter": MILTER, "limits": limits})
        body_b = world.hisp_b_body()
        # carol accepts only signers certified under a trust framework's policy OID (alice's certificate has none).
        body_b["addresses"][CAROL]["policy"] = {"signers": {"required_policies": ["1.3.6.1.4.1.41179.0.1.2"]}}
        conf_b = world.write_config("cond-b", {**body_b, "milter": MILTER, "limits": limits})
        buggy = [sys.executable, str(Path(__file__).parent / "faulty_milter.py")]
        with Milterd(conf_a, root / "a.log") as milter_a, Milterd(conf_b, root / "b.log") as milter_b, \
                Milterd(conf_a, root / "bug.log", command=buggy) as milter_bug:
            a = Postfix(root=root / "a", name="mx.a.test", mailboxes={ALICE: "alice"},
                        relay={"direct.b.test": f"127.0.0.1:{sink.port}"}, milter=milter_a.postfix_spec)
            bug = Postfix(root=root / "bug", name="mx.a.test", mailboxes={ALICE: "alice"},
                          relay={"direct.b.test": f"127.0.0.1:{sink.port}"}, milter=milter_bug.postfix_spec)
            b = Postfix(root=root / "b", name="mx.b.test", mailboxes={BOB: "bob", BOB2: "bob2", CAROL: "carol"},
                        milter=milter_b.postfix_spec)
            with a, b, bug:
                yield {"a": a, "b": b, "bug": bug, "sink": sink}


def wrapped(sender: str = ALICE, to: str = BOB) -> bytes:
    return b"Content-Type: message/rfc822\r\n\r\n" + plain_message(sender=sender, to=to)


def direct(world: World, *, signer: str = "alice", to: tuple[str, ...] = ("bob",), sender: str = ALICE,
           inner_to: str = BOB, tamper: bool = False) -> bytes:
    """A Direct message made by OpenSSL: signed by ``signer``, encrypted to the certificates of ``to``."""
    signed = peer.sign(wrapped(sender, inner_to), getattr(world, signer))
    if tamper:
        signed = signed.replace(b"Patient summary", b"Patient summarx", 1)
    head = f"From: {sender}\r\nTo: {inner_to}\r\n".encode()
    return head + peer.encrypt(signed, [getattr(world, name).cert_path for name in to])


def big(to: str = BOB) -> bytes:
    return plain_message(to=to, body=b"x" * 76 + b"\r\n") + (b"y" * 76 + b"\r\n") * (LIMIT // 78 + 10)


def at_rcpt(recipient: str) -> Callable[[SmtpResult], tuple[int, str]]:
    return lambda result: result.refused[recipient]


def at_data(result: SmtpResult) -> tuple[int, str]:
    assert result.data is not None, result
    return result.data


Case = tuple[str, str, str, Callable[[World], bytes], Callable[[SmtpResult], tuple[int, str]], int, str, str]
CASES: list[Any] = [
    # condition, HISP, envelope sender -> recipient, message, where refused, code, status, words of the reason
    pytest.param("a", ALICE, CAROL, lambda w: plain_message(to=CAROL), at_rcpt(CAROL), 550, "5.7.1",
                 "no path to a trust anchor", id="untrusted_recipient"),
    pytest.param("a", ALICE, DAVE, lambda w: plain_message(to=DAVE), at_rcpt(DAVE), 550, "5.7.1",
                 "refused by policy: RSA key of 1024 bits, the policy requires at least 2048",
                 id="untrusted_recipient-by-certificate-policy"),
    pytest.param("a", ALICE, "nobody@nowhere.test", lambda w: plain_message(to="nobody@nowhere.test"),
                 at_rcpt("nobody@nowhere.test"), 550, "5.7.1", "no certificate found", id="no_certificate"),
    pytest.param("a", ALICE, BOB, lambda w: big(), at_data, 552, "5.3.4", "larger than the limit",
                 id="message_too_large-outgoing"),
    pytest.param("bug", ALICE, BOB, lambda w: b"X-Inject-Bug: yes\r\n" + plain_message(), at_data, 451, "4.3.0",
                 "internal error", id="internal_error"),
    # A problem of one recipient (its keys, what they open) removes it; with nobody left, for one kind of reason,
    # the message gets that reason's reply: a cryptographic failure is 554 5.7.5 (RFC 3463).
    pytest.param("b", ALICE, BOB, lambda w: direct(w, to=("bob2",)), at_data, 554, "5.7.5",
                 "not encrypted to any of the recipient's certificates", id="decryption_failed"),
    pytest.param("b", ALICE, BOB, lambda w: direct(w, tamper=True), at_data, 554, "5.7.5",
                 "message digest does not match", id="signature_invalid"),
    pytest.param("b", CAROL, BOB, lambda w: direct(w, signer="carol", sender=CAROL), at_data, 550, "5.7.1",
                 "signer", id="untrusted_signer"),
    pytest.param("b", ALICE, CAROL, lambda w: direct(w, to=("carol",), inner_to=CAROL), at_data, 550, "5.7.1",
                 "refused by policy: certificate policies (none)", id="untrusted_signer-by-certificate-policy"),
    pytest.param("b", ALICE, BOB2, lambda w: direct(w, to=("bob", "bob2")), at_data, 550, "5.7.1",
                 "not named in the signed message's To, Cc or Bcc", id="tampered_routing"),
    pytest.param("b", ALICE, BOB, lambda w: big(), at_data, 552, "5.3.4", "larger than the limit",
                 id="message_too_large-incoming"),
]


@pytest.mark.parametrize(("hisp", "sender", "recipient", "build", "where", "code", "status", "reason"), CASES)
def test_each_condition_fails_closed_by_default(world: World, rig: dict[str, Any], hisp: str, sender: str,
                                                recipient: str, build: Callable[[World], bytes],
                                                where: Callable[[SmtpResult], tuple[int, str]], code: int,
                                                status: str, reason: str) -> None:
    postfix: Postfix = rig[hisp]
    port = postfix.smtp_port if hisp == "b" else postfix.submission_port
    before = {name: len(rig["b"].maildir(name)) for name in (BOB, BOB2, CAROL)}
    wire = len(rig["sink"].messages())
    result = submit(port, sender, [recipient], build(world))
    got_code, text = where(result)
    assert (got_code, text.split()[0]) == (code, status), result
    assert reason in text, text
    assert postfix.queue() == []  # refused or deferred back to the client: nothing kept, nothing sent on
    assert {name: len(rig["b"].maildir(name)) for name in (BOB, BOB2, CAROL)} == before
    assert len(rig["sink"].messages()) == wire


def test_discard_drops_the_message_and_tells_nobody(world: World) -> None:
    """on_signature_invalid = discard: the client is told 250 (nothing to retry), bob gets nothing, the log says
    why."""
    with scratch_dir("directmilter-discard-") as root:
        conf = world.write_config("cond-discard", {**world.hisp_b_body(), "milter": MILTER,
                                                   "actions": {"on_signature_invalid": "discard"}})
        with Milterd(conf, root / "milter.log") as milter, \
                Postfix(root=root / "b", name="mx.b.test", mailboxes={BOB: "bob"}, milter=milter.postfix_spec) as b:
            result = submit(b.smtp_port, ALICE, [BOB], direct(world, tamper=True))
            assert result.ok, result
            assert b.queue() == [] and b.maildir(BOB) == []
        log = (root / "milter.log").read_text()
    assert "discarded" in log and "signature_invalid" in log
