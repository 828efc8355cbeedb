"""What ``directmilter check-config`` prints: the settings in force, what is hosted with which keys and anchors,
and warnings; and the key list the sample file and the man page are checked against."""

from __future__ import annotations

import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from directmilter import certfacts
from directmilter.config.model import (
    DIRECTIONS,
    FLAT_SECTIONS,
    REQUIRED_CIPHERS,
    REQUIRED_DIGESTS,
    Config,
    Party,
    settings_of,
)
from directmilter.keys.identity import PrivateIdentity
from directmilter.policy import DEFAULTS as ACTION_DEFAULTS
from directmilter.postfix import describe as describe_postfix
from directmilter.postfix import warnings as postfix_warnings
from directmilter.trust.certificate_policy import DIRECTIONS as POLICY_DIRECTIONS

__all__ = ["describe", "keys", "section_line"]


def section_line(name: str, section: Any) -> str:
    """``[milter] socket = unix:...; socket_mode = 0660; ...``: every key of a flat section with the value in
    force, in the file's vocabulary."""
    shown = "; ".join(f"{f.name} = {f.metadata['kind'].show(getattr(section, f.name))}"
                      for f in settings_of(type(section)))
    return f"[{name}] {shown}"


def keys() -> dict[str, dict[str, str]]:
    """Section -> key -> its one-line meaning, for every flat section (the documentation must name them all)."""
    return {name: {f.name: f.metadata["doc"] for f in settings_of(model)}
            for name, (_, model) in FLAT_SECTIONS.items()}


def _utc(value: datetime.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _cert_line(cert: x509.Certificate) -> str:
    return (
        f"subject {cert.subject.rfc4514_string()!r}, issuer {cert.issuer.rfc4514_string()!r}, "
        f"serial {cert.serial_number:#x}, notAfter {_utc(cert.not_valid_after_utc)}"
    )


def _key_line(identity: PrivateIdentity) -> str:
    key = identity.private_key
    kind = f"RSA {key.key_size}" if isinstance(key, rsa.RSAPrivateKey) else f"EC {key.curve.name}"
    chain = f", chain {len(identity.chain)}" if identity.chain else ""
    return f"{_cert_line(identity.certificate)}, {kind}{chain}, from {identity.source}"


def _names_in(cert: x509.Certificate) -> set[str]:
    found = certfacts.names(cert)
    return {n.lower() for n in (*found.rfc822, *found.dns)}


def _identity_warnings(party: Party, owner: str, now: datetime.datetime) -> list[str]:
    warnings: list[str] = []
    for index, identity in enumerate(party.identities, 1):
        cert = identity.certificate
        label = f"{owner} key {index} (subject {cert.subject.rfc4514_string()!r}, serial {cert.serial_number:#x})"
        if cert.not_valid_after_utc < now:
            warnings.append(f"warning: {label} expired {_utc(cert.not_valid_after_utc)}")
        elif cert.not_valid_before_utc > now:
            warnings.append(f"warning: {label} is not valid before {_utc(cert.not_valid_before_utc)}")
        key = identity.private_key
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
            warnings.append(f"warning: {label} is RSA {key.key_size}; use 2048 bits or more")
        if party.name not in _names_in(cert):
            what = "rfc822Name" if "@" in party.name else "dNSName"
            warnings.append(
                f"warning: {label} does not name {party.name} as a subjectAltName {what} (Applicability "
                "Statement 4.1): peers may refuse to trust it for this "
                + ("address" if "@" in party.name else "domain")
            )
    return warnings


def describe(config: Config, now: datetime.datetime | None = None) -> list[str]:
    """Human-readable lines for ``directmilter check-config``: what is hosted, with which keys and anchors.

    Lines starting with ``warning:`` flag problems that do not stop loading (expired identity certificates, a
    hosted party without keys or anchors, ...). Nothing secret is printed: no key material, no passwords.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    crypto = config.crypto
    lines = [f"configuration {config.path}"]
    lines += [section_line(name, getattr(config, attribute)) for name, (attribute, _) in FLAT_SECTIONS.items()]
    lines.append("actions: " + ", ".join(f"{condition} {config.actions.action_for(condition)}"
                                         for condition in ACTION_DEFAULTS))
    warnings: list[str] = []
    if config.postfix is None:
        lines.append("postfix: not read ([milter] postfix_config; /etc/postfix has no main.cf)")
        warnings.append("warning: Postfix's configuration is not read: aliases and bcc maps that would copy "
                        "decrypted mail off the host are not checked, and address extensions are not recognised")
    else:
        lines.append(describe_postfix(config.postfix))
        witness = config.notify.reinject if config.notify.commit_witness else None
        warnings.extend(postfix_warnings(config.postfix, config.domains,
                                         local_submission=config.milter.local_submission, witness=witness))
    for required in REQUIRED_DIGESTS:
        if required not in crypto.accept_digests:
            warnings.append(f"warning: accept_digests lacks {required}, which receivers must support (AS 2.6)")
    for required in REQUIRED_CIPHERS:
        if required not in crypto.accept_ciphers:
            warnings.append(f"warning: accept_ciphers lacks {required}, which receivers must support (AS 2.7)")
    if not config.domains:
        warnings.append("warning: no hosted domain: add a [domains.\"...\"] table")

    def party_lines(kind: str, party: Party, inherited: Party | None) -> None:
        anchors = []
        for direction in DIRECTIONS:
            own = party.anchors(direction)
            if own is not None:
                anchors.append(f"{direction} anchors {len(own)}")
            elif inherited is not None:
                anchors.append(f"{direction} anchors from the domain")
            else:
                anchors.append(f"{direction} anchors 0")
        keys = f"{len(party.identities)} key(s)" if party.identities or inherited is None else "domain keys"
        policy = (f"revocation {config.revocation_for(party.name)}, routing check "
                  f"{'on' if config.checks_routing(party.name) else 'off'}")
        lines.append(f"{kind} {party.name}: {keys}, {', '.join(anchors)}; {policy}")
        for job in POLICY_DIRECTIONS:
            lines.append(f"  {job} certificates: {config.policy_for(party.name, job).describe()}")
        for index, identity in enumerate(party.identities, 1):
            lines.append(f"  key {index}: {_key_line(identity)}")
        warnings.extend(_identity_warnings(party, f"{kind} {party.name}", now))

    for name in sorted(config.domains):
        domain = config.domains[name]
        party_lines("domain", domain, None)
        members = [a for a in config.addresses if a.rpartition("@")[2] == name]
        if not domain.identities and not any(config.addresses[a].identities for a in members):
            warnings.append(
                f"warning: domain {name} has no key, nor has any of its addresses: mail from or to it is refused"
            )
        for direction in DIRECTIONS:
            if not domain.anchors(direction):
                warnings.append(f"warning: domain {name} has no {direction} trust anchors")
    for name in sorted(config.addresses):
        address = config.addresses[name]
        party_lines("address", address, config.domain_of(name))
        for direction in DIRECTIONS:
            if address.anchors(direction) == ():
                warnings.append(f"warning: address {name} has an empty {direction} anchor list: it trusts nobody")
    lines.append(f"out-of-band certificates: {len(config.certificates)}")
    for cert in config.certificates:
        if cert.not_valid_after_utc < now:
            warnings.append(f"warning: out-of-band certificate expired: {_cert_line(cert)}")
    return lines + warnings
