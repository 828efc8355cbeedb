"""Trust bundles published at URLs, the way Direct trust communities distribute their anchors.

An ``anchors`` entry may be an ``http://`` or ``https://`` URL of a bundle (PKCS#7 ``.p7b``/``.p7c`` in DER or PEM,
or PEM certificates). A bundle is fetched when first needed and again once it is older than the refresh interval;
a refresh that fails keeps the last good copy (logged), and a copy is kept on disk so a restart does not depend on
the publisher being up. A bundle that has never been fetched is a temporary failure: mail waits rather than being
refused for want of anchors.
"""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from directmilter.errors import ConfigError, TemporaryFailure
from directmilter.keys.load import parse_certificates
from directmilter.log import get_logger

log = get_logger("directmilter.trust.bundles")


def is_bundle_url(value: str) -> bool:
    return value.strip().lower().startswith(("http://", "https://"))


class BundleStore:
    def __init__(self, *, refresh: float = 3600.0, timeout: float = 10.0, max_bytes: int = 4 << 20,
                 cache_dir: Path | None = None) -> None:
        self.refresh = refresh
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.cache_dir = cache_dir
        self._bundles: dict[str, tuple[float, tuple[x509.Certificate, ...]]] = {}
        self._lock = threading.Lock()

    def anchors(self, urls: Sequence[str]) -> tuple[x509.Certificate, ...]:
        found: list[x509.Certificate] = []
        for url in urls:
            found.extend(c for c in self._bundle(url) if c not in found)
        return tuple(found)

    def _bundle(self, url: str) -> tuple[x509.Certificate, ...]:
        with self._lock:
            entry = self._bundles.get(url) or self._from_disk(url)
            if entry is not None and time.monotonic() - entry[0] < self.refresh:
                return entry[1]
            try:
                data = self._fetch(url)
                certs = tuple(parse_certificates(data, Path(url), "trust bundle")[0])
            except (TemporaryFailure, ConfigError) as exc:
                if entry is None:
                    raise TemporaryFailure(f"trust bundle {url} is not available yet: {exc}") from exc
                log.warning("bundle_refresh_failed", url=url, error=str(exc), keeping=len(entry[1]))
                self._bundles[url] = (time.monotonic(), entry[1])  # retry after the next interval
                return entry[1]
            self._bundles[url] = (time.monotonic(), certs)
            self._to_disk(url, data)
            log.info("bundle_loaded", url=url, anchors=len(certs))
            return certs

    def _fetch(self, url: str) -> bytes:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                data: bytes = response.read(self.max_bytes + 1)
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise TemporaryFailure(f"cannot fetch: {exc}") from exc
        if len(data) > self.max_bytes:
            raise TemporaryFailure(f"larger than {self.max_bytes} bytes")
        return data

    def _disk_path(self, url: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / (hashlib.sha256(url.encode()).hexdigest() + ".bundle")

    def _from_disk(self, url: str) -> tuple[float, tuple[x509.Certificate, ...]] | None:
        path = self._disk_path(url)
        if path is None or not path.is_file():
            return None
        try:
            certs = tuple(parse_certificates(path.read_bytes(), path, "trust bundle cache")[0])
        except (OSError, ConfigError):
            return None
        return (float("-inf"), certs)  # stale at once: refreshed now, used if the refresh fails

    def _to_disk(self, url: str, data: bytes) -> None:
        path = self._disk_path(url)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_bytes(data)
            temporary.replace(path)
        except OSError as exc:
            log.warning("bundle_cache_write_failed", url=url, error=str(exc))
