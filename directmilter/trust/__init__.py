"""Trust: certificate-to-address binding (AS 4.1) and path validation to trust anchors (AS 4.0, 4.2)."""

from directmilter.trust.binding import (
    Binding,
    binding_error,
    bound_to,
    bound_to_domain,
    describe_certificate,
)
from directmilter.trust.validator import KEY_USAGES, TrustValidator, ValidatedPath

__all__ = [
    "KEY_USAGES",
    "Binding",
    "TrustValidator",
    "ValidatedPath",
    "binding_error",
    "bound_to",
    "bound_to_domain",
    "describe_certificate",
]
