"""Drive the ``openssl cms`` / ``openssl smime`` CLI (OpenSSL 3.0) as an independent S/MIME peer.

Everything is bytes in / bytes out; certificates and keys are the PEM files written by
:mod:`pki`.  Any non-zero exit raises ``AssertionError`` carrying the command line and
openssl's stderr.

Line-ending rules (OpenSSL 3.0 behaviour, checked in ``test_testsupport.py``):

* Without ``-binary`` openssl reads content in "text" mode and canonicalises every line
  to CRLF (lone LF -> CRLF, a run of CRs before the LF collapses) both before
  hashing/encrypting and when copying the content into the multipart/signed output.
  The MIME entities we hand in are already CRLF, so we always pass ``-binary``: the exact
  bytes are signed/encrypted and copied through untouched.
* ``-crlfeol`` makes the lines openssl prints itself (To/From/Subject, MIME headers,
  preamble, boundaries) end in CRLF, but the base64 body keeps bare-LF line ends; we
  rewrite those (:func:`_crlf_base64`) so the result is a pure-CRLF wire message.
* Reading multipart/signed with ``-binary``, the signed part is taken byte for byte except
  for the line break in front of the next boundary, which openssl assumes is ``\n``
  unless ``-crlfeol`` is also given (then ``\r\n``).  ``-binary`` alone therefore leaves a
  stray ``\r`` on the content of every CRLF message and verification fails; hence
  :func:`verify` passes ``-binary -crlfeol``.  Without ``-binary`` the part is
  re-canonicalised to CRLF first, so an LF-only copy of a CRLF-signed message still
  verifies in text mode (but content with lone LFs / stray CRs then does not).
* Either LF or CRLF framing is accepted on input.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from pki import Issued

OPENSSL = "openssl"
LEGACY_PROVIDER = ("-provider", "legacy", "-provider", "default")
LEGACY_CIPHERS = frozenset({"des", "rc2-40", "rc2-64", "rc2-128", "rc2"})
HEADER_OPTIONS = {"from": "-from", "to": "-to", "subject": "-subject"}


def run(args: Sequence[str | Path], stdin: bytes = b"") -> bytes:
    """Run ``openssl *args`` feeding ``stdin``; return stdout, or raise AssertionError."""
    cmd = [OPENSSL, *map(str, args)]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False, timeout=60)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr.decode(errors='replace')}"
        )
    return proc.stdout


def _crlf_base64(smime: bytes) -> bytes:
    """Give the base64 body of openssl's S/MIME output CRLF line ends.

    ``-crlfeol`` only affects the lines openssl prints itself; the base64 BIO still ends
    each line with a bare LF.  The base64 part (smime.p7s / smime.p7m) is always the last
    one, after any signed content, so only bytes after its header block are touched.
    """
    marker = smime.rfind(b'filename="smime.p7')
    body = smime.find(b"\r\n\r\n", marker)
    assert marker >= 0 and body >= 0, f"unexpected openssl S/MIME output: {smime[:300]!r}"
    body += 4
    return smime[:body] + re.sub(rb"(?<!\r)\n", b"\r\n", smime[body:])


def _header_args(headers: Mapping[str, str] | None) -> list[str]:
    args: list[str] = []
    for name, value in (headers or {}).items():
        if name.lower() not in HEADER_OPTIONS:
            raise ValueError(f"openssl can only write {sorted(HEADER_OPTIONS)} headers, not {name!r}")
        args += [HEADER_OPTIONS[name.lower()], value]
    return args


def _pem_bundle(tmp: str, certs: Iterable[Issued | Path]) -> list[str]:
    """``-certfile <bundle>`` for ``certs`` (written into directory ``tmp``), or nothing."""
    pems = [c.pem() if isinstance(c, Issued) else Path(c).read_bytes() for c in certs]
    if not pems:
        return []
    path = Path(tmp) / "certfile.pem"
    path.write_bytes(b"".join(pems))
    return ["-certfile", str(path)]


def sign(
    content: bytes,
    signer: Issued,
    *,
    md: str = "sha256",
    extra_certs: Iterable[Issued | Path] = (),
    nocerts: bool = False,
    pss: bool = False,
    nodetach: bool = False,
    legacy_smime: bool = False,
    headers: Mapping[str, str] | None = None,
    co_signers: Sequence[Issued] = (),
) -> bytes:
    """Sign the MIME entity ``content`` (CRLF line ends) and return the S/MIME message.

    Default: ``openssl cms -sign -binary -crlfeol`` -> multipart/signed with
    ``protocol="application/pkcs7-signature"``, whose first part is ``content`` byte for
    byte (``-binary``) and whose framing is CRLF (``-crlfeol``).  ``nodetach`` gives an
    opaque application/pkcs7-mime; signed-data instead.  ``legacy_smime`` uses
    ``openssl smime -sign`` (PKCS#7 code path), which labels its output
    ``application/x-pkcs7-signature`` / ``x-pkcs7-mime``; it cannot do PSS.
    ``extra_certs`` go into the SignedData certificate set (``-certfile``), ``nocerts``
    leaves out even the signer's certificate.  ``headers`` (from/to/subject) are written
    by openssl above the MIME-Version line, always in the order To, From, Subject. ``co_signers`` sign too.
    """
    if legacy_smime and pss:
        raise ValueError("openssl smime has no -keyopt; RSASSA-PSS needs openssl cms")
    args: list[str | Path] = [
        "smime" if legacy_smime else "cms",
        "-sign",
        "-binary",
        "-crlfeol",
        "-md",
        md,
        "-signer",
        signer.cert_path,
        "-inkey",
        signer.key_path,
    ]
    if pss:
        args += ["-keyopt", "rsa_padding_mode:pss"]
    for other in co_signers:  # more SignerInfos, in this order after ``signer``'s
        args += ["-signer", other.cert_path, "-inkey", other.key_path]
    args += ["-nocerts"] * nocerts + ["-nodetach"] * nodetach + _header_args(headers)
    with tempfile.TemporaryDirectory() as tmp:
        return _crlf_base64(run([*args, *_pem_bundle(tmp, extra_certs)], content))


def encrypt(
    entity: bytes,
    recipients: Sequence[Path],
    *,
    cipher: str = "aes256",
    oaep: bool | str = False,
    keyid: bool = False,
    legacy_smime: bool = False,
    headers: Mapping[str, str] | None = None,
    stream: bool = False,
) -> bytes:
    """Encrypt the MIME entity ``entity`` to the recipient certificate files.

    ``openssl cms -encrypt -binary -crlfeol -<cipher> -recip <cert> ...`` ->
    application/pkcs7-mime; smime-type=enveloped-data (GCM ciphers give
    authEnvelopedData, smime-type=authEnveloped-data).  ``-binary`` so the exact entity bytes
    are encrypted (no LF->CRLF canonicalisation); ``-crlfeol`` for CRLF framing.  The
    cipher is always explicit (the CLI default is 3DES); ``des`` / ``rc2-*`` load the
    legacy provider.  ``oaep=True`` sets RSAES-OAEP (OpenSSL default SHA-1/MGF1-SHA-1) for
    every RSA recipient, ``oaep="sha256"`` also sets the OAEP and MGF1 digest.  ``keyid``
    identifies recipients by subjectKeyIdentifier instead of issuer+serial.
    ``legacy_smime`` uses ``openssl smime -encrypt`` (application/x-pkcs7-mime, no OAEP /
    keyid / GCM, RSA recipients only).  EC recipients get KeyAgreeRecipientInfo (ECDH,
    dhSinglePass-stdDH-sha1kdf + AES key wrap), which cannot wrap a DES/RC2 key: mixing EC
    recipients with those ciphers fails inside openssl.  openssl writes the ``headers``
    in the fixed order To, From, Subject above MIME-Version. ``stream`` (``-stream``) writes BER as streaming
    senders do: indefinite lengths, the encrypted content cut into OCTET STRING segments.
    """
    if legacy_smime and (oaep or keyid or "gcm" in cipher):
        raise ValueError("openssl smime supports neither -keyopt, -keyid nor AEAD ciphers")
    args: list[str | Path] = ["smime" if legacy_smime else "cms", "-encrypt", "-binary", "-crlfeol"]
    if cipher in LEGACY_CIPHERS:
        args += LEGACY_PROVIDER
    args += [f"-{cipher}", *["-keyid"] * keyid, *["-stream"] * stream, *_header_args(headers)]
    keyopts = ["rsa_padding_mode:oaep"] if oaep else []
    if isinstance(oaep, str):
        keyopts += [f"rsa_oaep_md:{oaep}", f"rsa_mgf1_md:{oaep}"]
    for cert in recipients:
        # smime takes recipients only as trailing operands.  cms binds -keyopt to the preceding
        # -recip, and an RSA padding keyopt on an EC (key agreement) recipient is a hard error.
        rsa_recip = isinstance(
            x509.load_pem_x509_certificate(Path(cert).read_bytes()).public_key(), RSAPublicKey
        )
        opts = keyopts if rsa_recip else []
        args += [cert] if legacy_smime else ["-recip", cert, *(a for k in opts for a in ("-keyopt", k))]
    return _crlf_base64(run(args, entity))


def decrypt(message: bytes, recipient: Issued) -> bytes:
    """Decrypt an S/MIME enveloped message; return the inner entity bytes exactly.

    ``openssl cms -decrypt -binary`` (the legacy provider is loaded so DES/RC2 messages
    decrypt too).  ``-binary`` keeps the plaintext as is; handles x-pkcs7-mime as well.
    """
    return run(
        [
            "cms",
            "-decrypt",
            "-binary",
            *LEGACY_PROVIDER,
            "-recip",
            recipient.cert_path,
            "-inkey",
            recipient.key_path,
        ],
        message,
    )


def verify(
    signed_entity: bytes,
    ca_file: Path | None,
    *,
    attime: int | None = None,
    purpose: str | None = "any",
    binary: bool = True,
    extra_certs: Iterable[Issued | Path] = (),
) -> bytes:
    """Verify a multipart/signed or opaque signed S/MIME message; return the signed content.

    ``openssl cms -verify -binary -CAfile <ca_file> -purpose any`` (``ca_file=None`` ->
    ``-noverify``: signature only, no chain).  With ``binary=True`` the signed part is
    hashed exactly as it appears; ``binary=False`` lets openssl canonicalise it to CRLF
    first (the returned content is then the canonical form).  ``attime`` is a Unix time
    for chain validation; ``extra_certs`` are untrusted intermediates (``-certfile``).
    """
    args: list[str | Path] = ["cms", "-verify", *["-binary", "-crlfeol"] * binary]
    args += ["-noverify"] if ca_file is None else ["-CAfile", ca_file]
    if purpose is not None:
        args += ["-purpose", purpose]
    if attime is not None:
        args += ["-attime", str(attime)]
    with tempfile.TemporaryDirectory() as tmp:
        return run([*args, *_pem_bundle(tmp, extra_certs)], signed_entity)


def cmsprint(message: bytes) -> str:
    """``openssl cms -cmsout -print`` of an S/MIME message (pkcs7-mime or multipart/signed)."""
    return run(["cms", "-cmsout", "-print", "-inform", "SMIME"], message).decode()


def cmsprint_der(der: bytes) -> str:
    """``openssl cms -cmsout -print`` of a DER ContentInfo."""
    return run(["cms", "-cmsout", "-print", "-inform", "DER"], der).decode()
