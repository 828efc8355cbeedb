"""Test harness: CRLs, an OCSP responder and a small CA with published revocation data, all on 127.0.0.1.

* :func:`make_crl` signs a DER CRL (CRL number + authority key identifier) with an :class:`~pki.Issued` CA's key.
* :class:`OcspResponder` answers OCSP for one issuing CA over HTTP on ``127.0.0.1``.  By default every answer is
  made and signed by the real ``openssl ocsp`` responder (``-index`` / ``-reqin`` / ``-respout``, one child process per
  request); ``backend="python"`` builds answers with cryptography's ``OCSPResponseBuilder`` instead.
* :class:`RevocationPKI` ties them together: root R, intermediate I and leaves whose AIA / CRL distribution point /
  OCSP URLs point at an :class:`~httpserver.HttpServer` and the responder::

      with RevocationPKI(tmp_path) as ca:
          bob = ca.leaf("bob", email="bob@direct.b.test")
          ...                                   # bob is good (CRL at ca.crl_url, OCSP at ca.ocsp_url)
          ca.revoke(bob)                        # now revoked in /I.crl and in OCSP answers

Why openssl is not run as ``openssl ocsp -port``: OpenSSL 3.0's responder listens on ``[::]:PORT`` (every address,
dual stack); ``-port`` takes a bare number only (``-port 127.0.0.1:N`` is "Can't parse ... as a number") and a
``-url http://127.0.0.1:N/`` is used for its port only.  It also never re-reads ``index.txt`` without ``-multi``, and
with ``-multi`` it checks for changes *before* blocking in accept(), so the first request after a change still gets
the old answer (and a SIGTERMed ``-multi`` parent lingers until its children die).  Running ``openssl ocsp`` per
request behind our own 127.0.0.1 listener avoids all of that: every answer reflects the index at that moment.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import http.server
import os
import socket
import socketserver
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from asn1crypto import algos as asn1_algos
from asn1crypto import core as asn1_core
from asn1crypto import crl as asn1_crl
from asn1crypto import keys as asn1_keys
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from httpserver import HttpServer
from mta import LOOPBACK
from pki import PKI, HashName, Issued, KeyType, PrivateKey

__all__ = [
    "OcspBackend",
    "OcspRequestRecord",
    "OcspResponder",
    "RevocationPKI",
    "make_crl",
]

OPENSSL = "openssl"
OcspBackend = Literal["openssl", "python"]
CertLike = x509.Certificate | Issued | int
RevokedEntry = tuple[CertLike, datetime.datetime] | tuple[CertLike, datetime.datetime, x509.ReasonFlags | None]

_BUILDER_HASHES: dict[str, hashes.SHA256 | hashes.SHA384 | hashes.SHA512] = {
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}
_WEAK_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"sha1": hashes.SHA1, "md5": hashes.MD5}
# openssl's names for CRL reason codes (ca index "revocation date,reason" field)
_OPENSSL_REASONS: dict[x509.ReasonFlags, str] = {
    x509.ReasonFlags.unspecified: "unspecified",
    x509.ReasonFlags.key_compromise: "keyCompromise",
    x509.ReasonFlags.ca_compromise: "CACompromise",
    x509.ReasonFlags.affiliation_changed: "affiliationChanged",
    x509.ReasonFlags.superseded: "superseded",
    x509.ReasonFlags.cessation_of_operation: "cessationOfOperation",
    x509.ReasonFlags.certificate_hold: "certificateHold",
    x509.ReasonFlags.remove_from_crl: "removeFromCRL",
}


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _aware(when: datetime.datetime) -> datetime.datetime:
    """Naive datetimes are taken as UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


def _certificate(cert: x509.Certificate | Issued) -> x509.Certificate:
    return cert.cert if isinstance(cert, Issued) else cert


def _serial(cert: CertLike) -> int:
    return cert if isinstance(cert, int) else _certificate(cert).serial_number


# ------------------------------------------------------------------------------------------------------------ CRLs

_crl_number_lock = threading.Lock()
_last_crl_number = 0


def _next_crl_number() -> int:
    """Increasing CRL numbers across the test process (milliseconds since the epoch, bumped when equal)."""
    global _last_crl_number
    with _crl_number_lock:
        _last_crl_number = max(_last_crl_number + 1, int(time.time() * 1000))
        return _last_crl_number


def _authority_key_identifier(issuer: x509.Certificate, key: PrivateKey) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _resign_crl(crl_der: bytes, key: PrivateKey, hash_name: str) -> bytes:
    """Re-sign a CRL with a hash cryptography's builders refuse (SHA-1, MD5), as pki does for certificates."""
    algo_hash = _WEAK_HASHES[hash_name]()
    if isinstance(key, rsa.RSAPrivateKey):
        algo = asn1_algos.SignedDigestAlgorithm({"algorithm": f"{hash_name}_rsa", "parameters": asn1_core.Null()})
    elif hash_name == "md5":
        raise ValueError("MD5 signatures are RSA-only (no ecdsa-with-MD5 OID)")
    else:
        algo = asn1_algos.SignedDigestAlgorithm({"algorithm": f"{hash_name}_ecdsa"})
    tbs = asn1_crl.CertificateList.load(crl_der)["tbs_cert_list"]
    tbs["signature"] = algo
    tbs_der = tbs.dump(force=True)
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(tbs_der, padding.PKCS1v15(), algo_hash)
    else:
        signature = key.sign(tbs_der, ec.ECDSA(algo_hash))
    new = asn1_crl.CertificateList(
        {"tbs_cert_list": asn1_crl.TbsCertList.load(tbs_der), "signature_algorithm": algo, "signature": signature}
    )
    return bytes(new.dump())


def make_crl(
    issuer: Issued,
    revoked: Iterable[RevokedEntry] = (),
    *,
    this_update: datetime.datetime | None = None,
    next_update: datetime.datetime | None = None,
    hash: HashName = "sha256",
    number: int | None = None,
) -> bytes:
    """A DER CRL signed by ``issuer``'s key, listing ``revoked`` ((cert | Issued | serial, revocation date[, reason])).

    Extensions: CRL number (``number``, default an increasing millisecond clock) and the authority key identifier
    (the issuer's SKI).  ``this_update`` defaults to now, ``next_update`` to ``this_update`` + 1 day; naive datetimes
    are UTC.  ``hash`` "sha1"/"md5" are signed with SHA-256 first and re-signed (cryptography refuses them).
    """
    this = _aware(this_update) if this_update is not None else _now()
    after = _aware(next_update) if next_update is not None else this + datetime.timedelta(days=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(this)
        .next_update(after)
        .add_extension(x509.CRLNumber(number if number is not None else _next_crl_number()), critical=False)
        .add_extension(_authority_key_identifier(issuer.cert, issuer.key), critical=False)
    )
    for entry in revoked:
        target, when = entry[0], entry[1]
        reason = entry[2] if len(entry) == 3 else None
        revoked_builder = x509.RevokedCertificateBuilder().serial_number(_serial(target)).revocation_date(_aware(when))
        if reason is not None:
            revoked_builder = revoked_builder.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(revoked_builder.build())
    crl = builder.sign(issuer.key, _BUILDER_HASHES.get(hash, hashes.SHA256()))
    der = crl.public_bytes(serialization.Encoding.DER)
    return der if hash in _BUILDER_HASHES else _resign_crl(der, issuer.key, hash)


def crl_pem(der: bytes) -> bytes:
    """PEM form of a DER CRL."""
    return x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM)


# ------------------------------------------------------------------------------------------------- OCSP responder


@dataclass(frozen=True)
class OcspRequestRecord:
    """One HTTP request the responder answered."""

    method: str  # "POST" or "GET"
    path: str
    serials: tuple[int, ...]  # serial numbers asked about (empty when the request could not be parsed)
    response_status: str  # asn1crypto name: "successful", "malformed_request", "try_later", "unauthorized", ...
    cert_statuses: tuple[str, ...]  # "good" / "revoked" / "unknown" per answered serial (successful answers only)
    at: float  # time.monotonic() when the request was read


@dataclass
class _Entry:
    serial: int
    not_after: datetime.datetime
    subject: str
    revoked_at: datetime.datetime | None = None
    reason: x509.ReasonFlags | None = None


def _index_time(when: datetime.datetime) -> str:
    """ca index date: UTCTime YYMMDDHHMMSSZ up to 2049, GeneralizedTime after (as openssl ca writes them)."""
    when = _aware(when).astimezone(datetime.UTC)
    return when.strftime("%y%m%d%H%M%SZ" if when.year < 2050 else "%Y%m%d%H%M%SZ")


def _oneline(name: x509.Name) -> str:
    """X509_NAME_oneline-like subject for the index (cosmetic: openssl ocsp looks entries up by serial)."""
    parts = []
    for attr in name:
        value = attr.value if isinstance(attr.value, str) else attr.value.hex()
        parts.append(f"{attr.rfc4514_attribute_name}={value}")
    return "".join(f"/{p}" for p in parts).replace("\t", " ").replace("\n", " ")


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)


class _OcspHttpServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = False  # server_close() joins the handler threads: no openssl child outlives stop()
    block_on_close = True
    owner: OcspResponder

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skip HTTPServer's getfqdn() (a reverse lookup)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _OcspHandler(http.server.BaseHTTPRequestHandler):
    server: _OcspHttpServer
    timeout = 10  # a client that connects and says nothing cannot hold stop() up for long

    def setup(self) -> None:
        super().setup()
        self.server.owner._connection(self.connection, open_=True)

    def finish(self) -> None:
        self.server.owner._connection(self.connection, open_=False)
        with contextlib.suppress(OSError):
            super().finish()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._answer(self.rfile.read(length) if length else b"")

    def do_GET(self) -> None:
        # RFC 6960 A.1: GET {url}/{url-encoding of base-64 encoding of the DER request}
        encoded = urllib.parse.unquote(self.path.partition("?")[0].lstrip("/"))
        try:
            request = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            request = b""
        self._answer(request)

    def _answer(self, request: bytes) -> None:
        at = time.monotonic()
        owner = self.server.owner
        if owner.delay > 0 and owner._stopping.wait(owner.delay):
            self.close_connection = True
            return  # stopping: hang up without an answer
        response, record = owner._respond(self.command, self.path, request, at)
        owner._record(record)  # before answering: a client that has its answer finds the request logged
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/ocsp-response")
            self.send_header("Content-Length", str(len(response)))
            self.end_headers()
            self.wfile.write(response)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass  # requests are recorded in OcspResponder.log


class OcspResponder:
    """OCSP for the certificates issued by ``issuer``, over HTTP on 127.0.0.1 (POST and RFC 6960 GET).

    ``root`` is a directory of its own: it holds the ca-style ``index.txt`` (+ ``index.txt.attr`` with
    ``unique_subject = no``).  Only serials registered with :meth:`set_good` / :meth:`revoke` are good or revoked;
    anything else (or a CertID naming another issuer) is "unknown".

    ``backend="openssl"``: each request runs ``openssl ocsp -index index.txt -CA issuer.pem -rsigner signer.pem
    -rkey signer.key -reqin - -respout - [-nmin N]`` (a few ms); the index is read afresh each time, so
    :meth:`revoke` takes effect on the very next request.  ``backend="python"``: cryptography builds and signs the
    answer (one CertID per request only, like cryptography's parser; more gives malformedRequest).
    Both sign with ``signer`` (default: the issuer itself, i.e. CA-signed responses), name the responder by subject,
    include the signer certificate, echo a request nonce, and set nextUpdate = now + ``next_update_minutes``
    (None: no nextUpdate).

    The port is bound (but not listening) from construction on, so :attr:`url` is known before :meth:`start` and
    stays the same across :meth:`stop` / :meth:`start`; while not started, connections are refused.
    :attr:`unsuccessful` (e.g. ``OCSPResponseStatus.TRY_LATER``) answers every request with that error status;
    :attr:`delay` holds every answer back that many seconds (cut short by :meth:`stop`).
    """

    def __init__(
        self,
        root: Path,
        issuer: Issued,
        *,
        signer: Issued | None = None,
        backend: OcspBackend = "openssl",
        next_update_minutes: int | None = 5,
        port: int = 0,
    ) -> None:
        if backend not in ("openssl", "python"):
            raise ValueError(f"unknown OCSP backend {backend!r}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.issuer = issuer
        self.signer = signer or issuer
        self.backend: OcspBackend = backend
        self.next_update_minutes = next_update_minutes
        self.index_path = self.root / "index.txt"
        self.unsuccessful: ocsp.OCSPResponseStatus | None = None
        self.delay: float = 0.0
        self.log: list[OcspRequestRecord] = []
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._conns: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        (self.root / "index.txt.attr").write_text("unique_subject = no\n")
        self._write_index()
        self.port = port
        self._server = self._bound_server()
        self.port = self._server.server_port

    # ------------------------------------------------------------------------------------------------ the index

    def set_good(self, cert: x509.Certificate | Issued) -> None:
        """Register ``cert`` (issued by :attr:`issuer`) as valid: a ``V`` line in the index."""
        self._update(cert, None, None)

    def revoke(
        self,
        cert: x509.Certificate | Issued,
        when: datetime.datetime | None = None,
        reason: x509.ReasonFlags | None = None,
    ) -> None:
        """Mark ``cert`` revoked since ``when`` (default now), optionally with a CRL reason: an ``R`` line."""
        self._update(cert, _aware(when) if when is not None else _now(), reason)

    def forget(self, cert: CertLike) -> None:
        """Drop ``cert`` from the index: the responder answers "unknown" for it."""
        with self._lock:
            self._entries.pop(_serial(cert), None)
            self._write_index()

    def status_of(self, cert: CertLike) -> str:
        """What the index says: "good", "revoked" or "unknown"."""
        with self._lock:
            entry = self._entries.get(_serial(cert))
        return "unknown" if entry is None else "good" if entry.revoked_at is None else "revoked"

    def _update(
        self, cert: x509.Certificate | Issued, revoked_at: datetime.datetime | None, reason: x509.ReasonFlags | None
    ) -> None:
        c = _certificate(cert)
        if c.issuer != self.issuer.cert.subject:
            raise ValueError(
                f"{c.subject.rfc4514_string()} was not issued by {self.issuer.cert.subject.rfc4514_string()}"
            )
        entry = _Entry(c.serial_number, c.not_valid_after_utc, _oneline(c.subject), revoked_at, reason)
        with self._lock:
            self._entries[entry.serial] = entry
            self._write_index()

    def _write_index(self) -> None:
        """Rewrite index.txt atomically (a concurrent openssl sees the old or the new file, never half of one)."""
        lines = []
        for e in self._entries.values():
            revoked = ""
            if e.revoked_at is not None:
                revoked = _index_time(e.revoked_at)
                if e.reason is not None:
                    revoked += "," + _OPENSSL_REASONS[e.reason]
            serial = format(e.serial, "X")
            serial = serial.zfill(len(serial) + len(serial) % 2)
            status = "V" if e.revoked_at is None else "R"
            lines.append(f"{status}\t{_index_time(e.not_after)}\t{revoked}\t{serial}\tunknown\t{e.subject}\n")
        tmp = self.index_path.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        os.replace(tmp, self.index_path)

    # --------------------------------------------------------------------------------------------- answering

    def _respond(self, method: str, path: str, request: bytes, at: float) -> tuple[bytes, OcspRequestRecord]:
        serials: tuple[int, ...] = ()
        try:
            parsed = asn1_ocsp.OCSPRequest.load(request)
            serials = tuple(int(r["req_cert"]["serial_number"].native) for r in parsed["tbs_request"]["request_list"])
        except Exception:  # not an OCSP request at all
            parsed = None
        if self.unsuccessful is not None:
            response = _unsuccessful(self.unsuccessful)
        elif parsed is None or not serials:
            response = _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        elif self.backend == "openssl":
            response = self._openssl_response(request)
        else:
            response = self._python_response(request)
        return response, _describe(method, path, serials, response, at)

    def _openssl_response(self, request: bytes) -> bytes:
        cmd = [
            OPENSSL, "ocsp", "-index", str(self.index_path), "-CA", str(self.issuer.cert_path),
            "-rsigner", str(self.signer.cert_path), "-rkey", str(self.signer.key_path),
            "-reqin", "-", "-respout", "-",
        ]  # fmt: skip
        if self.next_update_minutes is not None:
            cmd += ["-nmin", str(self.next_update_minutes)]
        # no lock: index.txt is replaced atomically, openssl reads either version whole
        proc = subprocess.run(cmd, input=request, capture_output=True, check=False, timeout=10)
        if proc.returncode != 0 or not proc.stdout:
            return _unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)
        return proc.stdout

    def _python_response(self, request: bytes) -> bytes:
        try:
            req = ocsp.load_der_ocsp_request(request)
        except ValueError:  # e.g. more than one CertID
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        algorithm = req.hash_algorithm
        name_hash = hashes.Hash(algorithm)
        name_hash.update(self.issuer.cert.subject.public_bytes())
        spki = asn1_keys.PublicKeyInfo.load(
            self.issuer.cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        key_hash = hashes.Hash(algorithm)
        key_hash.update(spki["public_key"].contents[1:])  # the BIT STRING's bits, without the unused-bits octet
        with self._lock:
            entry = self._entries.get(req.serial_number)
        ours = (req.issuer_name_hash, req.issuer_key_hash) == (name_hash.finalize(), key_hash.finalize())
        now = _now()
        if entry is None or not ours:
            status, revoked_at, reason = ocsp.OCSPCertStatus.UNKNOWN, None, None
        elif entry.revoked_at is None:
            status, revoked_at, reason = ocsp.OCSPCertStatus.GOOD, None, None
        else:
            status, revoked_at, reason = ocsp.OCSPCertStatus.REVOKED, entry.revoked_at, entry.reason
        next_update = (
            now + datetime.timedelta(minutes=self.next_update_minutes) if self.next_update_minutes is not None else None
        )
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                req.issuer_name_hash, req.issuer_key_hash, req.serial_number, algorithm,
                status, now, next_update, revoked_at, reason,
            )
            .responder_id(ocsp.OCSPResponderEncoding.NAME, self.signer.cert)
            .certificates([self.signer.cert])
        )
        with contextlib.suppress(x509.ExtensionNotFound):
            nonce = req.extensions.get_extension_for_class(x509.OCSPNonce).value
            builder = builder.add_extension(nonce, critical=False)
        return builder.sign(self.signer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    # --------------------------------------------------------------------------------------------- inspection

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/"

    @property
    def requests(self) -> int:
        """How many requests have been answered (see :attr:`log` for what they asked and got)."""
        with self._lock:
            return len(self.log)

    def clear(self) -> None:
        with self._lock:
            self.log.clear()

    def _record(self, record: OcspRequestRecord) -> None:
        with self._lock:
            self.log.append(record)

    def _connection(self, conn: socket.socket, *, open_: bool) -> None:
        with self._lock:
            if open_:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    # ---------------------------------------------------------------------------------------------- lifecycle

    def _bound_server(self) -> _OcspHttpServer:
        """A server bound to 127.0.0.1:port but not yet listening (connections are refused until start())."""
        server = _OcspHttpServer((LOOPBACK, self.port), _OcspHandler, bind_and_activate=False)
        server.owner = self
        try:
            server.server_bind()
        except OSError:
            server.server_close()
            raise
        return server

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> OcspResponder:
        if self._thread is None:
            if self._server.socket.fileno() < 0:  # close()d: bind the same port again
                self._server = self._bound_server()
            self._stopping.clear()
            self._server.server_activate()  # listen()
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"ocsp-{self.port}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering ("down"): pending delays end without an answer, open connections are cut, handler
        threads (and their openssl children) are waited for; the port stays reserved, connections are refused."""
        if self._thread is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._thread.join(5)
        self._thread = None
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()  # joins the handler threads
        self._server = self._bound_server()

    def close(self) -> None:
        """Stop and release the port (start() binds it again, if it is still free)."""
        self.stop()
        self._server.server_close()

    def __enter__(self) -> OcspResponder:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OcspResponder({self.url}, issuer={self.issuer.name!r}, backend={self.backend!r})"


def _describe(method: str, path: str, serials: tuple[int, ...], response: bytes, at: float) -> OcspRequestRecord:
    status = "unparsable"
    cert_statuses: tuple[str, ...] = ()
    with contextlib.suppress(Exception):
        parsed = asn1_ocsp.OCSPResponse.load(response)
        status = str(parsed["response_status"].native)
        if status == "successful":
            data = parsed.basic_ocsp_response["tbs_response_data"]
            cert_statuses = tuple(str(r["cert_status"].name) for r in data["responses"])
    return OcspRequestRecord(method, path, serials, status, cert_statuses, at)


# -------------------------------------------------------------------------------------------------- RevocationPKI


class RevocationPKI:
    """Root R, intermediate I and leaves under I, with revocation data published on an :class:`HttpServer`.

    Published paths (after :meth:`publish`, which the constructor and :meth:`revoke` call): ``/R.cer``, ``/R.crl``,
    ``/I.cer``, ``/I.crl`` (DER; names follow ``root_name`` / ``intermediate_name``).  The CRLs are also written
    beside the certificates as ``I.crl`` (DER) and ``I.crl.pem``.

    * I: AIA caIssuers -> ``/R.cer``, CRL DP -> ``/R.crl`` (its issuer's; no OCSP for I).
    * leaves (:meth:`leaf`): AIA caIssuers -> ``/I.cer``, CRL DP -> ``/I.crl``, AIA OCSP -> :attr:`ocsp` (an
      :class:`OcspResponder` for I, every leaf registered as good).

    ``http`` may be shared with other tests' paths; one made here is started and stopped with this object.
    """

    def __init__(
        self,
        pki: PKI | Path,
        *,
        http: HttpServer | None = None,
        root_name: str = "R",
        intermediate_name: str = "I",
        backend: OcspBackend = "openssl",
        key: KeyType = "rsa2048",
    ) -> None:
        self.pki = pki if isinstance(pki, PKI) else PKI(pki)
        self._own_http = http is None
        self._http_stopped = False
        self.http = http if http is not None else HttpServer()
        self.root_name, self.intermediate_name = root_name, intermediate_name
        self.root = self.pki.root(root_name, key=key)
        self.intermediate = self.pki.intermediate(
            intermediate_name,
            self.root,
            key=key,
            aia_ca_issuers=self.http.url(f"/{root_name}.cer"),
            crl_url=self.http.url(f"/{root_name}.crl"),
        )
        self.ocsp = OcspResponder(self.pki.directory / f"{intermediate_name}-ocsp", self.intermediate, backend=backend)
        self._revoked: dict[str, dict[int, tuple[datetime.datetime, x509.ReasonFlags | None]]] = {
            root_name: {},
            intermediate_name: {},
        }
        self._crls: dict[str, bytes] = {}
        self.publish()

    # ------------------------------------------------------------------------------------------------ URLs, files

    @property
    def ca_issuers_url(self) -> str:
        return self.http.url(f"/{self.intermediate_name}.cer")

    @property
    def crl_url(self) -> str:
        return self.http.url(f"/{self.intermediate_name}.crl")

    @property
    def ocsp_url(self) -> str:
        return self.ocsp.url

    def crl_der(self, ca: str | None = None) -> bytes:
        """The CRL last published for ``ca`` (a name; default the intermediate)."""
        return self._crls[ca or self.intermediate_name]

    def crl_file(self, ca: str | None = None, *, pem: bool = True) -> Path:
        """Where the CRL of ``ca`` (default the intermediate) was written: ``<name>.crl.pem`` or ``<name>.crl``."""
        return self.pki.directory / f"{ca or self.intermediate_name}.crl{'.pem' if pem else ''}"

    # -------------------------------------------------------------------------------------------------- actions

    def leaf(
        self,
        name: str,
        *,
        email: str | None = None,
        ocsp: bool = True,
        crl: bool = True,
        aia: bool = True,
        **kwargs: Any,
    ) -> Issued:
        """A leaf under I (other :meth:`PKI.leaf` keywords pass through), registered as good with :attr:`ocsp`."""
        issued = self.pki.leaf(
            name,
            self.intermediate,
            email=email,
            aia_ca_issuers=self.ca_issuers_url if aia else None,
            crl_url=self.crl_url if crl else None,
            ocsp_url=self.ocsp_url if ocsp else None,
            **kwargs,
        )
        self.ocsp.set_good(issued)
        return issued

    def revoke(
        self,
        cert: x509.Certificate | Issued,
        when: datetime.datetime | None = None,
        reason: x509.ReasonFlags | None = None,
    ) -> None:
        """Revoke a leaf (I's CRL and the OCSP responder) or the intermediate (R's CRL), then :meth:`publish`."""
        c = _certificate(cert)
        when = _aware(when) if when is not None else _now()
        if c.issuer == self.intermediate.cert.subject:
            self._revoked[self.intermediate_name][c.serial_number] = (when, reason)
            self.ocsp.revoke(c, when, reason)
        elif c.issuer == self.root.cert.subject:
            self._revoked[self.root_name][c.serial_number] = (when, reason)
        else:
            raise ValueError(f"{c.subject.rfc4514_string()} was issued by neither {self.root_name} nor "
                             f"{self.intermediate_name}")
        self.publish()

    def publish(self, *, next_update: datetime.datetime | None = None) -> None:
        """(Re)sign both CRLs, write them to disk and serve certificates and CRLs on :attr:`http`."""
        for ca in (self.root, self.intermediate):
            der = make_crl(
                ca,
                [(serial, when, reason) for serial, (when, reason) in self._revoked[ca.name].items()],
                next_update=next_update,
            )
            self._crls[ca.name] = der
            self.crl_file(ca.name, pem=False).write_bytes(der)
            self.crl_file(ca.name).write_bytes(crl_pem(der))
            self.http.set(f"/{ca.name}.cer", ca.der(), "application/pkix-cert")
            self.http.set(f"/{ca.name}.crl", der, "application/pkix-crl")

    # ------------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> RevocationPKI:
        """Start serving (again: an own HttpServer, which cannot restart, is replaced on the same port)."""
        if self._own_http and self._http_stopped:
            self.http = HttpServer(port=self.http.port)
            self._http_stopped = False
            self.publish()
        self.http.start()
        self.ocsp.start()
        return self

    def stop(self) -> None:
        """Stop the responder (its port is released) and an own HttpServer; a shared one is left alone."""
        self.ocsp.close()
        if self._own_http:
            self.http.stop()
            self._http_stopped = True

    def __enter__(self) -> RevocationPKI:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
