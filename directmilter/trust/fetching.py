"""One HTTP client for AIA caIssuers, CRLs and OCSP, with CRLs kept until their nextUpdate.

pyhanko-certvalidator makes a fresh set of fetchers for every validation, so on its own every message would fetch
every CRL again. :class:`CachingFetcherBackend` keeps a CRL from a distribution point until its nextUpdate (at most
``crl_max_age``), so a burst of messages costs one download, and a publisher that goes down after a fetch does not
matter while the CRL is current (Applicability Statement 4.0: retrieve and store CRLs). Everything runs on the
validator's single event loop, so the cache needs no lock.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from asn1crypto import crl as asn1_crl
from pyhanko_certvalidator.fetchers.aiohttp_fetchers import AIOHttpFetcherBackend
from pyhanko_certvalidator.fetchers.aiohttp_fetchers.crl_client import AIOHttpCRLFetcher, _grab_crl
from pyhanko_certvalidator.fetchers.api import Fetchers
from pyhanko_certvalidator.fetchers.common_utils import FetchKind


class CRLCache:
    def __init__(self, max_age: float = 86400.0, max_entries: int = 1000) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, asn1_crl.CertificateList]] = {}
        self.downloads = 0

    def get(self, url: str) -> asn1_crl.CertificateList | None:
        entry = self._entries.get(url)
        if entry is None or entry[0] <= time.monotonic():
            self._entries.pop(url, None)
            return None
        return entry[1]

    def put(self, url: str, crl: asn1_crl.CertificateList) -> None:
        next_update = crl["tbs_cert_list"]["next_update"].native
        lifetime = self.max_age
        if isinstance(next_update, datetime):
            lifetime = min(lifetime, (next_update - datetime.now(UTC)).total_seconds())
        if lifetime <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[url] = (time.monotonic() + lifetime, crl)


class _CachingCRLFetcher(AIOHttpCRLFetcher):
    def __init__(self, cache: CRLCache, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cache = cache

    async def _single_fetch(self, url: str) -> Any:
        async def task() -> asn1_crl.CertificateList:
            cached = self._cache.get(url)
            if cached is not None:
                return cached
            self._charge(FetchKind.CRL)
            fetched = await _grab_crl(
                url, user_agent=self.user_agent, session=self.get_session(), timeout=self.per_request_timeout
            )
            self._cache.downloads += 1
            self._cache.put(url, fetched)
            return fetched

        return await self._post_fetch_task(url, task)  # type: ignore[no-untyped-call]


class CachingFetcherBackend(AIOHttpFetcherBackend):
    def __init__(self, per_request_timeout: float = 10.0, crl_max_age: float = 86400.0) -> None:
        super().__init__(per_request_timeout=per_request_timeout)
        self.crl_cache = CRLCache(crl_max_age)

    def get_fetchers(self) -> Fetchers:
        fetchers = super().get_fetchers()
        crl_fetcher = _CachingCRLFetcher(
            self.crl_cache, self.session, per_request_timeout=self.per_request_timeout,
            budget=getattr(fetchers.crl_fetcher, "_budget", None),  # share the budget of this validation
        )
        return Fetchers(ocsp_fetcher=fetchers.ocsp_fetcher, crl_fetcher=crl_fetcher,
                        cert_fetcher=fetchers.cert_fetcher)
