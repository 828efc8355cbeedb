"""Trust: binding of certificates to addresses (AS 4.1) and path validation to anchors (AS 4.0, 4.2)."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from pki import PKI, Issued

from directmilter.errors import (
    CertificateExpired,
    DependencyTimeout,
    NoTrustPath,
    TemporaryFailure,
    TrustError,
)
from directmilter.trust import (
    Binding,
    TrustValidator,
    binding_error,
    bound_to,
    bound_to_domain,
    describe_certificate,
)
from directmilter.trust import validator as validator_module

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)
VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"


# --- fixtures -------------------------------------------------------------------------------------


class TrustWorld:
    """One test PKI shared by the module (RSA key generation is the slow part)."""

    def __init__(self, directory: Path) -> None:
        self.pki = pki = PKI(directory)
        self.r1 = pki.root("R1")
        self.r2 = pki.root("R2")
        self.i = pki.intermediate("I", self.r1)
        self.bob = pki.leaf("bob", self.r1, email="bob@direct.b.test")
        self.bob_via_i = pki.leaf("bob-i", self.i, email="bob@direct.b.test")
        self.carol_r2 = pki.leaf("carol-r2", self.r2, email="carol@direct.c.test")
        self.i_expired = pki.intermediate(
            "I-expired", self.r1, not_before=NOW - 30 * DAY, not_after=NOW - DAY
        )
        self.bob_under_expired_i = pki.leaf("bob-exp-i", self.i_expired, email="bob@direct.b.test")
        self.expired = pki.leaf(
            "expired", self.r1, email="old@direct.b.test", not_before=NOW - 400 * DAY, not_after=NOW - 9 * DAY
        )
        self.future = pki.leaf(
            "future", self.r1, email="new@direct.b.test", not_before=NOW + 10 * DAY, not_after=NOW + 400 * DAY
        )
        self.self_signed = pki.leaf("selfie", None, email="selfie@direct.b.test", self_signed=True)
        self.sha1 = pki.leaf("sha1", self.r1, email="sha1@direct.b.test", hash="sha1")
        self.md5 = pki.leaf("md5", self.r1, email="md5@direct.b.test", hash="md5")
        # a second "R1": same subject name, another key
        self.fake_r1 = PKI(directory / "impostor").root("R1")
        self.forged = PKI(directory / "impostor").leaf("forged", self.fake_r1, email="bob@direct.b.test")


@pytest.fixture(scope="module")
def tw(tmp_path_factory: pytest.TempPathFactory) -> TrustWorld:
    return TrustWorld(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tpki(tw: TrustWorld) -> PKI:
    return tw.pki


@pytest.fixture
def validator() -> Iterator[TrustValidator]:
    v = TrustValidator()
    yield v
    v.close()


def leaf(pki: PKI, name: str, **kw: object) -> x509.Certificate:
    issuer = kw.pop("issuer", None)
    if issuer is None:
        issuer = pki.root(f"{name}-ca")
    assert isinstance(issuer, Issued)
    issued = pki.leaf(name, issuer, **kw)  # type: ignore[arg-type]
    return issued.cert


# --- binding (AS 4.1) -----------------------------------------------------------------------------


@pytest.mark.conformance("AS-4.1.1-1")
@pytest.mark.conformance("AS-4.0-4")
def test_address_bound_by_san_rfc822name(tw: TrustWorld) -> None:
    assert bound_to(tw.bob.cert, "bob@direct.b.test") is Binding.ADDRESS


@pytest.mark.conformance("AS-4.1.1-1")
def test_address_comparison_is_case_insensitive_local_part_included(tpki: PKI) -> None:
    cert = leaf(tpki, "mixed", email="Bob@Direct.B.Test")
    assert bound_to(cert, "bob@direct.b.test") is Binding.ADDRESS
    assert bound_to(cert, "BOB@DIRECT.B.TEST") is Binding.ADDRESS


@pytest.mark.conformance("AS-4.1.1-1")
def test_other_address_in_san_is_not_bound(tpki: PKI, tw: TrustWorld) -> None:
    cert = leaf(tpki, "bob2", email="bob2@direct.b.test")
    assert bound_to(cert, "bob@direct.b.test") is None
    carol = leaf(tpki, "carol", email="carol@direct.b.test")
    assert bound_to(carol, "bob@direct.b.test") is None
    reason = binding_error(carol, "bob@direct.b.test")
    assert "is not bound to bob@direct.b.test" in reason
    assert "rfc822Name carol@direct.b.test" in reason
    assert "serial " in reason and "subject CN=carol@direct.b.test" in reason


@pytest.mark.conformance("AS-4.1.1-1")
@pytest.mark.conformance("AS-4.1.2-1")
def test_address_only_in_subject_is_not_bound(tpki: PKI) -> None:
    cert = leaf(tpki, "nosan", cn="bob@direct.b.test", subject_email="bob@direct.b.test")
    assert bound_to(cert, "bob@direct.b.test") is None
    # the domain only in CN / emailAddress (style of vector V6): not an organisation certificate either
    org = leaf(tpki, "nosan-org", cn="direct.b.test", subject_email="direct.b.test")
    assert bound_to(org, "bob@direct.b.test") is None
    assert not bound_to_domain(org, "direct.b.test")
    assert "no subjectAltName" in binding_error(cert, "bob@direct.b.test")


def test_the_binding_reason_speaks_of_the_subject_email_only_when_the_san_matches(tpki: PKI) -> None:
    """binding_error adds "its subject emailAddress ... does not match" exactly when an rfc822Name equals the
    address and a subject emailAddress differs: names that sort before or after the address are not matches."""
    def detail(email: str, subject_email: str) -> bool:
        name = f"why-{email.split('@')[0]}-{subject_email.split('@')[0]}"
        cert = leaf(tpki, name, email=email, subject_email=subject_email)
        return "does not match (AS 4.1.1)" in binding_error(cert, "bob@direct.b.test")

    assert not detail("aaa@direct.b.test", "aaa@direct.b.test")  # another address, below bob's
    assert not detail("zed@direct.b.test", "zed@direct.b.test")  # another address, above bob's
    assert detail("bob@direct.b.test", "aaa@direct.b.test")  # the subject's address sorts below bob's
    assert detail("bob@direct.b.test", "zed@direct.b.test")
    assert not detail("bob@direct.b.test", "bob@direct.b.test")  # nothing differs
    cert = leaf(tpki, "why-bob-aaa-2", email="bob@direct.b.test", subject_email="aaa@direct.b.test")
    assert "subject emailAddress aaa@direct.b.test does not match" in binding_error(cert, "bob@direct.b.test")


def test_serial_numbers_are_shown_in_even_hex_digits_with_their_sign() -> None:
    from types import SimpleNamespace
    from typing import Any, cast

    from directmilter.certfacts import serial_hex

    def shown(serial: int) -> str:
        return serial_hex(cast(Any, SimpleNamespace(serial_number=serial)))

    assert [shown(n) for n in (0, 1, 0xA, 0xAB, 0xABC, 0xABCD, -1, -0xABC)] == [
        "00", "01", "0A", "AB", "0ABC", "ABCD", "-01", "-0ABC"]


def test_an_address_needs_both_parts() -> None:
    from directmilter.trust.binding import split_address

    assert split_address(" Bob@Direct.B.Test ") == ("Bob", "Direct.B.Test")
    assert split_address('"a@b"@x.test') == ('"a@b"', "x.test")  # the split is at the last @
    for broken in ("bob", "@x.test", "bob@", "@", ""):
        assert split_address(broken) is None, broken


def test_a_certificate_whose_names_cannot_be_read_binds_nothing_and_is_still_described() -> None:
    """What cryptography raises for a malformed subjectAltName or name (ValueError, TypeError) is no binding and a
    placeholder in the operator's message, never an exception out of the trust check."""
    from types import SimpleNamespace
    from typing import Any, cast

    from directmilter.certfacts import _name_string

    for error in (ValueError, TypeError):
        def fail(*_: object, error: type[Exception] = error) -> Any:
            raise error("malformed")

        stub = cast(Any, SimpleNamespace(extensions=SimpleNamespace(get_extension_for_class=fail),
                                         subject=SimpleNamespace(get_attributes_for_oid=lambda oid: [])))
        assert bound_to(stub, "bob@direct.b.test") is None
        assert _name_string(cast(Any, SimpleNamespace(rfc4514_string=fail))) == "(unparseable name)"
    # the right rfc822Name, but a subject whose emailAddress cannot be read: not bound (AS 4.1.1 cannot be checked)
    san = x509.SubjectAlternativeName([x509.RFC822Name("bob@direct.b.test")])
    readable = cast(Any, SimpleNamespace(
        extensions=SimpleNamespace(get_extension_for_class=lambda kind: SimpleNamespace(value=san)),
        subject=SimpleNamespace(get_attributes_for_oid=lambda oid: [])))
    assert bound_to(readable, "bob@direct.b.test") is Binding.ADDRESS
    def unreadable(oid: object) -> Any:
        raise ValueError("malformed subject")

    readable.subject = SimpleNamespace(get_attributes_for_oid=unreadable)
    assert bound_to(readable, "bob@direct.b.test") is None


@pytest.mark.conformance("AS-4.1.1-2")
def test_subject_email_address_must_match_too(tpki: PKI) -> None:
    mallory = leaf(tpki, "bob-mallory", email="bob@direct.b.test", subject_email="mallory@direct.b.test")
    assert bound_to(mallory, "bob@direct.b.test") is None
    reason = binding_error(mallory, "bob@direct.b.test")
    assert "subject emailAddress mallory@direct.b.test does not match" in reason
    below = leaf(tpki, "bob-aaa", email="bob@direct.b.test", subject_email="aaa@direct.b.test")
    assert bound_to(below, "bob@direct.b.test") is None  # differs, and sorts before: still no binding
    upper = leaf(tpki, "bob-upper", email="bob@direct.b.test", subject_email="BOB@DIRECT.B.TEST")
    assert bound_to(upper, "bob@direct.b.test") is Binding.ADDRESS


@pytest.mark.conformance("AS-4.1.2-1")
def test_organization_bound_by_exact_dnsname(tpki: PKI) -> None:
    org = leaf(tpki, "org", dns="direct.b.test")
    assert bound_to(org, "bob@direct.b.test") is Binding.ORGANIZATION
    assert bound_to(org, "anyone.else@Direct.B.Test") is Binding.ORGANIZATION
    assert bound_to_domain(org, "DIRECT.b.test")
    assert bound_to(org, "bob@b.test") is None  # parent domain
    assert bound_to(org, "bob@x.direct.b.test") is None  # child domain
    assert bound_to(org, "bob@direct.b.test.evil") is None


@pytest.mark.conformance("AS-4.1.2-1")
def test_organization_parent_child_and_wildcard_dnsnames_do_not_bind(tpki: PKI) -> None:
    parent = leaf(tpki, "org-parent", dns="b.test")
    child = leaf(tpki, "org-child", dns="x.direct.b.test")
    wildcard = leaf(tpki, "org-wild", dns="*.b.test")
    for cert in (parent, child, wildcard):
        assert bound_to(cert, "bob@direct.b.test") is None
        assert not bound_to_domain(cert, "direct.b.test")
    assert "dNSName b.test" in binding_error(parent, "bob@direct.b.test")


@pytest.mark.conformance("AS-4.1.2-1")
def test_org_cert_subject_email_rule_does_not_apply(tpki: PKI) -> None:
    org = leaf(tpki, "org-email", dns="direct.b.test", subject_email="direct.b.test")
    assert bound_to(org, "bob@direct.b.test") is Binding.ORGANIZATION


def test_not_an_address(tw: TrustWorld) -> None:
    assert bound_to(tw.bob.cert, "bob") is None
    assert bound_to(tw.bob.cert, "@direct.b.test") is None
    assert "not a Direct address" in binding_error(tw.bob.cert, "bob")


def test_describe_certificate(tw: TrustWorld) -> None:
    text = describe_certificate(tw.bob.cert)
    serial = format(tw.bob.cert.serial_number, "X")
    serial = serial if len(serial) % 2 == 0 else "0" + serial
    assert text == (
        f"subject CN=bob@direct.b.test,O=directmilter test PKI, issuer CN=R1,O=directmilter test PKI, "
        f"serial {serial}"
    )


# --- path validation (AS 4.0, 4.2) ----------------------------------------------------------------


@pytest.mark.conformance("AS-4.0-5")
def test_root_to_leaf(validator: TrustValidator, tw: TrustWorld) -> None:
    path = validator.validate(tw.bob.cert, [tw.r1.cert])
    assert path.certificates == (tw.bob.cert, tw.r1.cert)
    assert path.leaf == tw.bob.cert and path.anchor == tw.r1.cert
    assert path.revocation_status == "undetermined"
    assert not path.directly_trusted


def test_root_intermediate_leaf(validator: TrustValidator, tw: TrustWorld) -> None:
    path = validator.validate(tw.bob_via_i.cert, [tw.r2.cert, tw.r1.cert], [tw.i.cert])
    assert path.certificates == (tw.bob_via_i.cert, tw.i.cert, tw.r1.cert)


@pytest.mark.conformance("AS-4.2.3-2")
def test_missing_intermediate_no_path(validator: TrustValidator, tw: TrustWorld) -> None:
    with pytest.raises(NoTrustPath) as info:
        validator.validate(tw.bob_via_i.cert, [tw.r1.cert, tw.r2.cert])
    reason = str(info.value)
    assert "no path to a trust anchor" in reason
    assert "anchors: CN=R1,O=directmilter test PKI, CN=R2,O=directmilter test PKI" in reason
    assert "issuer CN=I,O=directmilter test PKI" in reason
    assert "serial " in reason


def test_no_anchors_configured(validator: TrustValidator, tw: TrustWorld) -> None:
    with pytest.raises(NoTrustPath, match="no trust anchors configured for certificate"):
        validator.validate(tw.bob.cert, [])


@pytest.mark.conformance("AS-4.0-1")
def test_expired_leaf(validator: TrustValidator, tw: TrustWorld) -> None:
    with pytest.raises(CertificateExpired) as info:
        validator.validate(tw.expired.cert, [tw.r1.cert])
    date = tw.expired.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"expired {date}" in str(info.value)
    assert "subject CN=old@direct.b.test" in str(info.value)


@pytest.mark.conformance("AS-4.0-1")
def test_not_yet_valid_leaf(validator: TrustValidator, tw: TrustWorld) -> None:
    with pytest.raises(CertificateExpired) as info:
        validator.validate(tw.future.cert, [tw.r1.cert])
    date = tw.future.cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"not yet valid until {date}" in str(info.value)


@pytest.mark.conformance("AS-4.0-1")
@pytest.mark.conformance("AS-4.2.3-3")
def test_expired_intermediate(validator: TrustValidator, tw: TrustWorld) -> None:
    with pytest.raises(CertificateExpired) as info:
        validator.validate(tw.bob_under_expired_i.cert, [tw.r1.cert], [tw.i_expired.cert])
    reason = str(info.value)
    date = tw.i_expired.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert reason.startswith("intermediate (subject CN=I-expired,")
    assert f"expired {date}" in reason
    assert "in the path of certificate (subject CN=bob@direct.b.test" in reason


def test_moment_in_the_past_validates_expired_cert(validator: TrustValidator, tw: TrustWorld) -> None:
    moment = tw.expired.cert.not_valid_after_utc - 10 * DAY
    path = validator.validate(tw.expired.cert, [tw.r1.cert], moment=moment)
    assert path.moment == moment
    with pytest.raises(CertificateExpired):
        validator.validate(tw.expired.cert, [tw.r1.cert], moment=NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        validator.validate(tw.expired.cert, [tw.r1.cert], moment=dt.datetime(2020, 1, 1))


def test_unknown_root(validator: TrustValidator, tw: TrustWorld) -> None:
    with pytest.raises(NoTrustPath) as info:
        validator.validate(tw.carol_r2.cert, [tw.r1.cert])
    assert "anchors: CN=R1,O=directmilter test PKI" in str(info.value)
    assert "issuer CN=R2" in str(info.value)


@pytest.mark.conformance("AS-4.2.2-2")
def test_chain_to_a_root_that_is_not_an_anchor(validator: TrustValidator, tw: TrustWorld) -> None:
    with pytest.raises(NoTrustPath) as info:
        validator.validate(tw.carol_r2.cert, [tw.r1.cert], [tw.r2.cert])
    assert "chain ends at CN=R2,O=directmilter test PKI, which is not a configured trust anchor" in str(
        info.value
    )


@pytest.mark.conformance("AS-4.2.3-4")
def test_intermediate_as_only_anchor(validator: TrustValidator, tw: TrustWorld) -> None:
    path = validator.validate(tw.bob_via_i.cert, [tw.i.cert])
    assert path.certificates == (tw.bob_via_i.cert, tw.i.cert)
    # with no anchor in the chain: untrusted
    with pytest.raises(NoTrustPath):
        validator.validate(tw.bob_via_i.cert, [tw.r2.cert], [tw.i.cert])


@pytest.mark.conformance("AS-4.2.3-4")
def test_intermediate_anchor_beside_an_expired_root(validator: TrustValidator, tpki: PKI) -> None:
    old_root = tpki.root("R-old", not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    inter = tpki.intermediate("I-of-old", old_root, not_before=NOW - 10 * DAY, not_after=NOW + 100 * DAY)
    bob = tpki.leaf("bob-of-old", inter, email="bob@direct.b.test")
    path = validator.validate(bob.cert, [old_root.cert, inter.cert], [inter.cert])
    assert path.leaf == bob.cert
    assert inter.cert in path.certificates


@pytest.mark.conformance("AS-4.2.3-5")
def test_self_signed_leaf_as_anchor(validator: TrustValidator, tw: TrustWorld) -> None:
    path = validator.validate(tw.self_signed.cert, [tw.r1.cert, tw.self_signed.cert])
    assert path.certificates == (tw.self_signed.cert,)
    assert path.directly_trusted
    with pytest.raises(NoTrustPath, match="self-signed and not itself a configured trust anchor"):
        validator.validate(tw.self_signed.cert, [tw.r1.cert])


@pytest.mark.conformance("AS-4.2.3-5")
@pytest.mark.conformance("AS-4.0-1")
def test_self_signed_anchor_leaf_must_be_valid_now(validator: TrustValidator, tpki: PKI) -> None:
    old = tpki.leaf(
        "selfie-old", None, self_signed=True, email="o@direct.b.test",
        not_before=NOW - 100 * DAY, not_after=NOW - DAY,
    )
    with pytest.raises(CertificateExpired, match="expired"):
        validator.validate(old.cert, [old.cert])


@pytest.mark.conformance("AS-4.2.3-5")
def test_same_name_and_key_as_anchor_is_not_the_anchor(validator: TrustValidator, tw: TrustWorld) -> None:
    """A re-issued self-signed cert (same subject and key, other serial/validity) is not the anchor: only the
    exact configured certificate is trusted directly (pyhanko alone would accept any name + key match, expired
    or not)."""
    anchor = tw.self_signed

    def twin(not_after: dt.datetime) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(anchor.cert.subject)
            .issuer_name(anchor.cert.subject)
            .public_key(anchor.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - 100 * DAY)
            .not_valid_after(not_after)
            .sign(anchor.key, hashes.SHA256())
        )

    for cert in (twin(NOW - DAY), twin(NOW + 100 * DAY)):
        with pytest.raises(NoTrustPath):
            validator.validate(cert, [anchor.cert])


@pytest.mark.conformance("AS-4.0-2")
def test_leaf_signed_by_another_key_under_the_same_issuer(validator: TrustValidator, tw: TrustWorld) -> None:
    assert tw.forged.cert.issuer == tw.r1.cert.subject
    with pytest.raises(TrustError) as info:
        validator.validate(tw.forged.cert, [tw.r1.cert])
    assert "did not issue this certificate" in str(info.value)


@pytest.mark.conformance("AS-4.0-2")
def test_flipped_signature_byte(validator: TrustValidator, tw: TrustWorld) -> None:
    der = bytearray(tw.bob.der())
    der[-5] ^= 0x01  # inside the signature value at the end of the DER
    tampered = x509.load_der_x509_certificate(bytes(der))
    with pytest.raises(TrustError) as info:
        validator.validate(tampered, [tw.r1.cert])
    assert "signature of certificate" in str(info.value)
    assert "does not verify" in str(info.value)


def test_sha1_signed_leaf_depends_on_policy(tw: TrustWorld) -> None:
    with TrustValidator(allow_sha1=True) as lenient:
        assert lenient.validate(tw.sha1.cert, [tw.r1.cert]).leaf == tw.sha1.cert
    with TrustValidator(allow_sha1=False) as strict, pytest.raises(TrustError) as info:
        strict.validate(tw.sha1.cert, [tw.r1.cert])
    assert "signed with sha1" in str(info.value)
    assert "forbidden" in str(info.value)


@pytest.mark.conformance("AS-4.0-2")
def test_md5_signed_leaf_refused(validator: TrustValidator, tw: TrustWorld) -> None:
    with pytest.raises(TrustError) as info:
        validator.validate(tw.md5.cert, [tw.r1.cert])
    assert "signed with md5 (md5WithRSAEncryption), which is forbidden" in str(info.value)
    assert "subject CN=md5@direct.b.test" in str(info.value)


def test_md5_signed_intermediate_refused(validator: TrustValidator, tpki: PKI) -> None:
    root = tpki.root("R-md5")
    inter = tpki.intermediate("I-md5", root, hash="md5")
    bob = tpki.leaf("bob-md5-i", inter, email="bob@direct.b.test")
    with pytest.raises(TrustError) as info:
        validator.validate(bob.cert, [root.cert], [inter.cert])
    assert str(info.value).startswith("intermediate (subject CN=I-md5,")
    assert "md5" in str(info.value)


def test_1024_bit_issuer_key_accepted_by_default(tpki: PKI) -> None:
    small = tpki.root("R-1024", key="rsa1024")
    bob = tpki.leaf("bob-1024", small, email="bob@direct.b.test", key="rsa1024")
    with TrustValidator() as v:
        assert v.validate(bob.cert, [small.cert]).anchor == small.cert
    with TrustValidator(min_rsa_bits=2048) as v, pytest.raises(TrustError, match="1024"):
        v.validate(bob.cert, [small.cert])


def test_key_usage_policy(validator: TrustValidator, tpki: PKI, tw: TrustWorld) -> None:
    enc_only = tpki.leaf("enc-only", tw.r1, email="e@direct.b.test", key_usage={"keyEncipherment"})
    no_ku = tpki.leaf("no-ku", tw.r1, email="n@direct.b.test", key_usage=None)
    # policy off: anything valid is accepted
    validator.validate(enc_only.cert, [tw.r1.cert])
    # policy on
    validator.validate(enc_only.cert, [tw.r1.cert], key_usage={"key_encipherment"})
    with pytest.raises(TrustError, match="not valid for digital signature"):
        validator.validate(enc_only.cert, [tw.r1.cert], key_usage={"digital_signature"})
    # no keyUsage extension: no restriction (RFC 5280 4.2.1.3)
    validator.validate(no_ku.cert, [tw.r1.cert], key_usage={"digital_signature"})
    with pytest.raises(ValueError, match="unknown key usage"):
        validator.validate(no_ku.cert, [tw.r1.cert], key_usage={"signing"})


def test_intermediate_without_ca_flag_refused(validator: TrustValidator, tw: TrustWorld, tpki: PKI) -> None:
    fake_ca = tpki.leaf("fake-ca", tw.r1, cn="Fake CA")
    # a "leaf" issued under the non-CA certificate
    child_key = tw.bob.key
    child = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "child")]))
        .issuer_name(fake_ca.cert.subject)
        .public_key(child_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .sign(fake_ca.key, hashes.SHA256())
    )
    with pytest.raises(TrustError, match="not a CA"):
        validator.validate(child, [tw.r1.cert], [fake_ca.cert])


# --- validator machinery --------------------------------------------------------------------------


def test_cache_reuses_results(tw: TrustWorld) -> None:
    with TrustValidator() as v:
        first = v.validate(tw.bob.cert, [tw.r1.cert])
        assert v.validate(tw.bob.cert, [tw.r1.cert]) is first
        with pytest.raises(NoTrustPath) as e1:
            v.validate(tw.carol_r2.cert, [tw.r1.cert])
        with pytest.raises(NoTrustPath) as e2:
            v.validate(tw.carol_r2.cert, [tw.r1.cert])
        assert str(e1.value) == str(e2.value)
        # another anchor set is another key
        with pytest.raises(NoTrustPath):
            v.validate(tw.bob.cert, [tw.r2.cert])


def test_cache_is_bounded(tw: TrustWorld) -> None:
    with TrustValidator(cache_size=2) as v:
        v.validate(tw.bob.cert, [tw.r1.cert])
        v.validate(tw.sha1.cert, [tw.r1.cert])
        v.validate(tw.bob_via_i.cert, [tw.r1.cert], [tw.i.cert])
        assert len(v._cache) == 2


def test_timeout_is_a_dependency_timeout(tw: TrustWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    class Slow:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        async def async_validate_path(self) -> None:
            await asyncio.sleep(30)

    monkeypatch.setattr(validator_module, "CertificateValidator", Slow)
    with TrustValidator(timeout=0.2) as v, pytest.raises(DependencyTimeout, match=r"longer than 0\.2 s"):
        v.validate(tw.bob.cert, [tw.r1.cert])


def test_unexpected_exception_is_a_temporary_failure(tw: TrustWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        async def async_validate_path(self) -> None:
            raise KeyError("bug")

    monkeypatch.setattr(validator_module, "CertificateValidator", Broken)
    with TrustValidator() as v, pytest.raises(TemporaryFailure, match="internal error"):
        v.validate(tw.bob.cert, [tw.r1.cert])


def test_thread_safe_and_restartable(tw: TrustWorld) -> None:
    v = TrustValidator(cache_size=0)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                v.validate(tw.bob_via_i.cert, [tw.r1.cert], [tw.i.cert])
                with pytest.raises(NoTrustPath):
                    v.validate(tw.carol_r2.cert, [tw.r1.cert])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    v.close()
    assert v.validate(tw.bob.cert, [tw.r1.cert]).anchor == tw.r1.cert  # a new loop starts
    v.close()
    v.close()  # idempotent


# --- third-party vectors -----------------------------------------------------------------------------------------


def _vector(relative: str) -> x509.Certificate:
    path = VECTORS / relative
    if not path.exists():
        pytest.skip(f"third-party vectors not available: {path} is missing")
    return x509.load_der_x509_certificate(path.read_bytes())


@pytest.mark.vectors
@pytest.mark.conformance("AS-4.2.2-8")
def test_vector_ryan_validates_against_simpleinterop_ca(validator: TrustValidator) -> None:
    ryan = _vector("DirectProjectJavaRI-agent/certs/ryan.der")
    ca = _vector("DirectProjectJavaRI-agent/certs/secureHealthEmailCACert.der")
    path = validator.validate(ryan, [ca])
    assert path.certificates == (ryan, ca)
    assert bound_to(ryan, "ryan@securehealthemail.com") is Binding.ADDRESS
    assert bound_to(ryan, "Ryan@SecureHealthEmail.com") is Binding.ADDRESS
    assert bound_to(ryan, "gm2552@securehealthemail.com") is None
    with TrustValidator(allow_sha1=False) as strict, pytest.raises(TrustError, match="sha1"):
        strict.validate(ryan, [ca])


@pytest.mark.vectors
@pytest.mark.conformance("AS-4.1.2-1")
def test_vector_cernerdemos_org_cert(validator: TrustValidator) -> None:
    org = _vector("DirectProjectJavaRI-agent/certs/cernerdemos.der")
    ca = _vector("DirectProjectJavaRI-agent/certs/cernerDemosCaCert.der")
    validator.validate(org, [ca])
    # subject emailAddress holds the domain, not the address: still organisation-bound
    assert bound_to(org, "anyone@messaging.cernerdemos.com") is Binding.ORGANIZATION
    assert bound_to(org, "anyone@cernerdemos.com") is None


@pytest.mark.vectors
def test_vector_1024_bit_key_usage_split(validator: TrustValidator) -> None:
    ca = _vector("DirectProjectJavaRI-gateway/certs/KeyUsageCA.der")
    dig = _vector("DirectProjectJavaRI-gateway/certs/digSigOnly.der")
    enc = _vector("DirectProjectJavaRI-gateway/certs/keyEncOnly.der")
    dual = _vector("DirectProjectJavaRI-gateway/certs/dualUse.der")
    for cert in (dig, enc, dual):
        validator.validate(cert, [ca])
        assert bound_to(cert, "x@keyusage.com") is Binding.ORGANIZATION
    validator.validate(dig, [ca], key_usage={"digital_signature"})
    validator.validate(dual, [ca], key_usage={"key_encipherment"})
    with pytest.raises(TrustError, match="key encipherment"):
        validator.validate(dig, [ca], key_usage={"key_encipherment"})
    with pytest.raises(TrustError, match="digital signature"):
        validator.validate(enc, [ca], key_usage={"digital_signature"})
