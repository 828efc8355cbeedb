"""Path building through AIA caIssuers over real HTTP (AS 4.2.2): intermediates nobody sent us are fetched."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import opensslpeer as peer
import pytest
from conftest import World, envelope, plain_message
from httpserver import HttpServer

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
def test_recipient_intermediate_fetched_through_aia(world: World, aia: dict[str, Any]) -> None:
    agent = agent_with(world, "aia-out", certificates={"files": [str(aia["dave"].cert_path)]})
    try:
        result = agent.outgoing(envelope(plain_message(to=DAVE), ALICE, DAVE))
    finally:
        agent.close()
    assert result.certificates == (aia["dave"].cert,)
    assert ("GET", "/I.cer") in aia["http"].requests()


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


@pytest.mark.conformance("AS-4.2.3-2")
def test_no_chain_anywhere_is_untrusted(world: World, aia: dict[str, Any]) -> None:
    agent = agent_with(world, "aia-none", certificates={"files": [str(aia["orphan"].cert_path)]})
    try:
        with pytest.raises(NoTrustedRecipients, match="no path to a trust anchor"):
            agent.outgoing(envelope(plain_message(), ALICE, "orphan@direct.b.test"))
    finally:
        agent.close()
    assert ("GET", "/missing.cer") in aia["http"].requests()


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
