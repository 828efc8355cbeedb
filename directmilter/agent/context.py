"""What the agent's operations share: configuration, discovery, the validator, extra chain certificates."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509

from directmilter.agent.crypto import CryptoRunner
from directmilter.config import Config, Direction
from directmilter.discovery.base import ChainedSources
from directmilter.trust.bundles import BundleStore
from directmilter.trust.validator import TrustValidator


@dataclass(frozen=True)
class AgentContext:
    config: Config
    source: ChainedSources
    validator: TrustValidator
    #: Certificates offered to path building besides those a message carries (the out-of-band store).
    intermediates: tuple[x509.Certificate, ...] = ()
    bundles: BundleStore = field(default_factory=BundleStore)
    #: Where sealing and opening run: this thread, or worker processes (see directmilter.agent.workers).
    crypto: CryptoRunner | None = None

    @property
    def runner(self) -> CryptoRunner:
        from directmilter.agent.crypto import InProcess

        return self.crypto if self.crypto is not None else InProcess(self.config)

    def anchors(self, address: str, direction: Direction) -> tuple[x509.Certificate, ...]:
        """A hosted address's anchors for one direction: configured files plus the trust bundles at their URLs."""
        static = self.config.anchors_for(address, direction)
        urls = self.config.bundles_for(address, direction)
        return static + tuple(c for c in self.bundles.anchors(urls) if c not in static) if urls else static
