"""RFC 5280 path validation (AS 4.0, 4.2) with pyhanko-certvalidator, behind a blocking API.

:class:`TrustValidator` is what the synchronous milter threads call. pyhanko-certvalidator is asyncio-only,
so the validator owns one long-lived event loop running in a daemon thread (started on first use, stopped by
:meth:`TrustValidator.close`); each call submits a coroutine to it with
:func:`asyncio.run_coroutine_threadsafe` and waits for the answer with a timeout. All public methods are
thread-safe.

Policy (the Applicability Statement leaves these choices to the STA):

- The trust anchors are always the explicit list given for the address or domain; the system trust store is
  never consulted. As in RFC 5280 §6 an anchor is a name plus a key: it may be a root, an intermediate CA
  (AS-4.2.3-4) or a leaf, and the anchor's own validity period is not checked (RFC 5280 §6.1 takes the
  anchor as trusted input; an expired root still anchors its still-valid subordinates, and an intermediate
  configured as anchor is enough on its own).
- A leaf that is itself an anchor (AS-4.2.3-5, e.g. a self-signed address certificate) is trusted directly
  when its DER encoding equals a configured anchor's *exactly* and it is valid at the validation time (and,
  if it is self-signed, its self-signature verifies with an allowed hash). Another certificate that merely
  shares an anchor's subject and key is *not* trusted that way (pyhanko-certvalidator would trust it without
  looking at its validity); such an anchor is left out when validating that certificate.
- Every certificate between the anchor and the leaf, the leaf included, must be within its validity period,
  be signed with an allowed algorithm by the key of the one above it, and pass the rest of RFC 5280 §6.1
  (basicConstraints, pathLen, keyCertSign, name constraints, policies, unknown critical extensions).
- Forbidden certificate signature hashes: MD2 and MD5 always, SHA-1 unless ``allow_sha1`` (default: allowed,
  since deployed Direct PKIs such as the reference implementation's still sign with SHA-1). RSA issuer keys
  of fewer than ``min_rsa_bits`` (default 1024: RFC 5751 makes verification with 1024-2048-bit keys a MUST;
  pyhanko's own default would refuse anything below 2048) are refused.
- Revocation: ``revocation_mode`` soft-fail, hard-fail or require (per call). The fetcher backend (AIA caIssuers,
  CRL, OCSP; see :mod:`directmilter.trust.fetching`) is plugged in through ``fetcher_backend``; it lives on the
  validator's loop and is closed by :meth:`TrustValidator.close`. Without it nothing is fetched. A path's
  :attr:`ValidatedPath.revocation_status` is "good" only when every certificate below the anchor names a CRL or
  OCSP source and all were checked without a soft failure; otherwise it is "undetermined", never "not revoked".
- Key usage (AS-4.1.3-1, optional): ``key_usage={"digital_signature"}`` etc. requires those keyUsage bits
  when the leaf has a keyUsage extension; a leaf without the extension is unrestricted (RFC 5280 §4.2.1.3).
  This check is done here rather than by pyhanko's ``validate_usage``, which refuses a leaf without a
  keyUsage extension.

Errors are :class:`~directmilter.errors.TrustError` subclasses naming the certificate (subject, issuer,
serial) and the cause; a loop that does not answer in time gives
:class:`~directmilter.errors.DependencyTimeout`; an unexpected exception (a bug, here or in pyhanko) gives
:class:`~directmilter.errors.TemporaryFailure`, so the message is deferred, never accepted.

Results (paths and TrustErrors alike) are kept in a small LRU cache, see :class:`TrustValidator`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator.errors import (
    DisallowedAlgorithmError,
    ExpiredError,
    InsufficientRevinfoError,
    InvalidCertificateError,
    NotYetValidError,
    PathBuildingError,
    PathError,
    PathValidationError,
    RevokedError,
    ValidationError,
)
from pyhanko_certvalidator.policy_decl import DisallowWeakAlgorithmsPolicy

from directmilter.budget import WorkBudget
from directmilter.certfacts import describe_certificate
from directmilter.errors import (
    CertificateExpired,
    CertificateRevoked,
    ConfigError,
    DependencyTimeout,
    DirectMilterError,
    FetchBudgetSpent,
    NoTrustPath,
    RevocationUnavailable,
    TemporaryFailure,
    TrustError,
)
from directmilter.memo import fingerprint, kept
from directmilter.trust.fetching import message_budget

__all__ = ["KEY_USAGES", "REVOCATION_MODES", "TrustValidator", "ValidatedPath"]

#: pyhanko's revocation policies: soft-fail (status undetermined = accepted, logged), hard-fail (undetermined =
#: untrusted), require (revocation information must be present for every certificate).
REVOCATION_MODES = ("soft-fail", "hard-fail", "require")

KEY_USAGES = frozenset(
    {
        "digital_signature",
        "non_repudiation",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    }
)
"""Names accepted in ``key_usage`` (the spelling pyhanko-certvalidator and asn1crypto use)."""

_KEY_USAGE_ATTR = {
    "digital_signature": "digital_signature",
    "non_repudiation": "content_commitment",
    "key_encipherment": "key_encipherment",
    "data_encipherment": "data_encipherment",
    "key_agreement": "key_agreement",
    "key_cert_sign": "key_cert_sign",
    "crl_sign": "crl_sign",
    "encipher_only": "encipher_only",
    "decipher_only": "decipher_only",
}

REVOCATION_UNDETERMINED = "undetermined"
REVOCATION_GOOD = "good"


def _names_revocation_source(cert: x509.Certificate) -> bool:
    """True when the certificate points at a CRL distribution point or an OCSP responder."""
    try:
        if cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value:
            return True
    except (x509.ExtensionNotFound, ValueError):
        pass
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return any(d.access_method == x509.oid.AuthorityInformationAccessOID.OCSP for d in access)


@dataclass(frozen=True)
class ValidatedPath:
    """A validated certificate path.

    ``certificates`` runs **leaf first, anchor last**: ``certificates[0]`` is the validated certificate and
    ``certificates[-1]`` the trust anchor it chains to. For a leaf that is itself an anchor the tuple has one
    element.
    """

    certificates: tuple[x509.Certificate, ...]
    moment: datetime
    """The validation time (UTC)."""
    revocation_status: str = REVOCATION_UNDETERMINED
    """"good" when every certificate below the anchor was checked against its CRL or OCSP source, else
    "undetermined": never claim "not revoked" without evidence."""
    soft_failures: tuple[str, ...] = ()
    """Problems soft-fail revocation checking tolerated (e.g. a CRL that could not be fetched), to log."""

    @property
    def leaf(self) -> x509.Certificate:
        return self.certificates[0]

    @property
    def anchor(self) -> x509.Certificate:
        return self.certificates[-1]

    @property
    def directly_trusted(self) -> bool:
        """True when the leaf is itself a configured anchor (path of length one)."""
        return len(self.certificates) == 1


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@kept(256)
def _set_digest(certs: tuple[x509.Certificate, ...]) -> bytes:
    """:func:`_digest` of certificates, kept: the anchors and intermediates of a domain are the same every message."""
    return _digest([_der(c) for c in certs])


def _digest(ders: Sequence[bytes]) -> bytes:
    h = hashlib.sha256()
    for der in sorted(hashlib.sha256(d).digest() for d in ders):
        h.update(der)
    return h.digest()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string() or "(empty subject)"
    except (ValueError, TypeError):
        return "(unparseable subject)"


def _anchor_list(anchors: Sequence[x509.Certificate]) -> str:
    return ", ".join(_subject(a) for a in anchors) if anchors else "none"


def _identity(cert: x509.Certificate) -> tuple[bytes, bytes]:
    """(subject, public key) in DER: what RFC 5280 and pyhanko-certvalidator take as an anchor's identity."""
    tbs = asn1_x509.Certificate.load(_der(cert))["tbs_certificate"]
    return tbs["subject"].dump(), tbs["subject_public_key_info"].dump()


def _hash_name(cert: x509.Certificate) -> str | None:
    try:
        algorithm = cert.signature_hash_algorithm
    except Exception:  # unsupported signature algorithm: pyhanko decides
        return None
    return None if algorithm is None else algorithm.name.replace("-", "").lower()


def _sig_algorithm_name(cert: x509.Certificate) -> str:
    oid = cert.signature_algorithm_oid
    name = getattr(oid, "_name", None)
    return name if isinstance(name, str) and name != "Unknown OID" else oid.dotted_string


_POSITION = re.compile(r"intermediate certificate (\d+)")


class _Request:
    """One validation request, with the inputs in both libraries' forms."""

    def __init__(
        self,
        cert: x509.Certificate,
        anchors: Sequence[x509.Certificate],
        intermediates: Sequence[x509.Certificate],
        moment: datetime,
        point_in_time: bool,
        revocation_mode: str = "soft-fail",
        budget: WorkBudget | None = None,
    ) -> None:
        self.cert = cert
        self.budget = budget
        self.revocation_mode = revocation_mode
        self.point_in_time = point_in_time
        self.anchors = tuple(anchors)
        self.intermediates = tuple(intermediates)
        self.moment = moment
        self.by_der: dict[bytes, x509.Certificate] = {}
        for c in (*self.anchors, *self.intermediates, cert):
            self.by_der.setdefault(_der(c), c)

    def to_crypto(self, cert: asn1_x509.Certificate) -> x509.Certificate:
        der = cert.dump()
        found = self.by_der.get(der)
        return found if found is not None else x509.load_der_x509_certificate(der)


class TrustValidator:
    """Blocking, thread-safe RFC 5280 path validation against explicit trust anchors.

    Cache: results of :meth:`validate` (the :class:`ValidatedPath`, or the :class:`TrustError` raised) are
    kept in an LRU of ``cache_size`` entries keyed by (SHA-256 of the leaf DER, digest of the anchor set,
    digest of the intermediate set, validation time, required key usages). When no ``moment`` is given the
    time part of the key is the current minute, so a result is reused for at most the rest of that minute (a
    certificate expiring within it may be accepted up to a minute late) and is never hit again afterwards; an
    explicit ``moment`` is keyed exactly. Timeouts and internal errors are not cached. ``cache_size=0``
    disables the cache.
    """

    def __init__(
        self,
        *,
        allow_sha1: bool = True,
        timeout: float = 20.0,
        min_rsa_bits: int = 1024,
        revocation_mode: str = "soft-fail",
        fetcher_backend: Any | None = None,
        cache_size: int = 1024,
        time_tolerance: timedelta = timedelta(seconds=30),  # clock skew with CRL/OCSP publishers
    ) -> None:
        if revocation_mode not in REVOCATION_MODES:
            raise ConfigError(f"unknown revocation mode {revocation_mode!r} (soft-fail, hard-fail, require)")
        self.allow_sha1 = allow_sha1
        self.timeout = timeout
        self.min_rsa_bits = min_rsa_bits
        self.revocation_mode = revocation_mode
        self.time_tolerance = time_tolerance
        self.weak_hash_algos: frozenset[str] = frozenset({"md2", "md5"} | (set() if allow_sha1 else {"sha1"}))
        self._fetcher_backend = fetcher_backend
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._cache: collections.OrderedDict[tuple[Any, ...], ValidatedPath | TrustError] = (
            collections.OrderedDict()
        )
        self._cache_size = cache_size
        self.cache_hits = 0  # for the metrics endpoint
        self.cache_misses = 0
        self._cache_lock = threading.Lock()

    # --- event loop --------------------------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()

                thread = threading.Thread(target=run, name="directmilter-trust-loop", daemon=True)
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def close(self) -> None:
        """Stop the loop thread (and close a plugged-in fetcher backend); a later call starts a new one."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if self._fetcher_backend is not None and hasattr(self._fetcher_backend, "close"):
            with contextlib.suppress(Exception):  # closing is best effort
                asyncio.run_coroutine_threadsafe(self._fetcher_backend.close(), loop).result(self.timeout)

        async def cancel_pending() -> None:
            current = asyncio.current_task()
            for task in asyncio.all_tasks():
                if task is not current:
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_pending(), loop).result(self.timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(self.timeout)
        if not thread.is_alive():
            loop.close()

    def __enter__(self) -> TrustValidator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- cache -------------------------------------------------------------------------------------

    def _cache_get(self, key: tuple[Any, ...]) -> ValidatedPath | TrustError | None:
        if self._cache_size <= 0:
            return None
        with self._cache_lock:
            value = self._cache.get(key)
            if value is None:
                self.cache_misses += 1
            else:
                self.cache_hits += 1
            if value is not None:
                self._cache.move_to_end(key)
            return value

    def _cache_put(self, key: tuple[Any, ...], value: ValidatedPath | TrustError) -> None:
        if self._cache_size <= 0:
            return
        with self._cache_lock:
            self._cache[key] = value
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    # --- public API --------------------------------------------------------------------------------

    def validate(
        self,
        cert: x509.Certificate,
        anchors: Sequence[x509.Certificate],
        intermediates: Sequence[x509.Certificate] = (),
        *,
        moment: datetime | None = None,
        key_usage: set[str] | frozenset[str] | None = None,
        revocation_mode: str | None = None,
        budget: WorkBudget | None = None,
    ) -> ValidatedPath:
        """Validate ``cert`` up to one of ``anchors``, building the path through ``intermediates`` if needed.

        ``moment`` (timezone-aware) validates at another time than now. ``key_usage`` names keyUsage bits the
        leaf must allow (see :data:`KEY_USAGES`). Returns the path, leaf first; raises :class:`NoTrustPath`,
        :class:`CertificateExpired`, :class:`CertificateRevoked` or another :class:`TrustError` when the
        certificate is not trusted, :class:`DependencyTimeout` when validation does not finish within
        ``timeout`` seconds and :class:`TemporaryFailure` on an internal error.

        ``budget`` is the message's (:mod:`directmilter.budget`): the validation ends by its deadline
        (:class:`WorkTimeExceeded`) and its downloads are taken from it; a validation that a refused download left
        without a clean answer raises :class:`FetchBudgetSpent`, never a soft failure. Neither is kept in the
        cache: the next message has a budget of its own.
        """
        usages = frozenset(key_usage or ())
        mode = revocation_mode or self.revocation_mode
        if mode not in REVOCATION_MODES:
            raise ValueError(f"unknown revocation mode {mode!r}")
        unknown = usages - KEY_USAGES
        if unknown:
            raise ValueError(f"unknown key usage(s): {', '.join(sorted(unknown))}")
        if moment is not None and moment.utcoffset() is None:
            raise ValueError("moment must be timezone-aware")
        now = datetime.now(UTC)
        when = now if moment is None else moment.astimezone(UTC)
        bucket: Any = now.replace(second=0, microsecond=0) if moment is None else when

        key = (
            fingerprint(cert),
            _set_digest(tuple(anchors)),
            _set_digest(tuple(intermediates)),
            bucket,
            usages,
            mode,
        )
        cached = self._cache_get(key)
        if isinstance(cached, ValidatedPath):
            return cached
        if isinstance(cached, TrustError):
            raise type(cached)(cached.reason)

        request = _Request(cert, anchors, intermediates, when, point_in_time=moment is not None, revocation_mode=mode,
                           budget=budget)
        try:
            result = self._validate(request, usages)
        except FetchBudgetSpent:
            raise
        except TrustError as e:
            self._cache_put(key, e)
            raise
        except DirectMilterError:
            raise
        except Exception as e:  # a bug, or an input nobody foresaw: defer the message, never accept it
            raise TemporaryFailure(
                f"internal error validating certificate ({describe_certificate(cert)}): "
                f"{type(e).__name__}: {e}"
            ) from e
        self._cache_put(key, result)
        return result

    # --- implementation ----------------------------------------------------------------------------

    def _validate(self, request: _Request, usages: frozenset[str]) -> ValidatedPath:
        cert = request.cert
        if not request.anchors:
            raise NoTrustPath(f"no trust anchors configured for certificate ({describe_certificate(cert)})")

        leaf_der = _der(cert)
        if any(_der(a) == leaf_der for a in request.anchors):
            path = self._direct_trust(request)
        else:
            path = self._run_pyhanko(request)
        self._check_key_usage(cert, usages)
        return path

    def _check_validity(self, cert: x509.Certificate, moment: datetime, what: str = "certificate") -> None:
        tol = self.time_tolerance
        if moment + tol < cert.not_valid_before_utc:
            raise CertificateExpired(
                f"{what} ({describe_certificate(cert)}) not yet valid until {_iso(cert.not_valid_before_utc)}"
            )
        if moment - tol > cert.not_valid_after_utc:
            raise CertificateExpired(
                f"{what} ({describe_certificate(cert)}) expired {_iso(cert.not_valid_after_utc)}"
            )

    def _direct_trust(self, request: _Request) -> ValidatedPath:
        """The leaf is byte for byte an anchor: trusted if valid at the moment (and soundly self-signed)."""
        cert = request.cert
        self._check_validity(cert, request.moment)
        if cert.issuer == cert.subject:
            hash_name = _hash_name(cert)
            if hash_name in self.weak_hash_algos:
                raise TrustError(
                    f"certificate ({describe_certificate(cert)}) signed with {hash_name} "
                    f"({_sig_algorithm_name(cert)}), which is forbidden"
                )
            try:
                cert.verify_directly_issued_by(cert)
            except (InvalidSignature, ValueError, TypeError) as e:
                # a self-issued anchor signed by another key (not self-signed) is still an anchor: only a
                # signature that claims to be its own and fails is refused
                if isinstance(e, InvalidSignature) and _self_signed_by_key_id(cert):
                    raise TrustError(
                        f"signature of certificate ({describe_certificate(cert)}) does not verify"
                    ) from None
        return ValidatedPath(certificates=(cert,), moment=request.moment)

    def _context(
        self, request: _Request, roots: list[asn1_x509.Certificate], others: list[asn1_x509.Certificate],
        fetchers: Any | None = None,
    ) -> ValidationContext:
        """The pyhanko ValidationContext for one validation (one per call: it caches validated paths)."""
        policy = DisallowWeakAlgorithmsPolicy(  # type: ignore[no-untyped-call]
            weak_hash_algos=self.weak_hash_algos,
            rsa_key_size_threshold=self.min_rsa_bits,
        )
        fetching = self._fetcher_backend is not None
        return ValidationContext(
            trust_roots=roots,
            other_certs=others,
            # "now" is left to pyhanko: an explicit moment switches it to point-in-time validation, where
            # revocations dated after the moment do not count
            moment=request.moment if request.point_in_time else None,
            allow_fetching=fetching,
            fetcher_backend=self._fetcher_backend if fetching and fetchers is None else None,
            fetchers=fetchers,
            revocation_mode=request.revocation_mode,
            algorithm_usage_policy=policy,
            time_tolerance=self.time_tolerance,
        )

    def _run_pyhanko(self, request: _Request) -> ValidatedPath:
        cert = request.cert
        leaf_identity = _identity(cert)
        # An anchor sharing the leaf's subject and key would make pyhanko trust the leaf without checking it
        # (anchors are name + key): leave such anchors out, only an exact DER match is trusted directly.
        usable = [a for a in request.anchors if _identity(a) != leaf_identity]
        roots = [_to_asn1(a, "trust anchor") for a in usable]
        others = []
        for i in request.intermediates:
            try:
                others.append(_to_asn1(i, "intermediate"))
            except TrustError:
                continue  # a malformed extra certificate cannot be part of a path: ignore it
        leaf = _to_asn1(cert, "certificate")

        async def run() -> tuple[Any, list[str]]:
            message_budget.set(request.budget)  # this task's (and its subtasks') downloads are the message's
            # What this validation fetches is cached only if the validation decided on it: a path validated with
            # no soft failure, or a revocation found (see fetching.Answers). A forged or stale answer is not kept.
            per_validation = getattr(self._fetcher_backend, "for_validation", None)
            fetchers, answers = per_validation() if per_validation is not None else (None, None)
            context = self._context(request, roots, others, fetchers)
            validator = CertificateValidator(leaf, validation_context=context)
            try:
                path = await validator.async_validate_path()
            except RevokedError:
                if answers is not None:
                    answers.keep()
                raise
            soft = [str(e) for e in context.soft_fail_exceptions]
            if answers is not None and not soft:
                answers.keep()
            return path, soft

        loop = self._ensure_loop()
        if threading.current_thread() is self._thread:
            raise TemporaryFailure("internal error: TrustValidator.validate called from its own event loop")
        budget = request.budget
        what = f"validating certificate ({describe_certificate(cert)})"
        timeout = self.timeout
        if budget is not None:
            budget.deadline.check(what)
            timeout = min(timeout, budget.deadline.remaining())
        refused_before = budget.refused if budget is not None else 0
        future = asyncio.run_coroutine_threadsafe(run(), loop)
        try:
            path, soft = future.result(timeout)
        except (concurrent.futures.TimeoutError, TimeoutError):
            future.cancel()
            if budget is not None:
                budget.deadline.check(what)
            raise DependencyTimeout(f"{what} took longer than {self.timeout:g} s") from None
        except (PathError, ValidationError) as e:
            _check_not_cut_short(request, refused_before)
            try:
                translated = self._translate(request, e, usable)
            except Exception:  # never let the wording of a refusal turn it into something else
                translated = TrustError(f"certificate ({describe_certificate(cert)}) is not trusted: {e}")
            raise translated from None
        except concurrent.futures.CancelledError:
            raise TemporaryFailure(
                f"validation of certificate ({describe_certificate(cert)}) was cancelled"
            ) from None
        except Exception as e:  # a bug here or in pyhanko: defer, never accept
            raise TemporaryFailure(
                f"internal error validating certificate ({describe_certificate(cert)}): "
                f"{type(e).__name__}: {e}"
            ) from e

        if soft:
            _check_not_cut_short(request, refused_before)
        chain = tuple(request.to_crypto(c) for c in path.iter_certs(include_root=True))
        checked = self._fetcher_backend is not None and not soft and all(map(_names_revocation_source, chain[1:]))
        return ValidatedPath(
            certificates=tuple(reversed(chain)), moment=request.moment, soft_failures=tuple(soft),
            revocation_status=REVOCATION_GOOD if checked else REVOCATION_UNDETERMINED,
        )

    def _check_key_usage(self, cert: x509.Certificate, usages: frozenset[str]) -> None:
        if not usages:
            return
        try:
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            return  # RFC 5280 4.2.1.3: no keyUsage extension, no restriction
        except (ValueError, TypeError) as e:
            raise TrustError(
                f"certificate ({describe_certificate(cert)}) has an unreadable keyUsage extension: {e}"
            ) from None
        missing = []
        for usage in sorted(usages):
            try:
                allowed = bool(getattr(ku, _KEY_USAGE_ATTR[usage]))
            except ValueError:  # encipher_only/decipher_only without key_agreement
                allowed = False
            if not allowed:
                missing.append(usage.replace("_", " "))
        if missing:
            raise TrustError(
                f"certificate ({describe_certificate(cert)}) is not valid for {', '.join(missing)} (keyUsage)"
            )

    # --- error translation -------------------------------------------------------------------------

    def _translate(
        self, request: _Request, error: Exception, anchors: Sequence[x509.Certificate]
    ) -> TrustError | RevocationUnavailable:
        cert = request.cert
        message = str(error)
        if isinstance(error, PathBuildingError) or (
            isinstance(error, InvalidCertificateError) and "self-signed" in message
        ):
            return NoTrustPath(self._no_path_reason(request, anchors))

        path_certs: list[x509.Certificate] = []
        if isinstance(error, PathValidationError):
            try:
                below_anchor = error.original_path.iter_certs(include_root=False)
                path_certs = [request.to_crypto(c) for c in below_anchor]
            except Exception:
                path_certs = []
        # path_certs runs from below the anchor down to the leaf (pyhanko's order)
        culprit, what = self._culprit(message, path_certs, cert)

        if isinstance(error, ExpiredError):
            expired = [c for c in path_certs if c.not_valid_after_utc == error.expired_dt]
            culprit = expired[0] if expired else culprit
            what = self._role(culprit, cert)
            return CertificateExpired(
                f"{what} ({describe_certificate(culprit)}) expired {_iso(error.expired_dt)}"
                + self._of_leaf(culprit, cert)
            )
        if isinstance(error, NotYetValidError):
            early = [c for c in path_certs if c.not_valid_before_utc == error.valid_from]
            culprit = early[0] if early else culprit
            what = self._role(culprit, cert)
            return CertificateExpired(
                f"{what} ({describe_certificate(culprit)}) not yet valid until {_iso(error.valid_from)}"
                + self._of_leaf(culprit, cert)
            )
        if isinstance(error, RevokedError):
            return CertificateRevoked(
                f"{what} ({describe_certificate(culprit)}) revoked "
                f"{_iso(error.revocation_dt)} ({error.reason.human_friendly})" + self._of_leaf(culprit, cert)
            )
        if isinstance(error, DisallowedAlgorithmError):
            hash_name = _hash_name(culprit)
            if hash_name in self.weak_hash_algos:
                return TrustError(
                    f"{what} ({describe_certificate(culprit)}) signed with {hash_name} "
                    f"({_sig_algorithm_name(culprit)}), which is forbidden" + self._of_leaf(culprit, cert)
                )
            detail = message.split("Reason: ", 1)[-1].rstrip(".") if "Reason: " in message else message
            return TrustError(
                f"{what} ({describe_certificate(culprit)}) signed with a forbidden algorithm: {detail}"
                + self._of_leaf(culprit, cert)
            )
        if isinstance(error, InsufficientRevinfoError):
            # Only hard-fail / require get here: the CRL or OCSP server could not be reached or answered nothing
            # usable. That is a dependency failure, so the message waits (4.x.x) rather than being refused.
            return RevocationUnavailable(
                f"revocation status of {what} ({describe_certificate(culprit)}) could not be determined "
                f"({request.revocation_mode} policy): {_strip(message)}" + self._of_leaf(culprit, cert)
            )
        if "signature" in message and "could not be verified" in message:
            return TrustError(
                f"signature of {what} ({describe_certificate(culprit)}) does not verify with the key of its "
                f"issuer" + self._of_leaf(culprit, cert)
            )
        return TrustError(
            f"{what} ({describe_certificate(culprit)}) is not trusted: {_strip(message)}"
            + self._of_leaf(culprit, cert)
        )

    @staticmethod
    def _role(culprit: x509.Certificate, leaf: x509.Certificate) -> str:
        return "certificate" if culprit is leaf or _der(culprit) == _der(leaf) else "intermediate"

    def _of_leaf(self, culprit: x509.Certificate, leaf: x509.Certificate) -> str:
        if self._role(culprit, leaf) == "certificate":
            return ""
        return f", in the path of certificate ({describe_certificate(leaf)})"

    def _culprit(
        self, message: str, path_certs: list[x509.Certificate], leaf: x509.Certificate
    ) -> tuple[x509.Certificate, str]:
        """The certificate a pyhanko message is about ("intermediate certificate N" counts from 1)."""
        m = _POSITION.search(message)
        if m and path_certs:
            index = int(m.group(1)) - 1
            if 0 <= index < len(path_certs):
                found = path_certs[index]
                return found, self._role(found, leaf)
        return leaf, "certificate"

    def _no_path_reason(self, request: _Request, anchors: Sequence[x509.Certificate]) -> str:
        cert = request.cert
        names = _anchor_list(request.anchors)
        head = f"no path to a trust anchor for certificate ({describe_certificate(cert)}) (anchors: {names})"
        if cert.issuer == cert.subject and not any(_der(a) == _der(cert) for a in request.anchors):
            return f"{head}: it is self-signed and not itself a configured trust anchor"
        # walk up by issuer name through the supplied intermediates to find where the chain breaks
        current = cert
        seen = {_der(cert)}
        while True:
            issuer_name = current.issuer
            if any(a.subject == issuer_name for a in anchors):
                return (
                    f"{head}: anchor {_subject_of_name(issuer_name)} is configured, but it did not issue "
                    f"{'this certificate' if current is cert else 'intermediate ' + _subject(current)} "
                    f"(key identifier or signature mismatch)"
                )
            candidates = [
                i for i in request.intermediates if i.subject == issuer_name and _der(i) not in seen
            ]
            if not candidates:
                known = [i for i in request.intermediates if i.subject == issuer_name]
                if known and current.subject != issuer_name:
                    return (
                        f"{head}: intermediate {_subject_of_name(issuer_name)} is known, "
                        f"but it did not issue "
                        f"{'this certificate' if current is cert else 'intermediate ' + _subject(current)} "
                        f"(key identifier or signature mismatch)"
                    )
                return f"{head}: no certificate for its issuer {_subject_of_name(issuer_name)} was found"
            current = candidates[0]
            seen.add(_der(current))
            if current.issuer == current.subject:
                return (
                    f"{head}: its chain ends at {_subject(current)}, which is not a configured trust anchor"
                )


def _check_not_cut_short(request: _Request, refused_before: int) -> None:
    """A validation that ended without a clean answer after the message's budget refused one of its downloads is
    refused for that reason: not a soft failure (which would pass), not whatever the missing answer led to."""
    budget = request.budget
    if budget is not None and budget.refused > refused_before:
        raise FetchBudgetSpent(f"certificate ({describe_certificate(request.cert)}): not validated, "
                               f"{budget.first_refusal}")


def _subject_of_name(name: x509.Name) -> str:
    try:
        return name.rfc4514_string() or "(empty name)"
    except (ValueError, TypeError):
        return "(unparseable name)"


def _strip(message: str) -> str:
    prefix = "The path could not be validated because "
    return message[len(prefix):] if message.startswith(prefix) else message


def _self_signed_by_key_id(cert: x509.Certificate) -> bool:
    """True unless the certificate's AKI names another key than its own (self-issued, not self-signed)."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except (x509.ExtensionNotFound, ValueError, TypeError):
        return True
    return aki.key_identifier is None or aki.key_identifier == ski.digest


def _to_asn1(cert: x509.Certificate, role: str) -> asn1_x509.Certificate:
    """The asn1crypto form pyhanko-certvalidator works on, fully parsed now so a malformed certificate is a
    TrustError here rather than an exception in the middle of validation."""
    try:
        parsed = asn1_x509.Certificate.load(_der(cert))
        parsed.native  # noqa: B018 - forces a full parse
        return parsed
    except Exception as e:
        raise TrustError(
            f"{role} ({describe_certificate(cert)}) cannot be parsed for path validation: {e}"
        ) from None
