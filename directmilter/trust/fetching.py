"""One HTTP client for AIA caIssuers, CRLs and OCSP: bounded in size, with validated answers kept while current.

pyhanko-certvalidator makes a fresh set of fetchers for every validation, so on its own every message would fetch
every CRL, ask every OCSP responder and download every AIA intermediate again. :class:`CachingFetcherBackend` keeps
a CRL from a distribution point until its nextUpdate, an OCSP answer for a certificate until the answer's
nextUpdate, and the certificates at an AIA caIssuers URL for an hour (all at most ``max_age``), so a burst of
messages costs one download, and a publisher that goes down after a fetch does not matter while its answer is
current (Applicability Statement 4.0: retrieve and store CRLs).

Every response body is read through :class:`BoundedResponse`, which stops at ``max_bytes``: a hostile or broken
publisher can cost us a bounded download, never our memory. An oversized answer is a fetch failure like a refused
connection, so the revocation policy (soft-fail / hard-fail) decides what it means.

Every request (redirects included) is also taken from the message's :class:`~directmilter.budget.WorkBudget`, set
for the validation's task in :data:`message_budget`: past the message's count of fetches, in all or from one host,
the request is refused like a refused destination (and the validator does not let that pass as a soft failure).

Everything runs on the validator's single event loop, so the caches need no lock.
"""

from __future__ import annotations

import contextvars
import ssl
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import aiohttp
import yarl
from asn1crypto import crl as asn1_crl
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from pyhanko_certvalidator.errors import CertificateFetchError, CRLFetchError, OCSPFetchError
from pyhanko_certvalidator.fetchers.aiohttp_fetchers import AIOHttpFetcherBackend
from pyhanko_certvalidator.fetchers.aiohttp_fetchers.cert_fetch_client import AIOHttpCertificateFetcher
from pyhanko_certvalidator.fetchers.aiohttp_fetchers.crl_client import AIOHttpCRLFetcher, _grab_crl
from pyhanko_certvalidator.fetchers.aiohttp_fetchers.ocsp_client import AIOHttpOCSPFetcher
from pyhanko_certvalidator.fetchers.aiohttp_fetchers.util import LazySession
from pyhanko_certvalidator.fetchers.api import Fetchers
from pyhanko_certvalidator.fetchers.common_utils import FetchKind, complete_certificate_fetch_jobs
from pyhanko_certvalidator.util import issuer_serial

from directmilter.budget import WorkBudget
from directmilter.destinations import Network, address_problem

__all__ = ["DEFAULT_MAX_DOWNLOAD", "Answers", "BoundedResponse", "CachingFetcherBackend", "DestinationRefused",
           "ResponseTooLarge", "TimedCache", "message_budget"]

DEFAULT_MAX_DOWNLOAD = 10 << 20
"""Largest AIA certificate, CRL or OCSP answer read (bytes). Big community CRLs run to a few MiB."""

AIA_MAX_AGE = 3600.0
"""How long certificates fetched from an AIA caIssuers URL are reused (seconds); a CA may re-key, so not forever."""

OCSP_WITHOUT_NEXT_UPDATE = 300.0
"""How long an OCSP answer that names no nextUpdate is reused (seconds): a burst, not a day."""

K = TypeVar("K")
V = TypeVar("V")


class ResponseTooLarge(aiohttp.ClientPayloadError):
    """An HTTP body past the download limit. An aiohttp ClientError, so pyhanko reports it as a failed fetch."""


class BoundedResponse(aiohttp.ClientResponse):
    """A response whose :meth:`read` refuses to hold more than :attr:`max_bytes`."""

    max_bytes = DEFAULT_MAX_DOWNLOAD

    async def read(self) -> bytes:
        if self._body is None:
            declared = self.content_length
            if declared is not None and declared > self.max_bytes:
                self.close()
                raise ResponseTooLarge(f"{self.url} announces {declared} bytes, more than {self.max_bytes}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in self.content.iter_chunked(65536):
                size += len(chunk)
                if size > self.max_bytes:
                    self.close()
                    raise ResponseTooLarge(f"{self.url} sent more than {self.max_bytes} bytes")
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body


class DestinationRefused(aiohttp.ClientError):
    """A fetch to where certificates may not send us. An aiohttp ClientError: pyhanko reports a failed fetch."""


class _CheckedConnector(aiohttp.TCPConnector):
    """Connects only where :func:`address_problem` allows, after resolution (so a name that resolves to an
    internal address is caught too, and the address checked is the one connected to)."""

    def __init__(self, allowed: Sequence[Network], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._allowed = tuple(allowed)

    async def _resolve_host(self, host: str, port: int, traces: Any = None) -> Any:
        found = await super()._resolve_host(host, port, traces=traces)
        usable = [entry for entry in found if address_problem(entry["host"], self._allowed) is None]
        if not usable:
            reason = address_problem(found[0]["host"], self._allowed) if found else "no address"
            raise DestinationRefused(f"{host}: {reason}")
        return usable


async def _same_host_redirects_only(session: Any, context: Any, params: aiohttp.TraceRequestRedirectParams) -> None:
    """A redirect may not send a fetch to another host (each certificate URL is one host's to answer), and each
    one is another download from the message's budget."""
    location = params.response.headers.get("Location", "")
    target = params.url.join(yarl.URL(location))
    if target.host != params.url.host or target.port != params.url.port:
        raise DestinationRefused(f"{params.url} redirects to another host ({target.host}): refused")
    await _take_from_budget(session, context, aiohttp.TraceRequestStartParams("GET", target, params.headers))


#: The budget of the message whose validation is running in this task (None: not counted, e.g. trust bundles).
message_budget: contextvars.ContextVar[WorkBudget | None] = contextvars.ContextVar("message_budget", default=None)


async def _take_from_budget(session: Any, context: Any, params: aiohttp.TraceRequestStartParams) -> None:
    budget = message_budget.get()
    refused = budget.take_fetch(params.url.host or "") if budget is not None else None
    if refused is not None:
        raise DestinationRefused(f"{params.url}: not fetched, {refused}")


class _BoundedSession(LazySession):
    """pyhanko's lazily made session (bound to the loop that first uses it), reading through BoundedResponse,
    connecting only to allowed destinations, following redirects only on the same host, and taking every request
    from the message's budget."""

    def __init__(self, max_bytes: int, allowed: Sequence[Network] = ()) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._response_class = type("BoundedResponse", (BoundedResponse,), {"max_bytes": max_bytes})
        self._allowed = tuple(allowed)

    def get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            trace = aiohttp.TraceConfig()
            trace.on_request_start.append(_take_from_budget)
            trace.on_request_redirect.append(_same_host_redirects_only)
            self._session = aiohttp.ClientSession(
                connector=_CheckedConnector(self._allowed, ssl=ssl.create_default_context()),
                response_class=self._response_class,
                trace_configs=[trace],
            )
        session: aiohttp.ClientSession = self._session
        return session


class TimedCache(Generic[K, V]):
    """Entries that expire at their own time (a CRL's or OCSP answer's nextUpdate), capped at ``max_age``."""

    def __init__(self, max_age: float, max_entries: int = 1000) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.downloads = 0
        self.hits = 0

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= time.monotonic():
            self._entries.pop(key, None)
            return None
        self.hits += 1
        return entry[1]

    def put(self, key: K, value: V, next_update: object, *, default: float | None = None) -> None:
        lifetime = self.max_age if default is None else min(default, self.max_age)
        if isinstance(next_update, datetime):
            lifetime = min(self.max_age, (next_update - datetime.now(UTC)).total_seconds())
        if lifetime <= 0:
            return
        while len(self._entries) >= self.max_entries:
            self._entries.popitem(last=False)
        self._entries[key] = (time.monotonic() + lifetime, value)


class Answers:
    """What one validation fetched, kept in the caches only once that validation ended with a decision that
    rests on them (:meth:`keep`). A CRL, OCSP answer or AIA certificate is checked by the validation that uses it
    (signature, issuer, serial, freshness), not when it arrives: cached on arrival, one forged answer on a plain
    HTTP fetch would stand for every later message until its own nextUpdate, even after the genuine one is back.
    Until then the answer serves only the validation that fetched it."""

    def __init__(self) -> None:
        self._fetched: list[tuple[TimedCache[Any, Any], Any, Any, object, float | None]] = []
        self._mine: dict[tuple[int, Any], Any] = {}

    def add(self, cache: TimedCache[K, V], key: K, value: V, next_update: object,
            default: float | None = None) -> None:
        cache.downloads += 1
        self._fetched.append((cache, key, value, next_update, default))
        self._mine[(id(cache), key)] = value

    def get(self, cache: TimedCache[K, V], key: K) -> V | None:
        found = cache.get(key)
        return found if found is not None else self._mine.get((id(cache), key))

    def keep(self) -> int:
        """Put what was fetched into the caches (the validation that used it trusted it); returns how many."""
        for cache, key, value, next_update, default in self._fetched:
            cache.put(key, value, next_update, default=default)
        kept, self._fetched = len(self._fetched), []
        return kept


def _ocsp_next_update(response: asn1_ocsp.OCSPResponse) -> object:
    try:
        single = response["response_bytes"]["response"].parsed["tbs_response_data"]["responses"][0]
        return single["next_update"].native
    except (KeyError, IndexError, ValueError, TypeError):
        return None


def _ocsp_successful(response: asn1_ocsp.OCSPResponse) -> bool:
    try:
        return bool(response["response_status"].native == "successful")
    except (KeyError, ValueError):
        return False


class _CachingCertFetcher(AIOHttpCertificateFetcher):
    def __init__(self, cache: TimedCache[str, Any], answers: Answers, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cache = cache
        self._answers = answers

    def fetch_cert_issuers(self, cert: Any) -> Any:
        """Nothing for a self-signed certificate: no issuer anywhere can lead from it to an anchor (it is one, or
        it is a dead end), so a stranger's self-made certificate costs no download at all."""
        if isinstance(cert, asn1_x509.Certificate) and cert.self_signed in ("yes", "maybe"):
            return complete_certificate_fetch_jobs([])  # type: ignore[no-untyped-call]
        return super().fetch_cert_issuers(cert)

    async def fetch_certs(self, url: str, url_origin_type: str) -> Any:
        cached = self._answers.get(self._cache, url)
        if cached is not None:
            return cached
        try:
            fetched = await super().fetch_certs(url, url_origin_type)  # type: ignore[no-untyped-call]
        except TimeoutError:  # pyhanko catches aiohttp's errors, not the timeout: make it a failed fetch
            raise CertificateFetchError(f"{url} did not answer in time") from None
        self._answers.add(self._cache, url, fetched, None, default=AIA_MAX_AGE)
        return fetched


class _CachingCRLFetcher(AIOHttpCRLFetcher):
    def __init__(self, cache: TimedCache[str, asn1_crl.CertificateList], answers: Answers, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cache = cache
        self._answers = answers

    async def _single_fetch(self, url: str) -> Any:
        async def task() -> asn1_crl.CertificateList:
            cached = self._answers.get(self._cache, url)
            if cached is not None:
                return cached
            self._charge(FetchKind.CRL)
            try:
                fetched = await _grab_crl(
                    url, user_agent=self.user_agent, session=self.get_session(), timeout=self.per_request_timeout
                )
            except TimeoutError:
                raise CRLFetchError(f"{url} did not answer in time") from None
            self._answers.add(self._cache, url, fetched, fetched["tbs_cert_list"]["next_update"].native)
            return fetched

        return await self._post_fetch_task(url, task)  # type: ignore[no-untyped-call]


class _CachingOCSPFetcher(AIOHttpOCSPFetcher):
    def __init__(self, cache: TimedCache[Any, asn1_ocsp.OCSPResponse], answers: Answers, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cache = cache
        self._answers = answers

    async def _fetch(self, cert: Any, authority: Any) -> asn1_ocsp.OCSPResponse:
        key = (issuer_serial(cert), authority.hashable)
        cached = self._answers.get(self._cache, key)
        if cached is not None:
            return cached
        try:
            fetched: asn1_ocsp.OCSPResponse = await super()._fetch(cert, authority)
        except TimeoutError:
            raise OCSPFetchError("the OCSP responder did not answer in time") from None
        if _ocsp_successful(fetched):
            self._answers.add(self._cache, key, fetched, _ocsp_next_update(fetched), default=OCSP_WITHOUT_NEXT_UPDATE)
        else:
            self._cache.downloads += 1
        return fetched


class CachingFetcherBackend(AIOHttpFetcherBackend):
    def __init__(self, per_request_timeout: float = 10.0, max_age: float = 86400.0,
                 max_bytes: int = DEFAULT_MAX_DOWNLOAD, allowed: Sequence[Network] = ()) -> None:
        super().__init__(per_request_timeout=per_request_timeout)
        self.session = _BoundedSession(max_bytes, allowed)
        self.crl_cache: TimedCache[str, asn1_crl.CertificateList] = TimedCache(max_age)
        self.ocsp_cache: TimedCache[Any, asn1_ocsp.OCSPResponse] = TimedCache(max_age)
        self.aia_cache: TimedCache[str, Any] = TimedCache(max_age)

    def get_fetchers(self) -> Fetchers:
        """pyhanko's entry point: fetchers whose answers are never cached (use :meth:`for_validation`)."""
        return self.for_validation()[0]

    def for_validation(self) -> tuple[Fetchers, Answers]:
        """Fetchers for one validation, and what they fetch: :meth:`Answers.keep` once the validation trusted it."""
        fetchers = super().get_fetchers()
        shared: dict[str, Any] = {
            "per_request_timeout": self.per_request_timeout,
            "budget": getattr(fetchers.crl_fetcher, "_budget", None),  # share the budget of this validation
        }
        answers = Answers()
        return Fetchers(
            ocsp_fetcher=_CachingOCSPFetcher(self.ocsp_cache, answers, self.session, **shared),
            crl_fetcher=_CachingCRLFetcher(self.crl_cache, answers, self.session, **shared),
            cert_fetcher=_CachingCertFetcher(self.aia_cache, answers, self.session, **shared),
        ), answers
