"""Who a recipient (or a signer) is: finding other parties' certificates.

A :class:`CertificateSource` answers for one name, an address or a domain; the agent asks for the address first and
for its domain only when no usable address certificate is found (Applicability Statement 5.2). This package holds
the out-of-band store; DNS CERT and LDAP sources plug in behind the same interface.
"""

from directmilter.discovery.base import CertificateSource, ChainedSources
from directmilter.discovery.local import LocalCertificates

__all__ = ["CertificateSource", "ChainedSources", "LocalCertificates"]
