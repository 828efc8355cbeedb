"""Revocation over real HTTP: CRLs from distribution points, OCSP from an OpenSSL responder, and the policies.

Leaves are issued by an intermediate I under R1 whose AIA, CRL distribution point and OCSP URL point at loopback
servers. The agent is HISP A sending to each of them, or HISP B receiving what they signed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import opensslpeer as peer
import pytest
from conftest import World, envelope, plain_message
from httpserver import HttpServer
from mta import scratch_dir
from revocation import OcspResponder, make_crl

from directmilter.agent import Agent
from directmilter.config import load_config
from directmilter.errors import CertificateRevoked, NoTrustedRecipients, RevocationUnavailable

ALICE = "alice@direct.a.test"


@pytest.fixture(scope="module")
def rv(world: World) -> Iterator[dict[str, Any]]:
    with scratch_dir("directmilter-rv-") as root, HttpServer() as http:
        inter = world.pki.intermediate("RV-I", world.r1)
        http.set("/I.cer", inter.der())
        ocsp = OcspResponder(root / "ocsp", inter)

        def leaf(name: str, *, crl: bool | str = False, with_ocsp: bool = False) -> Any:
            crl_path = crl if isinstance(crl, str) else "/I.crl"
            issued = world.pki.leaf(f"rv-{name}", inter, email=f"{name}@direct.b.test",
                                    aia_ca_issuers=http.url("/I.cer"),
                                    crl_url=http.url(crl_path) if crl else None,
                                    ocsp_url=ocsp.url if with_ocsp else None)
            if with_ocsp:
                ocsp.set_good(issued)
            return issued

        leaves = {
            "crlrevoked": leaf("crlrevoked", crl=True),
            "crlgood1": leaf("crlgood1", crl=True),
            "crlgood2": leaf("crlgood2", crl=True),
            "crlgood3": leaf("crlgood3", crl=True),
            "ocsprevoked": leaf("ocsprevoked", with_ocsp=True),
            "ocspgood": leaf("ocspgood", with_ocsp=True),
            "ocspdown": leaf("ocspdown", with_ocsp=True),
            "ocspcached": leaf("ocspcached", with_ocsp=True),
            "crlbig": leaf("crlbig", crl="/big.crl"),
            "crlunsized": leaf("crlunsized", crl="/unsized.crl"),
            "crlpoisoned": leaf("crlpoisoned", crl="/poisoned.crl"),
        }
        ocsp.revoke(leaves["ocsprevoked"])
        http.set("/I.crl", make_crl(inter, [(leaves["crlrevoked"].cert,
                                             dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))]),
                 "application/pkix-crl")
        padding = b"\0" * 4096  # past the 2 KiB download limit of the size tests; the CRL itself is fine
        for path in ("/big.crl", "/unsized.crl"):
            http.set(path, make_crl(inter, []) + padding, "application/pkix-crl")
        http.unsized("/unsized.crl")
        with ocsp:
            yield {"http": http, "ocsp": ocsp, "leaves": leaves, "inter": inter}


def agent_for(world: World, rv: dict[str, Any], name: str, **trust: Any) -> Agent:
    body = world.hisp_a_body()
    body["certificates"] = {"files": [str(leaf.cert_path) for leaf in rv["leaves"].values()]}
    body["trust"] = trust
    return Agent(load_config(world.write_config(name, body)))


def send(agent: Agent, rcpt: str) -> Any:
    try:
        return agent.outgoing(envelope(plain_message(to=rcpt), ALICE, rcpt))
    finally:
        agent.close()


@pytest.mark.conformance("AS-4.0-3", "AS-4.0-6")
def test_recipient_revoked_on_a_crl_is_refused(world: World, rv: dict[str, Any]) -> None:
    with pytest.raises(NoTrustedRecipients, match="revoked") as caught:
        send(agent_for(world, rv, "rv-crl"), "crlrevoked@direct.b.test")
    assert isinstance(caught.value.rejected["crlrevoked@direct.b.test"], CertificateRevoked)
    assert rv["http"].count("/I.crl") >= 1


@pytest.mark.conformance("AS-4.0-7")
def test_crl_is_fetched_once_and_kept_until_next_update(world: World, rv: dict[str, Any]) -> None:
    agent = agent_for(world, rv, "rv-crl-cache")
    try:
        before = rv["http"].count("/I.crl")
        agent.outgoing(envelope(plain_message(), ALICE, "crlgood1@direct.b.test"))
        agent.outgoing(envelope(plain_message(), ALICE, "crlgood2@direct.b.test"))
        assert rv["http"].count("/I.crl") == before + 1
        rv["http"].status("/I.crl", 503)  # the publisher goes down: the cached CRL is still current
        try:
            result = agent.outgoing(envelope(plain_message(), ALICE, "crlgood3@direct.b.test"))
        finally:
            rv["http"].status("/I.crl", None)
        assert result.recipients == ("crlgood3@direct.b.test",)
    finally:
        agent.close()


def test_a_forged_crl_is_never_kept(world: World, rv: dict[str, Any]) -> None:
    """Issue 19: CRLs were cached by URL before they were validated. A forged CRL (the issuer's name, another
    key, nextUpdate a month away) on the plain HTTP fetch defers the message under hard-fail, as it should; once
    the genuine CRL is back the next message is decided on it, not on the forgery kept for a month."""
    from dataclasses import replace

    from cryptography.hazmat.primitives.asymmetric import rsa

    rcpt = "crlpoisoned@direct.b.test"
    impostor = replace(rv["inter"], key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    month = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    rv["http"].set("/poisoned.crl", make_crl(impostor, [], next_update=month), "application/pkix-crl")
    agent = agent_for(world, rv, "rv-poisoned", revocation="hard-fail")
    try:
        with pytest.raises(RevocationUnavailable):
            agent.outgoing(envelope(plain_message(to=rcpt), ALICE, rcpt))
        rv["http"].set("/poisoned.crl", make_crl(rv["inter"], []), "application/pkix-crl")
        agent.context.validator.clear_cache()  # a real validation, not the result cache
        before = rv["http"].count("/poisoned.crl")
        assert agent.outgoing(envelope(plain_message(to=rcpt), ALICE, rcpt)).recipients == (rcpt,)
        assert rv["http"].count("/poisoned.crl") == before + 1  # fetched again: the forgery was not kept
        agent.context.validator.clear_cache()
        assert agent.outgoing(envelope(plain_message(to=rcpt), ALICE, rcpt)).recipients == (rcpt,)
        assert rv["http"].count("/poisoned.crl") == before + 1  # the genuine one, validated, is kept
    finally:
        agent.close()


@pytest.mark.conformance("AS-4.0-7")
def test_ocsp_answer_is_reused_while_current(world: World, rv: dict[str, Any]) -> None:
    """A second validation of the same certificate asks nobody while the first OCSP answer is current."""
    agent = agent_for(world, rv, "rv-ocsp-cache", revocation="hard-fail")
    try:
        rcpt = "ocspcached@direct.b.test"
        before = rv["ocsp"].requests
        agent.outgoing(envelope(plain_message(to=rcpt), ALICE, rcpt))
        assert rv["ocsp"].requests == before + 1
        agent.context.validator.clear_cache()  # past the per-minute result cache: a real second validation
        rv["ocsp"].stop()
        try:
            assert agent.outgoing(envelope(plain_message(to=rcpt), ALICE, rcpt)).recipients == (rcpt,)
        finally:
            rv["ocsp"].start()
        assert rv["ocsp"].requests == before + 1
    finally:
        agent.close()


@pytest.mark.parametrize("path", ["/big.crl", "/unsized.crl"], ids=["content-length", "until-close"])
def test_oversized_crl_is_a_failed_fetch(world: World, rv: dict[str, Any], path: str) -> None:
    """A CRL past ``max_download`` is never read whole: hard-fail defers (status unknown), soft-fail passes."""
    rcpt = "crlbig@direct.b.test" if path == "/big.crl" else "crlunsized@direct.b.test"
    with pytest.raises(RevocationUnavailable, match="could not be determined"):
        send(agent_for(world, rv, "rv-big-hard", revocation="hard-fail", max_download=2048), rcpt)
    assert rv["http"].count(path) >= 1
    assert send(agent_for(world, rv, "rv-big-soft", max_download=2048), rcpt).recipients == (rcpt,)
    assert send(agent_for(world, rv, "rv-big-ok", revocation="hard-fail"), rcpt).recipients == (rcpt,)


@pytest.mark.conformance("AS-4.0-3", "AS-4.0-6")
def test_recipient_revoked_by_ocsp_is_refused_and_good_one_accepted(world: World, rv: dict[str, Any]) -> None:
    with pytest.raises(NoTrustedRecipients, match="revoked"):
        send(agent_for(world, rv, "rv-ocsp"), "ocsprevoked@direct.b.test")
    asked = rv["ocsp"].requests
    assert send(agent_for(world, rv, "rv-ocsp-good"), "ocspgood@direct.b.test").recipients
    assert rv["ocsp"].requests > asked


@pytest.mark.conformance("AS-4.0-6")
def test_ocsp_down_soft_fail_accepts_and_hard_fail_defers(world: World, rv: dict[str, Any]) -> None:
    rv["ocsp"].stop()
    try:
        assert send(agent_for(world, rv, "rv-soft", revocation="soft-fail"), "ocspdown@direct.b.test").recipients
        with pytest.raises(RevocationUnavailable, match="could not be determined"):
            send(agent_for(world, rv, "rv-hard", revocation="hard-fail"), "ocspdown@direct.b.test")
    finally:
        rv["ocsp"].start()


@pytest.mark.conformance("AS-4.0-3")
def test_signer_revoked_by_ocsp_is_refused_on_receipt(world: World, rv: dict[str, Any]) -> None:
    signer = rv["leaves"]["ocsprevoked"]
    signed = peer.sign(b"Content-Type: text/plain\r\n\r\nhello\r\n", signer)
    message = b"From: ocsprevoked@direct.b.test\r\n" + peer.encrypt(signed, [world.alice.cert_path])
    body = world.hisp_a_body()
    agent = Agent(load_config(world.write_config("rv-in", body)))
    try:
        with pytest.raises(NoTrustedRecipients, match="revoked"):
            agent.incoming(envelope(message, "ocsprevoked@direct.b.test", ALICE))
    finally:
        agent.close()


def test_through_postfix_revoked_refused_and_responder_down_by_policy(world: World, rv: dict[str, Any]) -> None:
    """A revoked recipient gets 550 at RCPT; with the OCSP responder down, hard-fail defers and soft-fail passes."""
    from milterd import Milterd
    from mta import Postfix, Sink, submit

    with scratch_dir("directmilter-rv-mta-") as root, Sink(root / "wire") as sink:
        results = {}
        for policy in ("hard-fail", "soft-fail"):
            body = world.hisp_a_body()
            body["certificates"] = {"files": [str(leaf.cert_path) for leaf in rv["leaves"].values()]}
            body["trust"] = {"revocation": policy}
            body["milter"] = {"internal_hosts": [], "submission_daemons": ["ORIGINATING"]}
            log = root / f"milter-{policy}.log"
            with Milterd(world.write_config(f"rv-milter-{policy}", body), log) as milter, \
                    Postfix(root=root / policy, name="mx.a.test", relay={"direct.b.test": f"127.0.0.1:{sink.port}"},
                            milter=milter.postfix_spec) as a:
                revoked = submit(a.submission_port, ALICE, ["crlrevoked@direct.b.test"], plain_message())
                rv["ocsp"].stop()
                try:
                    down = submit(a.submission_port, ALICE, ["ocspdown@direct.b.test"], plain_message())
                finally:
                    rv["ocsp"].start()
                if down.ok:
                    sink.wait(1)  # delivered (secured) before this instance stops
                results[policy] = (revoked, down, log.read_text())
        for revoked, _, _ in results.values():
            code, text = revoked.refused["crlrevoked@direct.b.test"]
            assert code == 550 and "5.7.1" in text and "revoked" in text
        hard_down, soft_down = results["hard-fail"][1], results["soft-fail"][1]
        assert hard_down.refused["ocspdown@direct.b.test"][0] == 451
        assert soft_down.ok, soft_down
        assert "revocation_status_undetermined" in results["soft-fail"][2]
        [wire] = sink.messages()
        assert wire.rcpts == ["ocspdown@direct.b.test"] and b"application/pkcs7-mime" in wire.data


@pytest.mark.conformance("AS-4.0-6")
def test_revocation_status_is_good_only_with_evidence(world: World, rv: dict[str, Any]) -> None:
    """A path is "good" only when its certificates were checked; no source or a soft failure is "undetermined"."""
    agent = agent_for(world, rv, "rv-status")
    validator, inter = agent.context.validator, rv["inter"].cert
    try:
        good = rv["leaves"]["ocspgood"].cert
        assert validator.validate(good, [inter], []).revocation_status == "good"
        # below R1 the intermediate names no CRL or OCSP source, so the whole path is not known to be good
        assert validator.validate(good, [world.r1.cert], [inter]).revocation_status == "undetermined"
        assert validator.validate(world.bob.cert, [world.r1.cert], []).revocation_status == "undetermined"
        rv["ocsp"].stop()
        try:
            down = validator.validate(rv["leaves"]["ocspdown"].cert, [world.r1.cert], [inter])
        finally:
            rv["ocsp"].start()
        assert down.revocation_status == "undetermined" and down.soft_failures
    finally:
        agent.close()


@pytest.mark.conformance("AS-4.2.2-4")
def test_through_postfix_the_signers_whole_path_is_verified(world: World, rv: dict[str, Any]) -> None:
    """At A's MX, through Postfix: a signer under R1 -> I, the SignedData carrying the signer and I, is delivered
    to alice. A signer under another intermediate of R1 that R1's CRL lists as revoked is refused with 550, the
    reply naming the revoked intermediate. (An expired intermediate: tests/test_conditions.py.)"""
    from milterd import Milterd
    from mta import Postfix, submit

    http = rv["http"]
    revoked_ca = world.pki.intermediate("RV-I-revoked", world.r1, crl_url=http.url("/R1.crl"))
    http.set("/R1.crl", make_crl(world.r1, [(revoked_ca.cert, dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))]),
             "application/pkix-crl")
    good = world.pki.leaf("rv-path-good", rv["inter"], email="pathgood@direct.b.test")
    under_revoked = world.pki.leaf("rv-path-revoked", revoked_ca, email="pathrevoked@direct.b.test")

    def direct(signer: Any, issuer: Any, tag: str) -> bytes:
        address = "pathgood@direct.b.test" if signer is good else "pathrevoked@direct.b.test"
        inner = plain_message(sender=address, to=ALICE).replace(b"<test-1@direct.a.test>", f"<{tag}@b.test>".encode())
        signed = peer.sign(b"Content-Type: message/rfc822\r\n\r\n" + inner, signer, extra_certs=[issuer])
        return f"From: {address}\r\nTo: {ALICE}\r\n".encode() + peer.encrypt(signed, [world.alice.cert_path])

    with scratch_dir("directmilter-rv-path-") as root:
        body = world.hisp_a_body()
        body["milter"] = {"internal_hosts": [], "submission_daemons": ["ORIGINATING"]}
        with Milterd(world.write_config("rv-path-milter", body), root / "milter.log") as milter, \
                Postfix(root=root / "a", name="mx.a.test", mailboxes={ALICE: "alice"},
                        milter=milter.postfix_spec) as a:
            accepted = submit(a.smtp_port, "pathgood@direct.b.test", [ALICE], direct(good, rv["inter"], "path-1"))
            refused = submit(a.smtp_port, "pathrevoked@direct.b.test", [ALICE],
                             direct(under_revoked, revoked_ca, "path-2"))
            assert accepted.ok, accepted
            [delivered] = a.wait_for_delivery(ALICE)
            assert b"<path-1@b.test>" in delivered and b"pkcs7" not in delivered
            assert refused.data is not None and refused.data[0] == 550, refused
            assert "revoked" in refused.data[1] and "RV-I-revoked" in refused.data[1], refused.data
            assert http.count("/R1.crl") >= 1
            assert len(a.maildir(ALICE)) == 1 and a.queue() == []
