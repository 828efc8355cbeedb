"""What the agent's operations share: configuration, discovery, the validator, extra chain certificates."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from directmilter.config import Config
from directmilter.discovery.base import ChainedSources
from directmilter.trust.validator import TrustValidator


@dataclass(frozen=True)
class AgentContext:
    config: Config
    source: ChainedSources
    validator: TrustValidator
    #: Certificates offered to path building besides those a message carries (the out-of-band store).
    intermediates: tuple[x509.Certificate, ...] = ()
