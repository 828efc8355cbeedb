"""AS 4.1.3 (MAY): key usage policy. Off by default (any valid, trusted certificate signs); on, it is enforced."""

from __future__ import annotations

from typing import Any

import opensslpeer as peer
import pytest
from conftest import World, envelope

from directmilter.agent import Agent
from directmilter.config import load_config
from directmilter.errors import NoTrustedRecipients

ALICE = "alice@direct.a.test"


def incoming(world: World, signer: Any, sender: str, enforce: bool) -> Any:
    signed = peer.sign(b"Content-Type: text/plain\r\n\r\nhello\r\n", signer)
    message = f"From: {sender}\r\nTo: {ALICE}\r\n".encode() + peer.encrypt(signed, [world.alice.cert_path])
    agent = Agent(load_config(world.write_config(f"ku-{enforce}", {**world.hisp_a_body(),
                                                                   "trust": {"enforce_key_usage": enforce}})))
    try:
        return agent.incoming(envelope(message, sender, ALICE))
    finally:
        agent.close()


@pytest.mark.conformance("AS-4.1.3-1")
@pytest.mark.parametrize(("name", "options", "reason"), [
    ("kuencipher", {"key_usage": {"keyEncipherment"}}, "not valid for digital signature"),
    ("kuserver", {"extended_key_usage": {"serverAuth"}}, "not for e-mail protection"),
])
def test_signer_key_usage_enforced_only_by_policy(world: World, name: str, options: dict[str, Any],
                                                  reason: str) -> None:
    sender = f"{name}@direct.b.test"
    signer = world.pki.leaf(name, world.r1, email=sender, **options)
    assert incoming(world, signer, sender, enforce=False).recipients == (ALICE,)
    with pytest.raises(NoTrustedRecipients, match=reason):
        incoming(world, signer, sender, enforce=True)


@pytest.mark.conformance("AS-4.1.3-1")
@pytest.mark.parametrize("extended_key_usage", [None, {"emailProtection"}], ids=["no-eku", "email-protection"])
def test_enforcement_accepts_a_signer_whose_extended_key_usage_allows_smime(
        world: World, extended_key_usage: set[str] | None) -> None:
    """RFC 5280 4.2.1.12: an absent extendedKeyUsage restricts nothing; emailProtection is S/MIME's."""
    name = "kunoeku" if extended_key_usage is None else "kuemail"
    sender = f"{name}@direct.b.test"
    signer = world.pki.leaf(name, world.r1, email=sender, extended_key_usage=extended_key_usage)
    assert incoming(world, signer, sender, enforce=True).recipients == (ALICE,)
