"""The SignedData and EnvelopedData directmilter assembles by hand are DER: byte for byte what asn1crypto writes
when it re-encodes them canonically (sorted SETs, minimal lengths), for every option and recipient order."""

from __future__ import annotations

import pytest
from asn1crypto import cms
from conftest import World

from directmilter.cms.enveloped import encrypt
from directmilter.cms.signed import sign_detached


@pytest.mark.parametrize("cipher", ["aes256-cbc", "aes128-gcm"])
@pytest.mark.parametrize("recipient_id", ["issuer-serial", "subject-key-identifier"])
@pytest.mark.parametrize("key_transport", ["rsa-pkcs1v15", "rsa-oaep"])
def test_envelopes_are_canonical_der(world: World, cipher: str, recipient_id: str, key_transport: str) -> None:
    for recipients in ([world.bob, world.bob2, world.carol], [world.carol, world.bob2, world.bob]) * 4:
        der = encrypt(b"x" * 1000, [r.cert for r in recipients], cipher=cipher, recipient_id=recipient_id,
                      key_transport=key_transport)  # random keys: the sorted order changes from run to run
        assert cms.ContentInfo.load(der).dump(force=True) == der


@pytest.mark.parametrize("digest", ["sha256", "sha384", "sha512"])
def test_signatures_are_canonical_der(world: World, digest: str) -> None:
    for address in ("alice@direct.a.test", "al2@direct.a.test"):
        der = sign_detached([b"hello ", memoryview(b"world")], world.hisp_a().identities_for(address), digest)
        info = cms.ContentInfo.load(der)
        assert info.dump(force=True) == der
        assert info["content"]["signer_infos"][0]["signed_attrs"].dump(force=True)[1:] == \
            info["content"]["signer_infos"][0]["signed_attrs"].dump()[1:]
