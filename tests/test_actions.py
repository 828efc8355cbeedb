"""An action for each failure condition ([actions], OpenDKIM's On-<Condition> vocabulary): the defaults stay
fail-closed, quarantine puts the message in Postfix's hold queue with nothing delivered, and ``accept`` is refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import World, plain_message
from milterd import Milterd
from mta import Postfix, Sink, scratch_dir, submit

from directmilter import errors
from directmilter.config import load_config
from directmilter.errors import ConfigError
from directmilter.policy import DEFAULTS, condition_of

ALICE, CAROL = "alice@direct.a.test", "carol@direct.b.test"


@pytest.mark.parametrize(("error", "outgoing", "condition"), [
    (errors.NoTrustPath("x"), True, "untrusted_recipient"),
    (errors.NoTrustPath("x"), False, "untrusted_signer"),
    (errors.NoCertificate("x"), True, "no_certificate"),
    (errors.DependencyTimeout("x"), True, "discovery_unavailable"),
    (errors.NotEncryptedForRecipient("x"), False, "decryption_failed"),
    (errors.SignatureInvalid("x"), False, "signature_invalid"),
    (errors.TamperedRouting("x"), False, "tampered_routing"),
    (errors.MessageTooLarge("x"), True, "message_too_large"),
    (RuntimeError("bug"), True, "internal_error"),
    (errors.NoTrustedRecipients("x", {"c@d.test": errors.CertificateExpired("y")}), True, "untrusted_recipient"),
    (errors.MalformedMessage("x"), True, None),
])
def test_each_error_belongs_to_its_condition(error: BaseException, outgoing: bool, condition: str | None) -> None:
    assert condition_of(error, outgoing) == condition


def test_defaults_are_fail_closed_and_accept_is_refused(world: World) -> None:
    assert set(DEFAULTS.values()) == {"reject", "tempfail"}
    with pytest.raises(ConfigError, match=r"on_untrusted_signer.*accept is never allowed"):
        load_config(world.write_config("actions-accept", {**world.hisp_a_body(),
                                                          "actions": {"on_untrusted_signer": "accept"}}))
    with pytest.raises(ConfigError, match=r"on_decryption_failed.*'bounce': expected one of"):
        load_config(world.write_config("actions-bad", {**world.hisp_a_body(),
                                                       "actions": {"on_decryption_failed": "bounce"}}))
    with pytest.raises(ConfigError, match="on_everything"):
        load_config(world.write_config("actions-unknown", {**world.hisp_a_body(),
                                                           "actions": {"on_everything": "reject"}}))


def run_a(world: World, root: Path, name: str, actions: dict[str, str]) -> tuple[Milterd, Postfix, Sink]:
    conf = world.write_config(name, {**world.hisp_a_body(), "actions": actions,
                                     "milter": {"internal_hosts": [], "submission_daemons": ["ORIGINATING"]}})
    sink = Sink(root / "wire")
    milter = Milterd(conf, root / "milter.log")
    a = Postfix(root=root / "a", name="mx.a.test", mailboxes={ALICE: "alice"},
                relay={"direct.b.test": f"127.0.0.1:{sink.port}"}, milter=milter.postfix_spec)
    return milter, a, sink


def test_quarantine_holds_the_message_and_nothing_leaves(world: World) -> None:
    """carol's certificate is under a root alice does not trust: with on_untrusted_recipient = quarantine the
    message is accepted into Postfix's hold queue (postqueue shows it) and nothing reaches the wire."""
    with scratch_dir("directmilter-quarantine-") as root:
        milter, a, sink = run_a(world, root, "actions-quarantine", {"on_untrusted_recipient": "quarantine"})
        with sink, milter, a:
            result = submit(a.submission_port, ALICE, [CAROL], plain_message(to=CAROL))
            assert result.ok, result
            deadline = time.monotonic() + 20
            while not a.queue_details() and time.monotonic() < deadline:
                time.sleep(0.2)
            queued = a.queue_details()
            time.sleep(0.5)
            assert sink.messages() == []
            log = (root / "milter.log").read_text()
    assert [q["queue_name"] for q in queued] == ["hold"], queued
    assert "quarantined" in log and "untrusted_recipient" in log


def test_tempfail_instead_of_reject(world: World) -> None:
    with scratch_dir("directmilter-tempfail-") as root:
        milter, a, sink = run_a(world, root, "actions-tempfail", {"on_untrusted_recipient": "tempfail"})
        with sink, milter, a:
            result = submit(a.submission_port, ALICE, [CAROL], plain_message(to=CAROL))
    assert result.refused[CAROL][0] == 451 and "4.7.1" in result.refused[CAROL][1], result
