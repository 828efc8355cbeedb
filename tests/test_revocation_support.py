"""The revocation test harness (tests/revocation.py), checked with independent clients only: the openssl CLI
(``verify``, ``crl``, ``ocsp``, ``x509``), urllib and ``ss``."""

from __future__ import annotations

import base64
import datetime
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import ocsp
from mta import processes_under
from pki import PKI, Issued
from revocation import OcspResponder, RevocationPKI, make_crl

OPENSSL = "openssl"


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OPENSSL, *map(str, args)], capture_output=True, text=True, check=False, timeout=20)


def ocsp_query(ca: RevocationPKI, *leaves: Issued, url: str | None = None,
               timeout: int | None = 5) -> subprocess.CompletedProcess[str]:
    """``openssl ocsp`` as a client: ask about ``leaves`` (issued by I), verify the answer up to R.

    With ``-timeout`` OpenSSL 3.0 retries a refused connect until the timeout is over ("connect timeout"); without
    it, a refused connect fails at once ("Connection refused")."""
    certs = [arg for leaf in leaves for arg in ("-cert", str(leaf.cert_path))]
    limit = ["-timeout", str(timeout)] if timeout is not None else []
    return openssl("ocsp", "-issuer", ca.intermediate.cert_path, *certs, "-url", url or ca.ocsp_url,
                   "-CAfile", ca.root.cert_path, "-resp_text", *limit)


def verdict(proc: subprocess.CompletedProcess[str], leaf: Issued) -> str:
    """The status openssl ocsp printed for ``leaf`` ("<path>: good|revoked|unknown")."""
    for line in proc.stdout.splitlines():
        if line.startswith(f"{leaf.cert_path}: "):
            return line.split(": ", 1)[1].strip()
    raise AssertionError(f"no status line for {leaf.cert_path}:\n{proc.stdout}\n{proc.stderr}")


def fetch(url: str, data: bytes | None = None) -> bytes:
    with urllib.request.urlopen(url, data=data, timeout=5) as response:
        body: bytes = response.read()
        return body


def listeners(port: int) -> list[str]:
    """Local addresses of TCP listening sockets on ``port``, according to ss(8)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RevocationPKI]:
    directory = tmp_path_factory.mktemp("revocation")
    with RevocationPKI(directory) as rpki:
        yield rpki
    assert processes_under(directory) == []


@pytest.fixture(params=["openssl", "python"])
def responder(request: pytest.FixtureRequest, ca: RevocationPKI, tmp_path: Path) -> Iterator[OcspResponder]:
    """The CA's own (openssl) responder, or a python-backend responder for the same intermediate."""
    if request.param == "openssl":
        yield ca.ocsp
        return
    with OcspResponder(tmp_path / "py-ocsp", ca.intermediate, backend="python") as py:
        yield py


# ------------------------------------------------------------------------------------------------------------ CRLs


def test_make_crl_is_signed_numbered_and_lists_reasons(tmp_path: Path) -> None:
    pki = PKI(tmp_path)
    root = pki.root("crlroot")
    leaf = pki.leaf("crlleaf", root, email="x@a.test")
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    der = make_crl(root, [(leaf.cert, when, x509.ReasonFlags.key_compromise), (0x1234, when)])
    path = tmp_path / "root.crl"
    path.write_bytes(der)
    proc = openssl("crl", "-inform", "DER", "-in", path, "-CAfile", root.cert_path, "-noout", "-text")
    assert proc.returncode == 0, proc.stderr
    assert "verify OK" in proc.stderr
    text = proc.stdout
    assert "X509v3 CRL Number" in text and "X509v3 Authority Key Identifier" in text
    assert "Next Update" in text and "sha256WithRSAEncryption" in text
    assert format(leaf.cert.serial_number, "X") in text.replace(":", "").upper()
    assert "Serial Number: 1234" in text
    assert "Key Compromise" in text and "Jan  2 03:04:05 2026 GMT" in text

    second = make_crl(root)
    numbers = [x509.load_der_x509_crl(d).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
               for d in (der, second)]
    assert numbers[1] > numbers[0]

    path.write_bytes(make_crl(root, hash="sha1", number=7))
    proc = openssl("crl", "-inform", "DER", "-in", path, "-CAfile", root.cert_path, "-noout", "-text")
    assert proc.returncode == 0 and "verify OK" in proc.stderr, proc.stderr
    assert "sha1WithRSAEncryption" in proc.stdout and "\n                7\n" in proc.stdout


def test_openssl_verify_crl_check_sees_revoked_leaf(ca: RevocationPKI) -> None:
    good, bad = ca.leaf("crl-good", email="good@b.test"), ca.leaf("crl-bad", email="bad@b.test")
    ca.revoke(bad)
    common: list[str | Path] = ["-CAfile", ca.root.cert_path, "-untrusted", ca.intermediate.cert_path]
    for crl_file in (ca.crl_file(), ca.crl_file(pem=False)):  # PEM and DER both load in 3.0
        ok = openssl("verify", "-crl_check", *common, "-CRLfile", crl_file, good.cert_path)
        assert ok.returncode == 0 and ok.stdout.strip().endswith(": OK"), ok.stdout + ok.stderr
        revoked = openssl("verify", "-crl_check", *common, "-CRLfile", crl_file, bad.cert_path)
        assert revoked.returncode != 0
        assert "certificate revoked" in revoked.stdout + revoked.stderr
    # the whole chain: R's CRL (I not revoked) as well
    both = openssl("verify", "-crl_check_all", *common, "-CRLfile", ca.crl_file(),
                   "-CRLfile", ca.crl_file(ca.root_name), good.cert_path)
    assert both.returncode == 0, both.stdout + both.stderr
    # without any CRL, -crl_check cannot succeed: the CRL really is what decides
    missing = openssl("verify", "-crl_check", *common, good.cert_path)
    assert missing.returncode != 0 and "unable to get certificate CRL" in missing.stdout + missing.stderr


def test_revoked_intermediate_shows_in_the_root_crl(tmp_path: Path) -> None:
    with RevocationPKI(tmp_path) as own:
        leaf = own.leaf("under-revoked-i")
        own.revoke(own.intermediate, reason=x509.ReasonFlags.ca_compromise)
        args: list[str | Path] = ["-CAfile", own.root.cert_path, "-untrusted", own.intermediate.cert_path,
                "-CRLfile", own.crl_file(), "-CRLfile", own.crl_file(own.root_name)]
        leaf_only = openssl("verify", "-crl_check", *args, leaf.cert_path)
        assert leaf_only.returncode == 0, leaf_only.stdout + leaf_only.stderr
        chain = openssl("verify", "-crl_check_all", *args, leaf.cert_path)
        assert chain.returncode != 0 and "certificate revoked" in chain.stdout + chain.stderr
        assert own.ocsp.status_of(own.intermediate) == "unknown"  # the responder is I's, not R's


# ----------------------------------------------------------------------------------------------------------- OCSP


def test_ocsp_good_revoked_unknown(ca: RevocationPKI, responder: OcspResponder) -> None:
    leaf = ca.leaf(f"ocsp-{responder.backend}", email=f"{responder.backend}@b.test")
    stranger = ca.pki.leaf(f"stranger-{responder.backend}", ca.intermediate)  # issued by I, never registered
    responder.set_good(leaf)
    before = responder.requests

    good = ocsp_query(ca, leaf, url=responder.url)
    assert good.returncode == 0, good.stderr
    assert "Response verify OK" in good.stderr and verdict(good, leaf) == "good"
    assert "OCSP Nonce" in good.stdout and "Next Update" in good.stdout

    ca.revoke(leaf, reason=x509.ReasonFlags.key_compromise)
    responder.revoke(leaf, reason=x509.ReasonFlags.key_compromise)  # no-op twice for ca.ocsp; needed for python
    revoked = ocsp_query(ca, leaf, url=responder.url)  # the very next request already sees it
    assert "Response verify OK" in revoked.stderr and verdict(revoked, leaf) == "revoked"
    assert "Reason: keyCompromise" in revoked.stdout

    unknown = ocsp_query(ca, stranger, url=responder.url)
    assert "Response verify OK" in unknown.stderr and verdict(unknown, stranger) == "unknown"

    assert responder.requests == before + 3
    assert [r.cert_statuses for r in responder.log[-3:]] == [("good",), ("revoked",), ("unknown",)]
    assert responder.log[-1].serials == (stranger.cert.serial_number,)
    assert responder.log[-1].method == "POST" and responder.log[-1].response_status == "successful"


def test_ocsp_two_certificates_in_one_request(ca: RevocationPKI) -> None:
    first, second = ca.leaf("multi-1"), ca.leaf("multi-2")
    ca.revoke(second)
    proc = ocsp_query(ca, first, second)
    assert "Response verify OK" in proc.stderr, proc.stderr
    assert (verdict(proc, first), verdict(proc, second)) == ("good", "revoked")
    assert ca.ocsp.log[-1].cert_statuses == ("good", "revoked")


def test_ocsp_get_request_and_malformed_request(ca: RevocationPKI, tmp_path: Path) -> None:
    leaf = ca.leaf("ocsp-get")
    request, response = tmp_path / "req.der", tmp_path / "resp.der"
    made = openssl("ocsp", "-issuer", ca.intermediate.cert_path, "-cert", leaf.cert_path, "-no_nonce",
                   "-reqout", request)
    assert made.returncode == 0, made.stderr
    encoded = urllib.parse.quote(base64.b64encode(request.read_bytes()).decode(), safe="")
    response.write_bytes(fetch(ca.ocsp_url + encoded))
    proc = openssl("ocsp", "-respin", response, "-issuer", ca.intermediate.cert_path, "-cert", leaf.cert_path,
                   "-CAfile", ca.root.cert_path)
    assert "Response verify OK" in proc.stderr and verdict(proc, leaf) == "good", proc.stdout + proc.stderr
    assert ca.ocsp.log[-1].method == "GET"

    response.write_bytes(fetch(ca.ocsp_url, data=b"this is not DER"))
    text = openssl("ocsp", "-respin", response, "-resp_text", "-noverify").stdout
    assert "Responder Error: malformedrequest (1)" in text
    assert ca.ocsp.log[-1].response_status == "malformed_request" and ca.ocsp.log[-1].serials == ()


def test_ocsp_error_status_and_delay(ca: RevocationPKI) -> None:
    leaf = ca.leaf("ocsp-trylater")
    ca.ocsp.unsuccessful = ocsp.OCSPResponseStatus.TRY_LATER
    try:
        proc = ocsp_query(ca, leaf)
    finally:
        ca.ocsp.unsuccessful = None
    assert proc.returncode != 0 and "Responder Error: trylater (3)" in proc.stdout + proc.stderr
    ca.ocsp.delay = 0.5
    try:
        started = time.monotonic()
        slow = ocsp_query(ca, leaf)
        assert time.monotonic() - started >= 0.5 and verdict(slow, leaf) == "good"
    finally:
        ca.ocsp.delay = 0


def test_ocsp_responder_binds_loopback_only_and_goes_down(ca: RevocationPKI, tmp_path: Path) -> None:
    leaf = ca.leaf("ocsp-down")
    responder = OcspResponder(tmp_path / "down", ca.intermediate)
    responder.set_good(leaf)
    try:
        assert listeners(responder.port) == []  # bound (port reserved) but not listening yet
        with pytest.raises(urllib.error.URLError) as refused:
            fetch(responder.url, data=b"")
        assert isinstance(refused.value.reason, ConnectionRefusedError)

        responder.start()
        assert listeners(responder.port) == [f"127.0.0.1:{responder.port}"]
        assert verdict(ocsp_query(ca, leaf, url=responder.url), leaf) == "good"

        responder.stop()  # down: connection refused, openssl's client fails
        assert listeners(responder.port) == []
        with pytest.raises(urllib.error.URLError) as refused:
            fetch(responder.url, data=b"")
        assert isinstance(refused.value.reason, ConnectionRefusedError)
        started = time.monotonic()
        down = ocsp_query(ca, leaf, url=responder.url, timeout=None)
        assert down.returncode != 0 and "Connection refused" in down.stderr, down.stderr
        assert time.monotonic() - started < 1

        responder.start()  # back up on the same URL
        assert verdict(ocsp_query(ca, leaf, url=responder.url), leaf) == "good"

        responder.delay = 30  # stop() cuts a pending answer short
        result: list[BaseException | bytes] = []
        client = threading.Thread(target=lambda: result.append(_catch(responder.url)))
        client.start()
        time.sleep(0.2)
        started = time.monotonic()
        responder.stop()
        client.join(5)
        assert time.monotonic() - started < 2 and isinstance(result[0], BaseException)
    finally:
        responder.close()
    assert listeners(responder.port) == []
    assert processes_under(tmp_path) == []
    assert not [t for t in threading.enumerate() if t.name == f"ocsp-{responder.port}"]


def _catch(url: str) -> BaseException | bytes:
    try:
        return fetch(url, data=b"")
    except Exception as exc:
        return exc


# ----------------------------------------------------------------------------------------------------------- HTTP


def test_http_serves_issuer_certificates_and_crls(ca: RevocationPKI, tmp_path: Path) -> None:
    leaf = ca.leaf("http-leaf", email="http@b.test")
    exts = openssl("x509", "-in", leaf.cert_path, "-noout", "-ext",
                   "authorityInfoAccess,crlDistributionPoints").stdout
    assert f"CA Issuers - URI:{ca.ca_issuers_url}" in exts and f"OCSP - URI:{ca.ocsp_url}" in exts
    assert f"URI:{ca.crl_url}" in exts
    i_exts = openssl("x509", "-in", ca.intermediate.cert_path, "-noout", "-ext",
                     "authorityInfoAccess,crlDistributionPoints").stdout
    assert ca.http.url("/R.cer") in i_exts and ca.http.url("/R.crl") in i_exts
    assert "OCSP" not in i_exts

    assert fetch(ca.ca_issuers_url) == ca.intermediate.der()
    assert fetch(ca.http.url("/R.cer")) == ca.root.der()
    cer = tmp_path / "I.cer"
    cer.write_bytes(fetch(ca.ca_issuers_url))
    subject = openssl("x509", "-inform", "DER", "-in", cer, "-noout", "-subject").stdout
    assert "CN = I" in subject

    crl = tmp_path / "I.crl"
    crl.write_bytes(fetch(ca.crl_url))
    assert crl.read_bytes() == ca.crl_der()
    shown = openssl("crl", "-inform", "DER", "-in", crl, "-CAfile", ca.intermediate.cert_path, "-noout", "-text")
    assert "verify OK" in shown.stderr
    serial = format(leaf.cert.serial_number, "X")
    assert serial not in shown.stdout.replace(":", "").upper()

    ca.revoke(leaf)
    crl.write_bytes(fetch(ca.crl_url))
    shown = openssl("crl", "-inform", "DER", "-in", crl, "-CAfile", ca.intermediate.cert_path, "-noout", "-text")
    assert "verify OK" in shown.stderr and serial in shown.stdout.replace(":", "").upper()
    assert ("GET", "/I.crl") in ca.http.requests()
    assert listeners(ca.http.port) == [f"127.0.0.1:{ca.http.port}"]
