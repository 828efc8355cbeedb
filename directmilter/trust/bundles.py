"""Trust bundles published at URLs, the way Direct trust communities distribute their anchors.

An ``anchors`` entry may be an ``http://`` or ``https://`` URL of a bundle (PKCS#7 ``.p7b``/``.p7c`` in DER or PEM,
or PEM certificates). The running milter fetches every bundle at start and again every refresh interval from a
background thread (:meth:`BundleStore.start`), so mail never waits for a publisher; without that thread (the CLI,
tests) a bundle is fetched when first needed and again once it is older than the interval. A refresh that fails
keeps the last good copy (logged), and a copy is kept on disk so a restart does not depend on
the publisher being up. A bundle that has never been fetched is a temporary failure: mail waits rather than being
refused for want of anchors.
"""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from directmilter.errors import ConfigError, TemporaryFailure
from directmilter.keys.load import parse_certificates
from directmilter.log import get_logger

log = get_logger("directmilter.trust.bundles")


def is_bundle_url(value: str) -> bool:
    """An anchors entry that names a bundle URL rather than a file (whether it is a good one: :func:`url_problem`)."""
    return value.strip().lower().startswith(("http://", "https://"))


def url_problem(value: str) -> str | None:
    """Why ``value`` is no usable trust bundle URL, or None. Spaces and control characters are refused: a URL
    with a newline, stored in a ``*.url`` file, would read back as something else."""
    text = value.strip()
    if not is_bundle_url(text):
        return "a trust bundle URL starts with http:// or https://"
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in text):
        return "a trust bundle URL has no spaces or control characters (percent-encode them)"
    try:
        host = urllib.parse.urlsplit(text).hostname
    except ValueError as exc:
        return f"not a URL ({exc})"
    return None if host else "a trust bundle URL names a host"


class BundleStore:
    """The anchors at bundle URLs, refreshed in the background by :meth:`start` or, without it, when next needed."""

    def __init__(self, *, refresh: float = 3600.0, timeout: float = 10.0, max_bytes: int = 4 << 20,
                 cache_dir: Path | None = None) -> None:
        self.refresh = refresh
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.cache_dir = cache_dir
        self._bundles: dict[str, tuple[float, tuple[x509.Certificate, ...]]] = {}
        self._lock = threading.Lock()  # guards _bundles
        self._fetching = threading.Lock()  # one download at a time
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    def anchors(self, urls: Sequence[str]) -> tuple[x509.Certificate, ...]:
        found: list[x509.Certificate] = []
        for url in urls:
            found.extend(c for c in self._bundle(url) if c not in found)
        return tuple(found)

    def start(self, urls: Sequence[str]) -> None:
        """Fetch ``urls`` now and every ``refresh`` seconds from a daemon thread, so mail never waits for one."""
        if self._refresher is not None or not urls:
            return
        self._refresher = threading.Thread(target=self._refresh_loop, args=(tuple(dict.fromkeys(urls)),),
                                           name="bundle-refresh", daemon=True)
        self._refresher.start()

    def close(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(self.timeout + 1)

    def _refresh_loop(self, urls: tuple[str, ...]) -> None:
        while not self._stop.is_set():
            for url in urls:
                with self._lock:
                    entry = self._bundles.get(url) or self._from_disk(url)
                try:
                    self._refresh(url, entry)
                except TemporaryFailure as exc:
                    log.warning("bundle_unavailable", url=url, error=str(exc))
            self._stop.wait(self.refresh)

    def _bundle(self, url: str) -> tuple[x509.Certificate, ...]:
        with self._lock:
            entry = self._bundles.get(url) or self._from_disk(url)
        background = self._refresher is not None and self._refresher.is_alive()
        if entry is not None and (background or time.monotonic() - entry[0] < self.refresh):
            return entry[1]
        return self._refresh(url, entry)

    def _refresh(self, url: str, entry: tuple[float, tuple[x509.Certificate, ...]] | None,
                 ) -> tuple[x509.Certificate, ...]:
        with self._fetching:
            try:
                data = self._fetch(url)
                certs = tuple(parse_certificates(data, Path(url), "trust bundle")[0])
            except (TemporaryFailure, ConfigError) as exc:
                if entry is None:
                    raise TemporaryFailure(f"trust bundle {url} is not available yet: {exc}") from exc
                log.warning("bundle_refresh_failed", url=url, error=str(exc), keeping=len(entry[1]))
                with self._lock:
                    self._bundles[url] = (time.monotonic(), entry[1])  # retry after the next interval
                return entry[1]
            with self._lock:
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
