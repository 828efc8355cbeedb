"""Coverage-guided fuzzing (atheris, libFuzzer) of every parser a stranger reaches before a signature is checked.

A target passes an input when it parses it or refuses it with one of our errors (a DirectMilterError: the milter
maps it to a clean 5.x.x). Anything else (IndexError, RecursionError, a crash, an input slower than -timeout, more
memory than -rss_limit_mb) is a finding, which libFuzzer saves as ``crash-*`` / ``timeout-*`` in the working folder.

    .venv/bin/python fuzz/parsers.py TARGET [CORPUS_DIR] [libFuzzer options]

Targets: ``mime`` (a message as received: header block, MIME structure), ``envelope`` (EnvelopedData DER, and
decryption with a key of ours the seed is encrypted to), ``signed`` (detached SignedData DER over a fixed
content, as the agent reads it), ``signed-entity`` (decrypted content: multipart/signed and its signature),
``fields`` (Content-Type parameters and address lists). Each run adds seeds made from a throwaway key of its own
(a real secured message, its envelope, its decrypted content, its signature, its fields) to CORPUS_DIR, so the
fuzzer starts from valid input.

The test suite runs every target for a few seconds (tests/test_fuzz.py); a long run on demand, for example:

    .venv/bin/python fuzz/parsers.py envelope /var/tmp/corpus-envelope -max_total_time=3600 -timeout=10

and a finding is run again with ``.venv/bin/python fuzz/parsers.py TARGET crash-...``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["directmilter"]):
    from directmilter import cms
    from directmilter.cms import fields
    from directmilter.cms.enveloped import Envelope
    from directmilter.cms.mime import parse_entity
    from directmilter.cms.smime import envelope_der, split_signed
    from directmilter.config import DEFAULT_ACCEPT_CIPHERS, DEFAULT_ACCEPT_DIGESTS
    from directmilter.errors import DirectMilterError
    from directmilter.keys.identity import PrivateIdentity

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ADDRESS = "fuzz@direct.fuzz.test"
MESSAGE = (b"From: Fuzz <fuzz@direct.fuzz.test>\r\nTo: a@b.test, \"B (x)\" <b@c.test>, group: c@d.test;\r\n"
           b"Subject: seed\r\nMessage-ID: <seed@fuzz.test>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"=_b\"; charset*=utf-8''x\r\n\r\n"
           b"--=_b\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nhello\r\n"
           b"--=_b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           b"AAECAwQ=\r\n--=_b--\r\n")
CONTENT = b"Content-Type: text/plain\r\n\r\nfixed content\r\n"


def _identity() -> PrivateIdentity:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ADDRESS)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(ADDRESS)]), critical=False)
            .sign(key, hashes.SHA256()))
    return PrivateIdentity(cert, key, source="fuzz")


IDENTITY = _identity()


def _seeds() -> dict[str, list[bytes]]:
    secured = cms.secure(cms.parse_message(MESSAGE), [IDENTITY], [IDENTITY.certificate])
    outer = parse_entity(secured)
    envelope = bytes(envelope_der(outer))
    plaintext = bytes(Envelope.parse(envelope, DEFAULT_ACCEPT_CIPHERS).decrypt([IDENTITY]))
    signature = split_signed(plaintext).signature_der
    return {
        "mime": [MESSAGE, secured],
        "envelope": [envelope],
        "signed": [bytes(cms.sign_detached(CONTENT, [IDENTITY], "sha256"))],
        "signed-entity": [plaintext, signature],
        "fields": [b'multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="x"',
                   b"text/plain; title*0*=us-ascii'en'a%20b; title*1=c", b'"A (B)" <a@b.test>, g: c@d.test, (x) e@f;'],
    }


def _mime(data: bytes) -> None:
    entity = cms.parse_message(data, max_depth=32, max_headers=1000)
    entity.addresses("from", "to", "cc")


def _envelope(data: bytes) -> None:
    Envelope.parse(data, DEFAULT_ACCEPT_CIPHERS).decrypt([IDENTITY])


def _signed(data: bytes) -> None:
    cms.verify_signature(CONTENT, data, DEFAULT_ACCEPT_DIGESTS, 50)


def _signed_entity(data: bytes) -> None:
    cms.read_signed(data, DEFAULT_ACCEPT_DIGESTS, 50)


def _fields(data: bytes) -> None:
    text = data.decode("latin-1")
    fields.content_type(text)
    fields.address_list([text])


TARGETS: dict[str, Callable[[bytes], None]] = {
    "mime": _mime, "envelope": _envelope, "signed": _signed, "signed-entity": _signed_entity, "fields": _fields,
}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        raise SystemExit(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [CORPUS_DIR] [libFuzzer options]")
    name, rest = argv[1], argv[2:]
    target = TARGETS[name]
    corpus = next((Path(a) for a in rest if not a.startswith("-")), None)
    if corpus is not None and not corpus.is_file():  # a file: libFuzzer runs that one input (a finding, again)
        corpus.mkdir(parents=True, exist_ok=True)
        for number, seed in enumerate(_seeds()[name]):
            (corpus / f"seed-{number}").write_bytes(seed)

    def one_input(data: bytes) -> None:
        with contextlib.suppress(DirectMilterError):  # a clean refusal
            target(data)

    atheris.Setup([argv[0], *rest], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
