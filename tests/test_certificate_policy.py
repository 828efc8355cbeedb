"""Certificate policies per hosted domain and direction: recipients' certificates when sending, signers' when
receiving, our own when signing. A certificate that fails is skipped with the reason (``lookup`` shows it)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from conftest import World, envelope, keypair, plain_message
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from pki import Issued

from directmilter.agent import Agent
from directmilter.config import describe, load_config
from directmilter.errors import ConfigError, NoTrustedRecipients, PolicyViolation, SenderNotConfigured
from directmilter.trust.certificate_policy import CertificatePolicy

ALICE, BOB, DAVE = "alice@direct.a.test", "bob@direct.b.test", "dave@direct.b.test"
FRAMEWORK = "1.3.6.1.4.1.41179.0.1.2"  # a trust framework's assurance-level policy OID
OTHER = "1.3.6.1.4.1.41179.0.1.1"


@pytest.fixture(scope="module")
def certs(world: World) -> dict[str, Issued]:
    leaf = world.pki.leaf
    return {
        "weak": leaf("pol-weak", world.r1, email=DAVE, key="rsa1024"),
        "strong": leaf("pol-strong", world.r1, email=DAVE),
        "sign-only": leaf("pol-sign", world.r1, email=DAVE, key_usage=["digitalSignature"]),
        "encrypt-only": leaf("pol-enc", world.r1, email=DAVE, key_usage=["keyEncipherment"]),
        "no-ku": leaf("pol-noku", world.r1, email=DAVE, key_usage=None),
        "eku-email": leaf("pol-eku", world.r1, email=DAVE, extended_key_usage=["emailProtection"]),
        "eku-server": leaf("pol-ekus", world.r1, email=DAVE, extended_key_usage=["serverAuth"]),
        "eku-any": leaf("pol-ekua", world.r1, email=DAVE, extended_key_usage=["anyExtendedKeyUsage"]),
        "framework": leaf("pol-fw", world.r1, email=DAVE, policies=[FRAMEWORK]),
        "other-framework": leaf("pol-ofw", world.r1, email=DAVE, policies=[OTHER]),
        "sha1": leaf("pol-sha1", world.r1, email=DAVE, hash="sha1"),
    }


@pytest.mark.parametrize(("settings", "cert", "reason"), [
    ({}, "weak", "RSA key of 1024 bits, the policy requires at least 2048"),
    ({}, "strong", None),
    ({"min_rsa_bits": 1024}, "weak", None),
    ({"key_usage": ["key_encipherment"]}, "sign-only", "keyUsage lacks key_encipherment"),
    ({"key_usage": ["key_encipherment"]}, "no-ku", None),  # no keyUsage extension: any use (RFC 5280 4.2.1.3)
    ({"usage": "single"}, "strong", "a dual-use certificate"),
    ({"usage": "single"}, "no-ku", "a dual-use certificate"),
    ({"usage": "single"}, "encrypt-only", None),
    ({"usage": "dual"}, "sign-only", "a single-use certificate"),
    ({"usage": "dual"}, "strong", None),
    ({"extended_key_usage": ["email_protection"]}, "strong", "no extendedKeyUsage, the policy requires "
                                                             "email_protection"),
    ({"extended_key_usage": ["email_protection"]}, "eku-server", "extendedKeyUsage server_auth, the policy"),
    ({"extended_key_usage": ["email_protection"]}, "eku-email", None),
    ({"extended_key_usage": ["email_protection"]}, "eku-any", None),
    ({"required_policies": [FRAMEWORK]}, "other-framework", f"certificate policies {OTHER}, the policy requires"),
    ({"required_policies": [FRAMEWORK]}, "strong", "certificate policies (none)"),
    ({"required_policies": [FRAMEWORK, OTHER]}, "framework", None),
    ({"forbidden_policies": [OTHER]}, "other-framework", f"certificate policy {OTHER} is forbidden here"),
    ({"forbidden_policies": [OTHER]}, "framework", None),
    ({"forbidden_signature_algorithms": ["sha1"]}, "sha1", "signed with SHA1, which the policy forbids"),
    ({"forbidden_signature_algorithms": ["sha1"]}, "strong", None),
])
def test_each_rule_names_what_fails(certs: dict[str, Issued], settings: dict[str, Any], cert: str,
                                    reason: str | None) -> None:
    found = CertificatePolicy().overridden(settings).violation(certs[cert].cert)
    assert found == reason if reason is None else reason in (found or ""), found


@pytest.mark.parametrize(("settings", "message"), [
    ({"recipients": {"min_rsa_bits": 100}}, r"\[policy\]\.recipients: min_rsa_bits: must be a number of bits"),
    ({"signers": {"usage": "triple"}}, r"usage: 'triple': expected one of any, single, dual"),
    ({"own": {"key_usage": ["sign"]}}, r"key_usage: 'sign': expected one of digital_signature"),
    ({"recipients": {"required_policies": ["gold"]}}, r"required_policies: 'gold': expected a dotted OID"),
    ({"recipients": {"extended_key_usage": ["mail"]}}, r"expected one of email_protection"),
    ({"recipients": {"forbidden_signature_algorithms": ["crc32"]}}, r"'crc32': expected one of md5, sha1"),
    ({"recipients": {"colour": "red"}}, r"colour: unknown setting"),
    ({"outgoing": {}}, r"\[policy\]\.outgoing: unknown direction \(expected one of recipients, signers, own\)"),
])
def test_bad_policy_settings_are_refused_by_name(world: World, settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(world.write_config("policy-bad", {**world.hisp_a_body(), "policy": settings}))


def hisp_a(world: World, certs: dict[str, Issued], *names: str, policy: dict[str, Any] | None = None,
           domain_policy: dict[str, Any] | None = None, alice_policy: dict[str, Any] | None = None) -> Agent:
    body = world.hisp_a_body()
    body["certificates"]["files"] += [str(certs[name].cert_path) for name in names]
    if policy is not None:
        body["policy"] = policy
    if domain_policy is not None:
        body["domains"]["direct.a.test"]["policy"] = domain_policy
    if alice_policy is not None:
        body["addresses"][ALICE]["policy"] = alice_policy
    return Agent(load_config(world.write_config("policy-a", body)))


def test_a_weak_recipient_certificate_is_refused_by_default_and_named(world: World,
                                                                      certs: dict[str, Issued]) -> None:
    with pytest.raises(NoTrustedRecipients) as refused:
        hisp_a(world, certs, "weak").outgoing(envelope(plain_message(to=DAVE), ALICE, DAVE))
    error = refused.value.rejected[DAVE]
    assert isinstance(error, PolicyViolation)
    assert "refused by policy: RSA key of 1024 bits, the policy requires at least 2048" in error.reason


def test_the_policy_picks_the_certificate_that_meets_it(world: World, certs: dict[str, Issued]) -> None:
    """dave has a 1024-bit and a 2048-bit certificate: only the second is encrypted to."""
    sent = hisp_a(world, certs, "weak", "strong").outgoing(envelope(plain_message(to=DAVE), ALICE, DAVE))
    assert sent.certificates == (certs["strong"].cert,)


def test_domain_and_address_settings_override_the_global_policy(world: World, certs: dict[str, Issued]) -> None:
    """[policy] asks for the framework OID; the domain relaxes it to 1024-bit keys; alice alone drops the OID."""
    agent = hisp_a(world, certs, "weak", policy={"recipients": {"required_policies": [FRAMEWORK]}},
                   domain_policy={"recipients": {"min_rsa_bits": 1024}},
                   alice_policy={"recipients": {"required_policies": []}})
    config = agent.context.config
    assert config.policy_for(ALICE, "recipients").min_rsa_bits == 1024
    assert config.policy_for(ALICE, "recipients").required_policies == frozenset()
    assert config.policy_for("org@direct.a.test", "recipients").required_policies == {FRAMEWORK}
    assert config.policy_for("someone@elsewhere.test", "recipients").min_rsa_bits == 2048
    assert agent.outgoing(envelope(plain_message(to=DAVE), ALICE, DAVE)).recipients == (DAVE,)
    both = hisp_a(world, certs, domain_policy={"recipients": {"min_rsa_bits": 3072}},
                  alice_policy={"recipients": {"min_rsa_bits": 1024}}).context.config
    assert both.policy_for(ALICE, "recipients").min_rsa_bits == 1024  # the address's setting wins
    assert both.policy_for("org@direct.a.test", "recipients").min_rsa_bits == 3072
    lines = describe(config)
    assert "  recipients certificates: RSA >= 1024" in lines
    assert f"  recipients certificates: RSA >= 1024, policies one of {FRAMEWORK}" in lines


def test_signers_policy_refuses_a_signature_by_a_certificate_outside_the_framework(world: World) -> None:
    """bob requires the framework OID of signers; alice's certificate has none: refused, with the reason."""
    sent = Agent(world.hisp_a()).outgoing(envelope(plain_message(), ALICE, BOB))
    body = world.hisp_b_body()
    body["addresses"][BOB]["policy"] = {"signers": {"required_policies": [FRAMEWORK]}}
    with pytest.raises(NoTrustedRecipients) as refused:
        Agent(load_config(world.write_config("policy-b", body))).incoming(envelope(sent.message, ALICE, BOB))
    error = refused.value.rejected[BOB]
    assert isinstance(error, PolicyViolation) and "certificate policies (none)" in error.reason


def test_own_policy_decides_which_of_our_certificates_sign(world: World, certs: dict[str, Issued]) -> None:
    """With single-use required for our own keys, alice's dual-use certificate may not sign: not configured."""
    with pytest.raises(SenderNotConfigured, match="no signing certificate meets the policy for our own keys: a "
                                                  "dual-use certificate"):
        hisp_a(world, certs, alice_policy={"own": {"usage": "single"}}).outgoing(
            envelope(plain_message(), ALICE, BOB))


def test_own_policy_keeps_the_signing_certificate_that_meets_it(world: World) -> None:
    """al3 has a single-use signing certificate and a dual-use one: with single-use required, the first signs."""
    signing = world.pki.leaf("al3-sign", world.r1, email="al3@direct.a.test", key_usage=["digitalSignature"])
    dual = world.pki.leaf("al3-dual", world.r1, email="al3@direct.a.test")
    body = world.hisp_a_body()
    body["addresses"]["al3@direct.a.test"] = {"keys": [keypair(dual), keypair(signing)],
                                              "policy": {"own": {"usage": "single"}}}
    agent = Agent(load_config(world.write_config("policy-own", body)))
    identities = agent.context.config.identities_for("al3@direct.a.test")
    from directmilter.agent.outgoing import sender_identities

    chosen = sender_identities(agent.context, "al3@direct.a.test")
    assert len(identities) == 2 and [i.certificate for i in chosen] == [signing.cert]


def test_lookup_shows_the_policy_reason(world: World, certs: dict[str, Issued]) -> None:
    body = world.hisp_a_body()
    body["certificates"]["files"] += [str(certs["weak"].cert_path), str(certs["strong"].cert_path)]
    path = world.write_config("policy-lookup", body)
    done = subprocess.run([sys.executable, "-m", "directmilter", "lookup", "-c", str(path), "--sender", ALICE, DAVE],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert ("not used: refused by the recipients policy of alice@direct.a.test: RSA key of 1024 bits, the policy "
            "requires at least 2048") in done.stdout
    assert "QUALIFIES" in done.stdout and "result: 1 certificate(s) qualify" in done.stdout


def test_a_certificate_that_cannot_be_read_fails_the_policy_instead_of_crashing(certs: dict[str, Issued]) -> None:
    """An unknown signature algorithm (cryptography cannot name its hash) is a reason, not an exception."""
    der = certs["strong"].cert.public_bytes(Encoding.DER)
    sha256_rsa = bytes.fromhex("2a864886f70d01010b")
    odd = x509.load_der_x509_certificate(der.replace(sha256_rsa, bytes.fromhex("2a864886f70d01017f")))
    strict = CertificatePolicy().overridden({"forbidden_signature_algorithms": ["sha1"]})
    assert "cannot be read for the policy check" in (strict.violation(odd) or "")
    assert CertificatePolicy().violation(odd) is None  # nothing asks for the algorithm: the path check decides


def test_policy_settings_at_their_bounds_and_in_their_shapes() -> None:
    """The overriding table's checks, unit by unit: bounds included, a string where a list belongs refused, a
    name after the known ones in the alphabet still unknown, OIDs of two arcs or more."""
    base = CertificatePolicy()
    assert base.overridden({"min_rsa_bits": 512}).min_rsa_bits == 512
    assert base.overridden({"min_rsa_bits": 16384}).min_rsa_bits == 16384
    for bits in (511, 16385, True, "2048"):
        with pytest.raises(ValueError, match="min_rsa_bits: must be a number of bits from 512 to 16384"):
            base.overridden({"min_rsa_bits": bits})
    with pytest.raises(ValueError, match="key_usage: must be an array of strings"):
        base.overridden({"key_usage": "digital_signature"})
    with pytest.raises(ValueError, match="zebra: unknown setting"):
        base.overridden({"zebra": ["sha1"]})
    assert base.overridden({"required_policies": ["1.2", "2.16.840.1.113883.3.184.6.1"]}).required_policies == {
        "1.2", "2.16.840.1.113883.3.184.6.1"}
    for bad in ("1", "3.1", "1.x", "1..2"):
        with pytest.raises(ValueError, match="expected a dotted OID"):
            base.overridden({"required_policies": [bad]})


def test_the_policy_describes_every_setting() -> None:
    """What check-config and lookup print: each setting once, in words; "any" use is not a rule worth saying,
    however the configuration spelled the string."""
    full = CertificatePolicy().overridden({
        "min_rsa_bits": 3072, "key_usage": ["digital_signature"], "usage": "single",
        "extended_key_usage": ["email_protection"], "required_policies": ["1.2.3"], "forbidden_policies": ["1.2.4"],
        "forbidden_signature_algorithms": ["sha1"]})
    assert full.describe() == ("RSA >= 3072, keyUsage digital_signature, single-use, extendedKeyUsage "
                               "email_protection, policies one of 1.2.3, policies not 1.2.4, not signed with sha1")
    spelled = "".join(["a", "ny"])  # not the interned literal
    assert CertificatePolicy().overridden({"usage": spelled}).describe() == "RSA >= 2048"


def test_a_key_larger_than_the_minimum_passes(world: World) -> None:
    big = world.pki.leaf("policy-rsa3072", world.r1, email="big@direct.b.test", key="rsa3072")
    assert CertificatePolicy().violation(big.cert) is None
    assert CertificatePolicy().overridden({"min_rsa_bits": 4096}).violation(big.cert) == (
        "RSA key of 3072 bits, the policy requires at least 4096")


def test_usage_rules_hold_however_the_configuration_spelled_them(world: World) -> None:
    """A value read from a file is not the interned literal the code compares with: the rules must not care."""
    sign_only = world.pki.leaf("policy-sign-only-spelled", world.r1, email="so@direct.b.test",
                               key_usage=["digitalSignature"])
    dual = CertificatePolicy().overridden({"usage": "".join(["du", "al"])})
    assert dual.violation(sign_only.cert) == ("a single-use certificate, the policy requires dual-use (signing and "
                                              "encryption) certificates")
    single = CertificatePolicy().overridden({"usage": "".join(["sin", "gle"])})
    assert single.violation(sign_only.cert) is None
