"""Every failure condition's default action through real Postfix instances: what the SMTP client is told, and that
nothing is delivered or relayed. (discovery_unavailable: tests/test_discovery.py, with a DNS server that never
answers; quarantine: tests/test_actions.py.)"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import opensslpeer as peer
import pytest
from conftest import World, plain_message
from milterd import Milterd
from mta import Postfix, Sink, SmtpResult, scratch_dir, submit
from pki import Issued

ALICE, BOB, BOB2, CAROL = "alice@direct.a.test", "bob@direct.b.test", "bob2@direct.b.test", "carol@direct.b.test"
DAVE, OLD = "dave@direct.b.test", "old@direct.b.test"
PAST = datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC)
LIMIT = 256 * 1024
MILTER = {"internal_hosts": [], "submission_daemons": ["ORIGINATING"]}


@pytest.fixture(scope="module")
def rig(world: World) -> Iterator[dict[str, Any]]:
    """HISP A (submission, relaying to a sink) and HISP B (MX, delivering to maildirs), default actions."""
    limits = {"max_message_size": LIMIT}
    body_a = world.hisp_a_body()
    weak = world.pki.leaf("cond-weak-dave", world.r1, email=DAVE, key="rsa1024")  # trusted, but a 1024-bit key
    body_a["certificates"]["files"].append(str(weak.cert_path))
    old = world.pki.leaf("cond-old", world.r1, email=OLD, not_before=PAST - datetime.timedelta(days=30),
                         not_after=PAST)  # old's only certificate: expired
    body_a["certificates"]["files"].append(str(old.cert_path))
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
                yield {"a": a, "b": b, "bug": bug, "sink": sink,
                       "logs": {"a": root / "a.log", "b": root / "b.log", "bug": root / "bug.log"}}


def wrapped(sender: str = ALICE, to: str = BOB) -> bytes:
    return b"Content-Type: message/rfc822\r\n\r\n" + plain_message(sender=sender, to=to)


def direct(world: World, *, signer: str | Issued = "alice", to: tuple[str, ...] = ("bob",), sender: str = ALICE,
           inner_to: str = BOB, tamper: bool = False, co_signers: tuple[Issued, ...] = (),
           extra_certs: tuple[Issued, ...] = ()) -> bytes:
    """A Direct message made by OpenSSL: signed by ``signer`` (a World name or a certificate) and ``co_signers``,
    encrypted to the certificates of ``to``."""
    signed = peer.sign(wrapped(sender, inner_to), getattr(world, signer) if isinstance(signer, str) else signer,
                       co_signers=co_signers, extra_certs=extra_certs)
    if tamper:
        signed = signed.replace(b"Patient summary", b"Patient summarx", 1)
    head = f"From: {sender}\r\nTo: {inner_to}\r\n".encode()
    return head + peer.encrypt(signed, [getattr(world, name).cert_path for name in to])


def expired_signer(world: World) -> bytes:
    """Signed by an alice certificate that expired in 2021 (trusted issuer, right address)."""
    old = world.pki.leaf("cond-old-alice", world.r1, email=ALICE, not_before=PAST - datetime.timedelta(days=30),
                         not_after=PAST)
    return direct(world, signer=old)


def expired_intermediate(world: World) -> bytes:
    """Signed by a valid alice certificate whose issuing intermediate (carried in the message) expired in 2021."""
    issuer = world.pki.intermediate("cond-old-ca", world.r1, not_before=PAST - datetime.timedelta(days=400),
                                    not_after=PAST)
    alice = world.pki.leaf("cond-alice-under-old-ca", issuer, email=ALICE,
                           not_before=PAST - datetime.timedelta(days=30))
    return direct(world, signer=alice, extra_certs=(issuer,))


def two_untrusted_signers(world: World) -> bytes:
    """ALG-16: two sound signatures, neither chaining to an anchor bob trusts (R2)."""
    stranger = world.pki.leaf("cond-r2-alice", world.r2, email=ALICE)
    return direct(world, signer=stranger, co_signers=(world.carol,))


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
    pytest.param("a", ALICE, OLD, lambda w: plain_message(to=OLD), at_rcpt(OLD), 550, "5.7.1",
                 "expired 2021-01-01", id="untrusted_recipient-expired", marks=pytest.mark.conformance("AS-4.0-1")),
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
    pytest.param("b", ALICE, BOB, expired_signer, at_data, 550, "5.7.1", "expired 2021-01-01",
                 id="untrusted_signer-expired", marks=pytest.mark.conformance("AS-4.0-1")),
    pytest.param("b", ALICE, BOB, expired_intermediate, at_data, 550, "5.7.1", "expired 2021-01-01",
                 id="untrusted_signer-expired-intermediate", marks=pytest.mark.conformance("AS-4.0-1", "AS-4.2.2-4")),
    pytest.param("b", ALICE, BOB, two_untrusted_signers, at_data, 550, "5.7.1", "signer",
                 id="untrusted_signer-two-untrusted", marks=pytest.mark.conformance("ALG-16")),
    pytest.param("b", ALICE, CAROL, lambda w: direct(w, to=("carol",), inner_to=CAROL), at_data, 550, "5.7.1",
                 "refused by policy: certificate policies (none)", id="untrusted_signer-by-certificate-policy"),
    pytest.param("b", ALICE, BOB2, lambda w: direct(w, to=("bob", "bob2")), at_data, 550, "5.7.1",
                 "not named in the signed message's To, Cc or Bcc", id="tampered_routing"),
    pytest.param("b", ALICE, BOB, lambda w: big(), at_data, 552, "5.3.4", "larger than the limit",
                 id="message_too_large-incoming"),
]


@pytest.mark.conformance("AS-4.3-1")
@pytest.mark.parametrize(("hisp", "sender", "recipient", "build", "where", "code", "status", "reason"), CASES)
def test_each_condition_fails_closed_by_default(world: World, rig: dict[str, Any], hisp: str, sender: str,
                                                recipient: str, build: Callable[[World], bytes],
                                                where: Callable[[SmtpResult], tuple[int, str]], code: int,
                                                status: str, reason: str) -> None:
    postfix: Postfix = rig[hisp]
    port = postfix.smtp_port if hisp == "b" else postfix.submission_port
    before = {name: len(rig["b"].maildir(name)) for name in (BOB, BOB2, CAROL)}
    wire = len(rig["sink"].messages())
    logged = rig["logs"][hisp].read_text()
    result = submit(port, sender, [recipient], build(world))
    got_code, text = where(result)
    assert (got_code, text.split()[0]) == (code, status), result
    assert reason in text, text
    assert postfix.queue() == []  # refused or deferred back to the client: nothing kept, nothing sent on
    assert {name: len(rig["b"].maildir(name)) for name in (BOB, BOB2, CAROL)} == before
    assert len(rig["sink"].messages()) == wire
    # AS 4.3: the failure is logged too, with the address and the same reason the client was told
    new = rig["logs"][hisp].read_text()[len(logged):].replace("\\x27", "'")
    record = [line for line in new.splitlines() if (reason if hisp != "bug" else "internal_error") in line]
    assert record and recipient in record[0], new
    if any(word in reason for word in ("expired", "RSA key", "certificate policies")):  # one certificate's fault
        for told in (text, record[0]):  # which one, exactly, to the client and in the log
            assert all(word in told for word in ("subject CN=", "issuer CN=", "serial ")), told


@pytest.mark.conformance("ALG-16")
def test_one_trusted_signer_among_untrusted_ones_is_enough(world: World, rig: dict[str, Any]) -> None:
    """ALG-16 through Postfix: a stranger (R2) and alice (R1) both sign; bob trusts R1: delivered. (Two untrusted
    signers: the case untrusted_signer-two-untrusted above; alice's signature damaged beside a sound untrusted one:
    tests/test_tamper.py.)"""
    stranger = world.pki.leaf("cond-r2-cosigner", world.r2, email=ALICE)
    before = len(rig["b"].maildir(BOB))
    result = submit(rig["b"].smtp_port, ALICE, [BOB], direct(world, signer=stranger, co_signers=(world.alice,)))
    assert result.ok, result
    messages = rig["b"].wait_for_delivery(BOB, count=before + 1)
    assert len(messages) == before + 1 and all(b"pkcs7" not in m for m in messages)


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
