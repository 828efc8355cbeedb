"""Sendmail with the snippet the project ships (etc/sendmail/directmilter.m4): what holds without directmilter.

The end-to-end Sendmail tests that need directmilter running sit beside their Postfix counterparts (for example
tests/test_commit_witness.py runs its rig on both MTAs).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mta import Sink, free_port, scratch_dir, submit, wait_until
from sendmail import Sendmail

ALICE, BOB = "alice@direct.a.test", "bob@direct.b.test"
MESSAGE = (f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: results\r\nMessage-ID: <down-1@direct.a.test>\r\n\r\n"
           "results\r\n").encode()


@pytest.fixture(scope="module")
def milterless() -> Iterator[tuple[Sendmail, Sink]]:
    """Sendmail whose directmilter socket has nobody listening (the milter is down)."""
    with scratch_dir("directmilter-sendmail-") as root, Sink(root / "b") as b:
        a = Sendmail(root / "a", name="mx.a.test", milter=f"inet:{free_port()}@127.0.0.1",
                     mailboxes={ALICE: "alice"}, relay={"direct.b.test": f"127.0.0.1:{b.port}"})
        with a:
            yield a, b


@pytest.mark.parametrize("listener", ["smtp_port", "submission_port"])
def test_with_the_milter_down_mail_is_deferred_not_passed_in_clear(milterless: tuple[Sendmail, Sink],
                                                                   listener: str) -> None:
    """The snippet's F=T: Sendmail's default would go on without a milter that is down, relaying alice's
    plaintext to B and delivering bob's message unverified. Both are deferred (4.x.x) instead."""
    a, b = milterless
    sender, recipient = (BOB, ALICE) if listener == "smtp_port" else (ALICE, BOB)
    result = submit(getattr(a, listener), sender, [recipient], MESSAGE)
    assert not result.ok and result.code is not None and 400 <= result.code < 500, result
    time.sleep(1)
    assert b.messages() == [] and a.maildir(ALICE) == [] and a.queue() == []
    assert "Milter (directmilter): to error state" in a.maillog()


@pytest.fixture(scope="module")
def passing() -> Iterator[tuple[Sendmail, Sink]]:
    """Sendmail with a milter that accepts everything in directmilter's place (tests/rejectmilter.py, no flag)."""
    with scratch_dir("directmilter-sendmail-") as root, Sink(root / "b") as b:
        port = free_port()
        stand_in = subprocess.Popen([sys.executable, str(Path(__file__).with_name("rejectmilter.py")), str(port),
                                     str(root / "never")])
        try:
            a = Sendmail(root / "a", name="mx.a.test", milter=f"inet:{port}@127.0.0.1", mailboxes={ALICE: "alice"},
                         relay={"direct.b.test": f"127.0.0.1:{b.port}"})
            with a:
                yield a, b
        finally:
            stand_in.kill()
            stand_in.wait()


def test_the_rig_delivers_locally_and_relays_to_loopback(passing: tuple[Sendmail, Sink]) -> None:
    a, b = passing
    assert submit(a.smtp_port, BOB, [ALICE], MESSAGE).ok
    [kept] = wait_until(lambda: a.maildir(ALICE) or None, "alice's Maildir copy")
    assert kept.startswith(b"Return-Path: <bob@direct.b.test>") and b"results" in kept
    assert submit(a.submission_port, ALICE, [BOB], MESSAGE).ok
    [relayed] = b.wait(1)
    assert relayed.rcpts == [BOB] and b"results" in relayed.data
    assert "daemon=MSA" in a.maillog() and "daemon=MTA" in a.maillog()


def test_the_snippet_routes_the_witness_to_the_reinjection_listener(passing: tuple[Sendmail, Sink]) -> None:
    """commit+<token>@directmilter.invalid goes to 127.0.0.1 at the re-injection port, and only that domain."""
    a, _ = passing
    token = "0" * 32
    routed = a.run("-bv", f"commit+{token}@directmilter.invalid", f"commit+{token}@directmilter.invalid.example")
    lines = routed.stdout.decode().splitlines()
    assert any(f"commit+{token}@directmilter.invalid... deliverable: mailer dmwitness, host [127.0.0.1]" in line
               for line in lines), lines
    assert not any("directmilter.invalid.example" in line and "dmwitness" in line for line in lines), lines
    cf = (a.root / "sendmail.cf").read_text()
    assert f"A=TCP $h {a.reinject_port}" in cf and f"Port={a.reinject_port}, Addr=127.0.0.1, " \
        "Name=DIRECTMILTER-REINJECT" in cf


def test_a_stopped_rig_leaves_no_process() -> None:
    with scratch_dir("directmilter-sendmail-") as root:
        a = Sendmail(root / "a", name="mx.a.test", milter=f"inet:{free_port()}@127.0.0.1").start()
        assert a.processes()
        a.stop()
        assert a.processes() == []
