"""The BER reader the CMS layer takes SignedData and EnvelopedData apart with (directmilter.cms.ber), and what it
makes of real, re-encoded and damaged signatures."""

from __future__ import annotations

import pytest
from asn1crypto import cms as asn1_cms
from conftest import World
from hypothesis import given
from hypothesis import strategies as st

from directmilter.cms import ber
from directmilter.cms.signed import sign_detached, verify_detached
from directmilter.errors import CMSError, SignatureInvalid

CONTENT = b"Content-Type: text/plain\r\n\r\nhello\r\n"


def test_definite_and_indefinite_lengths() -> None:
    der = bytes.fromhex("3006" "0201" "05" "0401" "ff") + b"trailing"
    outer = ber.top(der, ber.SEQUENCE, "test")
    number, octets = ber.children(der, outer, ber.SEQUENCE, "test")
    assert (outer.start, outer.end, outer.after) == (2, 8, 8)
    assert ber.integer(der, number, "n") == 5 and ber.octet_string(der, octets, "o") == b"\xff"
    # the same, indefinite, with the octets cut into two constructed segments
    indefinite = bytes.fromhex("3080" "0201" "05" "2480" "0401" "ff" "0400" "0000" "0000")
    outer = ber.top(indefinite, ber.SEQUENCE, "test")
    number, octets = ber.children(indefinite, outer, ber.SEQUENCE, "test")
    assert outer.after == len(indefinite) and ber.octet_string(indefinite, octets, "o") == b"\xff"
    assert ber.integer(bytes.fromhex("0202ff7f"), ber.element(bytes.fromhex("0202ff7f"), 0, 4), "n") == -129


@pytest.mark.parametrize(("der", "message"), [
    ("30", "truncated"),
    ("3005" "0201", "runs past its end"),
    ("3084ffffffff00", "element runs past its end"),
    ("3089" + "00" * 9, "length runs past its end"),
    ("3080" "0201" "05", "no end-of-contents marker"),
    ("0480" "0000", "primitive element with an indefinite length"),
    ("1f01" "00", "high tag number"),
    ("3080" * 18 + "0000" * 18, "nest deeper than 16 levels"),
])
def test_malformed_encodings_are_specific_errors(der: str, message: str) -> None:
    data = bytes.fromhex(der)
    with pytest.raises(ber.BERError, match=message):
        ber.children(data, ber.element(data, 0, len(data)), data[0], "test")


def test_pieces_are_bounded() -> None:
    """One-byte segments cost a worker seconds per MiB (bench/parsers.py): a constructed OCTET STRING of more than
    MAX_PIECES segments, or an indefinite length holding more elements, is refused; exactly that many is read.
    Nested segments come out in order."""
    def segmented(count: int) -> bytes:
        return b"\x24\x80" + b"\x04\x01x" * count + b"\x00\x00"

    enough = segmented(ber.MAX_PIECES)
    assert ber.octet_string(enough, ber.element(enough, 0, len(enough)), "o") == b"x" * ber.MAX_PIECES
    too_many = segmented(ber.MAX_PIECES + 1)
    with pytest.raises(ber.BERError, match=f"holds more than {ber.MAX_PIECES} elements"):
        ber.element(too_many, 0, len(too_many))
    definite = bytes.fromhex("2483") + (3 * (ber.MAX_PIECES + 1)).to_bytes(3, "big") + b"\x04\x01x" * (
        ber.MAX_PIECES + 1)
    with pytest.raises(ber.BERError, match=f"cut into more than {ber.MAX_PIECES} segments"):
        ber.octet_string(definite, ber.element(definite, 0, len(definite)), "o")
    nested = bytes.fromhex("2480" "0401" "61" "2480" "0401" "62" "2480" "0401" "63" "0000" "0000" "0401" "64" "0000")
    assert ber.octet_string(nested, ber.element(nested, 0, len(nested)), "o") == b"abcd"


def test_wrong_identifiers_are_named() -> None:
    data = bytes.fromhex("3103" "020105")
    with pytest.raises(ber.BERError, match="SignedData: expected identifier 0x30, found 0x31"):
        ber.top(data, ber.SEQUENCE, "SignedData")
    inner = ber.children(data, ber.top(data, ber.SET, "x"), ber.SET, "x")[0]
    with pytest.raises(ber.BERError, match="expected an OBJECT IDENTIFIER"):
        ber.oid(data, inner, "eContentType")
    with pytest.raises(ber.BERError, match="expected an OCTET STRING"):
        ber.octet_string(data, inner, "signature value")
    tagged = bytes.fromhex("8101ff")  # a context tag is an OCTET STRING only where it is implicitly one
    with pytest.raises(ber.BERError, match="signature value: expected an OCTET STRING, found identifier 0x81"):
        ber.octet_string(tagged, ber.element(tagged, 0, 3), "signature value")
    assert ber.octet_string(tagged, ber.element(tagged, 0, 3), "key identifier", implicit=0x81) == b"\xff"
    with pytest.raises(ber.BERError, match="constructed OCTET STRING holds identifier 0x02"):
        ber.octet_string(bytes.fromhex("2403020105"), ber.element(bytes.fromhex("2403020105"), 0, 5), "o")


def indefinite(der: bytes, levels: int) -> bytes:
    """``der`` with its outer ``levels`` of constructed elements re-encoded with indefinite lengths (BER, as
    streaming signers write it). Certificates stay DER (X.509 is read as DER only)."""
    found = ber.element(der, 0, len(der))
    if levels <= 0 or not found.tag & 0x20 or _certificate(der, found):
        return der[found.first : found.after]
    inner = b"".join(indefinite(der[c.first : c.after], levels - 1) for c in ber.children(der, found, found.tag, "x"))
    return bytes((found.tag, 0x80)) + inner + b"\0\0"


def _certificate(der: bytes, found: ber.Element) -> bool:
    """A SEQUENCE whose first field is a SEQUENCE starting with [0] (a TBSCertificate's version)."""
    fields = ber.children(der, found, found.tag, "x") if found.tag == ber.SEQUENCE else []
    if not fields or fields[0].tag != ber.SEQUENCE:
        return False
    inner = ber.children(der, fields[0], ber.SEQUENCE, "x")
    return bool(inner) and inner[0].tag == 0xA0


@pytest.fixture(scope="module")
def signature(world: World) -> bytes:
    return sign_detached(CONTENT, world.hisp_a().identities_for("alice@direct.a.test"), "sha256")


def test_indefinite_length_signatures_verify(world: World, signature: bytes) -> None:
    """Down to the signed attributes (whose [0] becomes indefinite too: the signature covers them re-tagged as a
    DER SET, RFC 5652 5.4) and the signature value."""
    for levels in (1, 3, 5, 6):
        bent = indefinite(signature, levels)
        assert bent != signature
        report = verify_detached(CONTENT, bent)
        assert [r.error for r in report.results] == [None], levels
        assert report.results[0].certificate == world.alice.cert


def test_changed_signed_attributes_or_content_do_not_verify(signature: bytes) -> None:
    assert [type(r.error) for r in verify_detached(CONTENT + b"x", signature).results] == [SignatureInvalid]
    at = signature.rindex(b"\x17\x0d") + 2  # the signing time (after the certificates' dates): one digit changed
    bent = signature[:at] + bytes((signature[at] ^ 1,)) + signature[at + 1 :]
    assert [type(r.error) for r in verify_detached(CONTENT, bent).results] == [SignatureInvalid]


def test_embedded_content_and_other_content_types_are_refused(signature: bytes) -> None:
    info = asn1_cms.ContentInfo.load(signature)
    info["content"]["encap_content_info"]["content"] = CONTENT
    with pytest.raises(CMSError, match="not detached"):
        verify_detached(CONTENT, info.dump(force=True))
    data = asn1_cms.ContentInfo({"content_type": "data", "content": b"x"}).dump()
    with pytest.raises(CMSError, match="holds data, not SignedData"):
        verify_detached(CONTENT, data)


@given(st.data())
def test_damaged_signatures_are_clean_rejections(signature: bytes, data: st.DataObject) -> None:
    """Any bytes changed, any cut: a report (whose signers may fail) or a CMSError, never another exception."""
    der = bytearray(signature)
    for _ in range(data.draw(st.integers(1, 6))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(der)))
    try:
        report = verify_detached(CONTENT, bytes(der[:cut]))
    except CMSError:
        return
    for result in report.results:
        assert result.error is None or isinstance(result.error, CMSError)


def test_signature_work_is_bounded_before_it_starts(world: World, signature: bytes,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19: every SignerInfo cost a digest of the content, and every carried certificate was loaded before
    [limits] max_certificates was looked at. More SignerInfos than MAX_SIGNERS, or more certificates than the
    limit, are refused before any is read; signers with the same digest algorithm share one digest."""
    from directmilter.cms import signed as signed_module

    info = asn1_cms.ContentInfo.load(signature)
    one = info["content"]["signer_infos"][0]
    hashed: list[str] = []
    real_hash = signed_module._hash
    monkeypatch.setattr(signed_module, "_hash", lambda d, c: hashed.append(d) or real_hash(d, c))

    info["content"]["signer_infos"] = [one] * signed_module.MAX_SIGNERS
    report = verify_detached(CONTENT, info.dump(force=True))
    assert [r.error for r in report.results] == [None] * signed_module.MAX_SIGNERS and hashed == ["sha256"]

    info["content"]["signer_infos"] = [one] * (signed_module.MAX_SIGNERS + 1)
    with pytest.raises(CMSError, match=f"{signed_module.MAX_SIGNERS + 1} SignerInfos, more than the limit of"):
        verify_detached(CONTENT, info.dump(force=True))

    info["content"]["signer_infos"] = [one]
    carried = list(info["content"]["certificates"])
    info["content"]["certificates"] = carried * 3
    with pytest.raises(CMSError, match=f"carries {len(carried) * 3} certificates, more than the limit of 2"):
        verify_detached(CONTENT, info.dump(force=True), max_certificates=2)
    assert verify_detached(CONTENT, info.dump(force=True), max_certificates=len(carried) * 3).valid


def test_a_certificate_of_an_unknown_version_is_a_refusal(signature: bytes) -> None:
    """Found by fuzz/parsers.py: a carried certificate whose version field says 18 raised cryptography's
    InvalidVersion, which is not a ValueError: it passed every handler of malformed input and the message was
    deferred as an internal error (451, retried for days) instead of refused. The same reading serves the DNS and
    LDAP answers (directmilter.cms.der.load_certificate)."""
    from directmilter import cms
    from directmilter.cms.der import load_certificate

    info = asn1_cms.ContentInfo.load(signature)
    certificate = info["content"]["certificates"][0].chosen
    certificate["tbs_certificate"]["version"] = 18
    with pytest.raises(ValueError, match="not a certificate"):
        load_certificate(certificate.dump(force=True))
    info["content"]["certificates"] = [certificate]
    with pytest.raises(CMSError, match="18 is not a valid X509 version"):
        cms.verify_signature(CONTENT, info.dump(force=True), ("sha256",))
