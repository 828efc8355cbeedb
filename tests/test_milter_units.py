"""The milter's pure parts: direction from envelope and client, header edits, reply text."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from conftest import World

from directmilter import spool
from directmilter.milter.app import _reply_text
from directmilter.milter.direction import Client, Direction, Group, client_may_submit, direction, group
from directmilter.milter.edits import HeaderEdit, header_edits, header_fields


@pytest.fixture(scope="module")
def config(world: World):
    base = world.hisp_a()
    return replace(base, milter=replace(base.milter, internal_hosts=(ipaddress.ip_network("10.0.0.0/8"),)))


@pytest.mark.parametrize(("client", "may"), [
    (Client(address="10.1.2.3"), True),
    (Client(address="192.0.2.1"), False),
    (Client(address="192.0.2.1", authenticated="alice"), True),
    (Client(address="192.0.2.1", daemon_name="ORIGINATING"), True),
    (Client(address="192.0.2.1", daemon_name="smtpd"), False),
    (Client(address=None), False),
    # Postfix's cleanup emulates "localhost [127.0.0.1]" for sendmail and pickup: never authorised by loopback.
    (Client(address="127.0.0.1", local=True), False),
    (Client(address="10.0.0.1", local=True), False),
    (Client(address="127.0.0.1", local=True, authenticated="alice"), True),
])
def test_who_may_submit(config, client: Client, may: bool) -> None:
    assert client_may_submit(config, client) is may


@pytest.mark.conformance("ALG-1")
def test_direction_comes_from_envelope_and_client_never_headers(config) -> None:
    inside = Client(address="10.0.0.1")
    outside = Client(address="192.0.2.1")
    assert direction(config, "alice@direct.a.test", inside) is Direction.OUTGOING
    assert direction(config, "ALICE@Direct.A.Test", inside) is Direction.OUTGOING
    # A forged hosted sender from an outside client is inbound mail, and must arrive encrypted like any other.
    assert direction(config, "alice@direct.a.test", outside) is Direction.INCOMING
    assert direction(config, "bob@direct.b.test", inside) is Direction.INCOMING
    assert direction(config, "", inside) is Direction.INCOMING
    assert group(config, "al2@direct.a.test") is Group.HOSTED
    assert group(config, "bob@direct.b.test") is Group.REMOTE


def test_header_edits_keep_common_fields_delete_the_rest_and_append_new_ones() -> None:
    original = [("Received", "from a"), ("From", "alice@a"), ("Subject", "secret"), ("Received", "from b"),
                ("Content-Type", "text/plain")]
    new = [("Received", "from a"), ("From", "alice@a"), ("Received", "from b"),
           ("Content-Type", "application/pkcs7-mime"), ("MIME-Version", "1.0")]
    assert header_edits(original, new) == [
        HeaderEdit("Content-Type", None, 1),
        HeaderEdit("Subject", None, 1),
        HeaderEdit("Content-Type", "application/pkcs7-mime"),
        HeaderEdit("MIME-Version", "1.0"),
    ]


def test_header_edits_delete_later_occurrences_first() -> None:
    original = [("X-A", "1"), ("X-A", "2"), ("X-A", "3")]
    assert header_edits(original, [("X-A", "2")]) == [HeaderEdit("X-A", None, 3), HeaderEdit("X-A", None, 1)]


def test_header_fields_are_milter_style() -> None:
    message = b"From: a@b\r\nSubject: x\r\n y\r\n\r\nbody\r\n"
    head = spool.head(message)
    assert header_fields(head) == [("From", "a@b"), ("Subject", "x\r\n y")]
    assert message[len(head):] == b"body\r\n"


def test_reply_text_is_one_safe_line() -> None:
    assert _reply_text("a\r\nb 100% sure") == "a b 100%% sure"
    assert len(_reply_text("x" * 1000)) == 400


def test_local_submission_is_authorised_only_explicitly(config) -> None:
    local = Client(address="127.0.0.1", daemon_name="mx.a.test", local=True)
    assert direction(config, "alice@direct.a.test", local) is Direction.INCOMING
    allowed = replace(config, milter=replace(config.milter, local_submission=True))
    assert direction(allowed, "alice@direct.a.test", local) is Direction.OUTGOING


def test_loopback_is_not_an_internal_host_by_default() -> None:
    from directmilter.config import MilterSettings

    assert MilterSettings().internal_hosts == ()


def test_a_reload_that_fails_unexpectedly_keeps_the_running_generation(world: World, monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Not only a configuration error: any exception while the new generation is built is logged and leaves the
    running one (the reload thread that called it lives on)."""
    from directmilter.config import load_config
    from directmilter.milter import runtime

    conf = world.write_config("reload-unexpected", world.hisp_a_body())
    running = runtime.Runtime(load_config(conf))
    try:
        before = running.current

        def broken(config: object) -> object:
            raise RuntimeError("a defect while building")

        monkeypatch.setattr(runtime.Generation, "build", staticmethod(broken))
        assert running.reload() is False
        assert running.current is before
        assert "reload_failed" in capsys.readouterr().out + capsys.readouterr().err
    finally:
        running.close()
