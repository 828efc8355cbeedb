"""Answers kept per certificate and header value: kept when light, never for a heavy (hostile) input."""

from __future__ import annotations

from conftest import World
from cryptography import x509
from cryptography.hazmat.primitives.hashes import SHA256

from directmilter.certfacts import describe_certificate
from directmilter.cms import mime
from directmilter.memo import KEEP_UP_TO, fingerprint, kept


def test_light_inputs_are_kept_and_heavy_ones_worked_on_every_time() -> None:
    calls: list[str] = []

    @kept(8)
    def length(text: str, suffix: tuple[str, ...] = ()) -> int:
        calls.append(text[:1])
        return len(text) + len(suffix)

    assert [length("ab"), length("ab"), length("ab", ("c",))] == [2, 2, 3]
    assert calls == ["a", "a"]  # the second call was answered from what was kept
    heavy = "h" * (KEEP_UP_TO + 1)
    assert [length(heavy), length(heavy)] == [KEEP_UP_TO + 1] * 2
    assert calls == ["a", "a", "h", "h"] and length.cache_info().currsize == 2  # type: ignore[attr-defined]
    assert length("x", ("y" * KEEP_UP_TO,)) == 2 and length.cache_info().currsize == 2  # type: ignore[attr-defined]


def test_a_hostile_content_type_is_parsed_but_not_kept() -> None:
    before = mime._content_type.cache_info().currsize  # type: ignore[attr-defined]
    boundary = "b" * (KEEP_UP_TO + 10)
    entity = mime.parse_entity(f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n--{boundary}--\r\n".encode())
    assert entity.content_type == "multipart/mixed" and entity.param("boundary") == boundary
    assert mime.multipart_spans(entity) == ([], True)
    assert mime._content_type.cache_info().currsize == before  # type: ignore[attr-defined]


def test_certificates_are_kept_by_value(world: World) -> None:
    """Two objects of the same certificate (two messages carrying it) share what was kept for the first."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = world.alice.cert.public_bytes(Encoding.DER)
    first, second = x509.load_der_x509_certificate(der), x509.load_der_x509_certificate(der)
    hits = describe_certificate.cache_info().hits  # type: ignore[attr-defined]
    assert describe_certificate(first) == describe_certificate(second)
    assert describe_certificate.cache_info().hits >= hits + 1  # type: ignore[attr-defined]


def test_certificates_are_weighed_once_per_object_and_heavy_ones_never_kept() -> None:
    """Weighing a certificate re-encodes it; the weight of a light one is remembered per object (bounded in all),
    a heavy one is weighed every time and kept nowhere."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from directmilter import memo

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weighed")])
    now = datetime.datetime.now(datetime.UTC)

    def certificate(padding: int) -> x509.Certificate:
        return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"),
                                                          b"\0" * padding), False)
                .sign(key, hashes.SHA256()))

    light, heavy = certificate(10), certificate(KEEP_UP_TO)
    calls: list[int] = []

    @kept(8)
    def serial(cert: x509.Certificate) -> int:
        calls.append(cert.serial_number)
        return int(cert.serial_number)

    assert [serial(light), serial(light), serial(heavy), serial(heavy)] == [light.serial_number] * 2 + \
        [heavy.serial_number] * 2
    assert calls == [light.serial_number, heavy.serial_number, heavy.serial_number]
    assert memo._light[id(light)] == (light, memo._weight(light)) and id(heavy) not in memo._light
    for _ in range(2 * memo._LIGHT_TOTAL // memo._weight(light)):  # many objects: what is held stays bounded
        memo._weight(certificate(10))
    assert sum(weight for _, weight in memo._light.values()) <= memo._LIGHT_TOTAL


def test_fingerprints_are_sha256_of_the_der_and_kept(world: World) -> None:
    bob = x509.load_pem_x509_certificate(world.bob.cert_path.read_bytes())
    carol = x509.load_pem_x509_certificate(world.carol.cert_path.read_bytes())
    fingerprint.cache_clear()  # type: ignore[attr-defined]
    assert fingerprint(bob) == bob.fingerprint(SHA256()) != fingerprint(carol)
    again = x509.load_pem_x509_certificate(world.bob.cert_path.read_bytes())  # another object, the same value
    assert fingerprint(again) == fingerprint(bob)
    info = fingerprint.cache_info()  # type: ignore[attr-defined]
    assert (info.hits, info.misses) == (2, 2)
