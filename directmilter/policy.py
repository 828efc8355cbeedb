"""What to do on each failure condition, in the vocabulary of OpenDKIM's On-<Condition> settings.

Each refusal the agent or the milter makes belongs to a condition (untrusted recipient, decryption failed, ...);
``[actions]`` says per condition whether the message is rejected (5.x.x), tempfailed (4.x.x), quarantined
(Postfix's hold queue, for an operator to inspect; nothing is delivered or relayed), or discarded (dropped
silently). The defaults are what directmilter does without the table, all fail-closed. ``accept`` is part of the
vocabulary but refused for every condition: each of them concerns Direct mail, and accepting it would deliver
unverified mail to a hosted recipient or send plaintext to a remote party.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from directmilter import errors

ACTIONS = ("reject", "tempfail", "quarantine", "discard", "accept")

#: condition -> default action (what directmilter does without an [actions] table)
DEFAULTS: Mapping[str, str] = {
    "untrusted_recipient": "reject",
    "no_certificate": "reject",
    "discovery_unavailable": "tempfail",
    "decryption_failed": "reject",
    "signature_invalid": "reject",
    "untrusted_signer": "reject",
    "tampered_routing": "reject",
    "message_too_large": "reject",
    "internal_error": "tempfail",
}


@dataclass(frozen=True)
class Actions:
    chosen: Mapping[str, str] = field(default_factory=dict)

    def action_for(self, condition: str | None) -> str | None:
        """The configured action, or None when the condition is unknown (the error's own reply applies)."""
        if condition is None:
            return None
        return self.chosen.get(condition, DEFAULTS[condition])


def check_action(condition: str, action: str) -> str | None:
    """Why ``action`` may not be configured for ``condition``; None when it may."""
    if action not in ACTIONS:
        return f"{action!r}: expected one of {', '.join(ACTIONS)}"
    if action == "accept":
        return ("accept is never allowed here: it would deliver unverified mail to a hosted recipient or send "
                "plaintext to a remote party")
    return None


def condition_of(error: BaseException, outgoing: bool) -> str | None:
    """The failure condition an error belongs to (None: none of the configurable ones)."""
    if isinstance(error, errors.NoTrustedRecipients):
        causes = list(error.rejected.values())
        return condition_of(causes[0], outgoing) if causes else None
    table: tuple[tuple[type[BaseException], str], ...] = (
        (errors.MessageTooLarge, "message_too_large"),
        (errors.TamperedRouting, "tampered_routing"),
        (errors.NoCertificate, "no_certificate"),
        (errors.DecryptionFailed, "decryption_failed"),
        (errors.SignatureInvalid, "signature_invalid"),
        (errors.DependencyTimeout, "discovery_unavailable"),
    )
    for kind, condition in table:
        if isinstance(error, kind):
            return condition
    if isinstance(error, errors.TrustError):
        return "untrusted_recipient" if outgoing else "untrusted_signer"
    if not isinstance(error, errors.DirectMilterError):
        return "internal_error"
    return None
