"""Path building through AIA caIssuers over real HTTP (AS 4.2.2): intermediates nobody sent us are fetched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import opensslpeer as peer
import pytest
from conftest import World, envelope, plain_message
from httpserver import HttpServer
from pki import PKI

from directmilter.agent import Agent
from directmilter.config import load_config
from directmilter.errors import NoTrustedRecipients

ALICE, DAVE = "alice@direct.a.test", "dave@direct.b.test"


@pytest.fixture(scope="module")
def aia(world: World) -> Iterator[dict[str, Any]]:
    with HttpServer() as http:
        intermediate = world.pki.intermediate("AIA-I", world.r1)
        http.set("/I.cer", intermediate.der())
        dave = world.pki.leaf("aia-dave", intermediate, email=DAVE, aia_ca_issuers=http.url("/I.cer"))
        orphan = world.pki.leaf("aia-orphan", intermediate, email="orphan@direct.b.test",
                                aia_ca_issuers=http.url("/missing.cer"))
        http.set("/I-padded.cer", intermediate.der() + b"\0" * 4096)
        erin = world.pki.leaf("aia-erin", intermediate, email="erin@direct.b.test",
                              aia_ca_issuers=http.url("/I-padded.cer"))
        yield {"http": http, "I": intermediate, "dave": dave, "orphan": orphan, "erin": erin}


def agent_with(world: World, name: str, **overrides: Any) -> Agent:
    return Agent(load_config(world.write_config(name, {**world.hisp_a_body(), **overrides})))


@pytest.mark.conformance("AS-4.2.2-5", "AS-4.2.2-6", "AS-4.2.2-7")
def test_recipient_intermediate_fetched_through_aia(world: World, aia: dict[str, Any], tmp_path: Path) -> None:
    """The local store holds a wrong I' (I's subject, another key, under the same root): it leads nowhere, and
    the real I is fetched through dave's AIA (one GET) rather than "no chain" concluded."""
    decoy = PKI(tmp_path / "decoy").intermediate("AIA-I", world.r1)
    assert decoy.cert.subject == aia["I"].cert.subject and decoy.cert.public_key() != aia["I"].cert.public_key()
    files = [str(aia["dave"].cert_path), str(decoy.cert_path)]
    agent = agent_with(world, "aia-out", certificates={"files": files})
    try:
        before = aia["http"].count("/I.cer")
        result = agent.outgoing(envelope(plain_message(to=DAVE), ALICE, DAVE))
    finally:
        agent.close()
    assert result.certificates == (aia["dave"].cert,)
    assert aia["http"].count("/I.cer") == before + 1


def test_aia_intermediate_is_fetched_once_for_a_burst(world: World, aia: dict[str, Any]) -> None:
    agent = agent_with(world, "aia-burst", certificates={"files": [str(aia["dave"].cert_path)]})
    try:
        before = aia["http"].count("/I.cer")
        for _ in range(3):
            agent.context.validator.clear_cache()  # a real validation each time, not the result cache
            agent.outgoing(envelope(plain_message(to=DAVE), ALICE, DAVE))
        assert aia["http"].count("/I.cer") == before + 1
    finally:
        agent.close()


@pytest.mark.conformance("AS-4.2.3-2", "AS-4.2.2-7")
def test_no_chain_anywhere_is_untrusted(world: World, aia: dict[str, Any]) -> None:
    agent = agent_with(world, "aia-none", certificates={"files": [str(aia["orphan"].cert_path)]})
    try:
        before = aia["http"].count("/missing.cer")
        with pytest.raises(NoTrustedRecipients, match="no path to a trust anchor"):
            agent.outgoing(envelope(plain_message(), ALICE, "orphan@direct.b.test"))
    finally:
        agent.close()
    assert aia["http"].count("/missing.cer") == before + 1  # "no chain" only after the AIA GET was tried


@pytest.mark.conformance("AS-4.2.2-4", "AS-4.2.2-6")
def test_signer_intermediate_fetched_through_aia(world: World, aia: dict[str, Any]) -> None:
    """dave signs with only his own certificate in the SignedData; bob's side fetches I to reach R1."""
    signed = peer.sign(b"Content-Type: text/plain\r\n\r\nhello\r\n", aia["dave"])
    message = b"From: dave@direct.b.test\r\nTo: alice@direct.a.test\r\n" + peer.encrypt(signed,
                                                                                          [world.alice.cert_path])
    agent = agent_with(world, "aia-in")
    try:
        received = agent.incoming(envelope(message, DAVE, ALICE))
    finally:
        agent.close()
    assert received.signers == (aia["dave"].cert,)


def test_aia_download_is_bounded(world: World, aia: dict[str, Any]) -> None:
    """An AIA answer past ``max_download`` is not read: no intermediate, so no path; within the limit it is."""
    files = {"files": [str(aia["erin"].cert_path)]}
    small = agent_with(world, "aia-small", certificates=files, trust={"max_download": 2048})
    try:
        with pytest.raises(NoTrustedRecipients, match="no path to a trust anchor"):
            small.outgoing(envelope(plain_message(), ALICE, "erin@direct.b.test"))
    finally:
        small.close()
    assert ("GET", "/I-padded.cer") in aia["http"].requests()
    large = agent_with(world, "aia-large", certificates=files)
    try:
        assert large.outgoing(envelope(plain_message(), ALICE, "erin@direct.b.test")).recipients
    finally:
        large.close()


def test_certificate_urls_may_not_lead_to_internal_addresses_by_default(world: World, aia: dict[str, Any]) -> None:
    """Issue 19 (SSRF): the URLs in a certificate are its maker's choice. Without [trust] fetch_allow, a URL that
    leads to loopback (by address, or by a name that resolves to it) is not fetched: the HTTP server sees no
    request, and the recipient is refused for want of a path, saying why."""
    dave = aia["dave"]
    named = world.pki.leaf("aia-named", aia["I"], email="named@direct.b.test",
                           aia_ca_issuers=aia["http"].url("/I.cer").replace("127.0.0.1", "localhost"))
    for who, cert in ((DAVE, dave), ("named@direct.b.test", named)):
        agent = agent_with(world, f"aia-ssrf-{who[:4]}", certificates={"files": [str(cert.cert_path)]},
                           trust={"fetch_allow": []})
        before = aia["http"].count("/I.cer")
        try:
            with pytest.raises(NoTrustedRecipients) as caught:
                agent.outgoing(envelope(plain_message(to=who), ALICE, who))
        finally:
            agent.close()
        assert aia["http"].count("/I.cer") == before, who
        assert "no path to a trust anchor" in caught.value.rejected[who].reason


def test_a_redirect_to_another_host_is_not_followed(world: World, aia: dict[str, Any]) -> None:
    """A redirect on the same host is followed; one to another host (here: another port) is refused."""
    with HttpServer() as other:
        other.set("/I.cer", aia["I"].der())
        aia["http"].redirect("/away.cer", other.url("/I.cer"))
        aia["http"].redirect("/here.cer", aia["http"].url("/I.cer"))
        away = world.pki.leaf("aia-away", aia["I"], email="away@direct.b.test",
                              aia_ca_issuers=aia["http"].url("/away.cer"))
        here = world.pki.leaf("aia-here", aia["I"], email="here@direct.b.test",
                              aia_ca_issuers=aia["http"].url("/here.cer"))
        agent = agent_with(world, "aia-redirects",
                           certificates={"files": [str(away.cert_path), str(here.cert_path)]})
        try:
            with pytest.raises(NoTrustedRecipients):
                agent.outgoing(envelope(plain_message(to="away@direct.b.test"), ALICE, "away@direct.b.test"))
            assert other.count("/I.cer") == 0
            assert agent.outgoing(envelope(plain_message(to="here@direct.b.test"), ALICE,
                                           "here@direct.b.test")).recipients == ("here@direct.b.test",)
        finally:
            agent.close()


@pytest.mark.conformance("AS-4.2.2-7")
def test_through_postfix_the_intermediate_comes_through_aia_despite_a_wrong_one_at_hand(
        world: World, aia: dict[str, Any], tmp_path: Path) -> None:
    """The same through Postfix: A holds dave's certificate and a wrong I'; the message to dave leaves encrypted
    to him, after one GET of I from his AIA URL."""
    from milterd import Milterd
    from mta import Postfix, Sink, scratch_dir, submit

    decoy = PKI(tmp_path / "decoy").intermediate("AIA-I", world.r1)
    body = world.hisp_a_body()
    body["certificates"] = {"files": [str(aia["dave"].cert_path), str(decoy.cert_path)]}
    body["milter"] = {"internal_hosts": [], "submission_daemons": ["ORIGINATING"]}
    with scratch_dir("directmilter-aia-") as root, Sink(root / "wire") as sink, \
            Milterd(world.write_config("aia-milter", body), root / "milter.log") as milter, \
            Postfix(root=root / "a", name="mx.a.test", relay={"direct.b.test": f"127.0.0.1:{sink.port}"},
                    milter=milter.postfix_spec) as a:
        before = aia["http"].count("/I.cer")
        result = submit(a.submission_port, ALICE, [DAVE], plain_message(to=DAVE))
        assert result.ok, result
        [wire] = sink.wait(1)
    assert wire.rcpts == [DAVE] and b"Patient summary" in peer.decrypt(wire.data, aia["dave"])
    assert aia["http"].count("/I.cer") == before + 1
