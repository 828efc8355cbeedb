"""``directmilter lookup``: what every discovery method finds for an address, and what the agent would use.

The operator's first tool when a recipient is refused: each method (our hosted certificates, the out-of-band
store, DNS CERT, LDAP) is asked for the address and for its domain, and every certificate found is judged the way
Process Outgoing judges it — binding, RSA key, the sender's certificate policy for recipients, key usage, path to
the sender's anchors — with the reason when not.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from directmilter.agent.context import AgentContext
from directmilter.agent.outgoing import recipient_certificates
from directmilter.certfacts import describe_certificate
from directmilter.errors import DirectMilterError, TemporaryFailure
from directmilter.trust.binding import binding_error, bound_to, split_address


def explain(ctx: AgentContext, address: str, sender: str | None, moment: datetime | None = None) -> list[str]:
    parts = split_address(address)
    if parts is None:
        return [f"{address}: not an e-mail address"]
    judge = sender or _only_domain(ctx)
    anchors = ctx.anchors(judge, "outgoing") if judge else ()
    lines = [f"lookup {address} (trust judged with the outgoing anchors of {judge or 'nobody: give --sender'})"]
    for source in ctx.source.sources:
        method = getattr(source, "method", type(source).__name__)
        for name in (address, parts[1]):
            try:
                found = source.find(name)
            except TemporaryFailure as exc:
                lines.append(f"  {method:6} {name}: lookup failed (temporary): {exc.reason}")
                continue
            if not found:
                lines.append(f"  {method:6} {name}: nothing found")
            for cert in found:
                lines.append(f"  {method:6} {name}: {describe_certificate(cert)}")
                lines.append(f"         -> {_verdict(ctx, cert, address, anchors, judge, moment)}")
    if judge:
        try:
            usable = recipient_certificates(ctx, judge, address, moment)
            lines.append(f"result: {len(usable)} certificate(s) qualify; mail from {judge} would be encrypted to them")
        except DirectMilterError as exc:
            lines.append(f"result: refused: {exc.reason}")
    return lines


def _verdict(
    ctx: AgentContext, cert: x509.Certificate, address: str, anchors: tuple[x509.Certificate, ...],
    judge: str | None, moment: datetime | None,
) -> str:
    if bound_to(cert, address) is None:
        return "not used: " + binding_error(cert, address)
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        return "not used: no RSA key (needed for key transport)"
    violation = ctx.config.policy_for(judge or "", "recipients").violation(cert)
    if violation is not None:
        return f"not used: refused by the recipients policy{f' of {judge}' if judge else ''}: {violation}"
    if not anchors:
        return "bound to the address; trust not judged (no anchors)"
    try:
        ctx.validator.validate(cert, anchors, ctx.intermediates, moment=moment, key_usage={"key_encipherment"})
    except DirectMilterError as exc:
        return f"not used: {exc.reason}"
    return "QUALIFIES"


def _only_domain(ctx: AgentContext) -> str | None:
    domains = list(ctx.config.domains)
    return f"postmaster@{domains[0]}" if len(domains) == 1 else None
