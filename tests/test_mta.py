"""Self-tests for tests/mta.py: private Postfix instances, smtp-sink and the SMTP client, without any milter of ours."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest
from dnsserver import free_udp_tcp_port
from mta import (
    Postfix,
    RecordingMilter,
    Sink,
    _ephemeral_range,
    _free_ports,
    free_port,
    processes_under,
    scratch_dir,
    submit,
)

pytestmark = pytest.mark.skipif(shutil.which("postfix") is None or shutil.which("smtp-sink") is None
                                or os.geteuid() != 0, reason="needs Postfix (postfix, smtp-sink) and root")


def message(sender: str, rcpt: str, subject: str, body: str = "hello\r\n") -> bytes:
    return (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@client.test>\r\n"
            f"\r\n{body}").encode()


def parse(raw: bytes) -> Message:
    return message_from_bytes(raw)


def pgrep(path: Path) -> list[str]:
    done = subprocess.run(["pgrep", "-f", str(path)], capture_output=True, text=True)
    return done.stdout.split()


def assert_gone(root: Path) -> None:
    """Nothing of the tree is left running: neither by command line (pgrep -f) nor by MAIL_CONFIG environment."""
    assert pgrep(root) == []
    assert processes_under(root) == []


@pytest.fixture
def mta_root() -> Iterator[Path]:
    with scratch_dir() as root:
        yield root
        assert_gone(root)


def test_local_delivery_to_maildir(mta_root: Path) -> None:
    a = Postfix(root=mta_root / "a", name="mx.a.test", mailboxes={"alice@a.test": "alice"})
    with a:
        daemons = a.processes()
        assert len(daemons) >= 3, daemons  # master, qmgr, smtpd... (their command lines do not name the tree)
        result = submit(a.smtp_port, "bob@x.test", ["alice@a.test", "nobody@a.test"],
                        message("bob@x.test", "alice@a.test", "local"))
        assert result.ok, result
        assert result.accepted == ["alice@a.test"]
        assert result.refused["nobody@a.test"][0] == 550 and result.refused["nobody@a.test"][1].startswith("5.1.1")
        assert result.queue_id
        [delivered] = a.wait_for_delivery("alice@a.test")
        msg = parse(delivered)
        assert msg["Subject"] == "local"
        assert msg["Delivered-To"] == "alice@a.test"
        assert msg["Return-Path"] == "<bob@x.test>"
        assert f"id {result.queue_id}" in msg["Received"]
        assert msg.get_payload() == "hello\n"  # Postfix stores lines without CR
        assert a.queue() == []
        assert f"{result.queue_id}: removed" in a.maillog()
    assert not a.running
    assert a.processes() == []


def test_relay_to_sink(mta_root: Path) -> None:
    sink = Sink(mta_root / "sink")
    a = Postfix(root=mta_root / "a", name="mx.a.test", relay={"b.test": f"127.0.0.1:{sink.port}"})
    with sink, a:
        assert pgrep(sink.root)  # smtp-sink's command line names its dump directory
        result = submit(a.submission_port, "alice@a.test", ["bob@b.test", "bob2@b.test"],
                        message("alice@a.test", "bob@b.test", "relayed", "line 1\r\n.dot\r\n"))
        assert result.ok, result
        [got] = sink.wait(1)
        assert got.mail_from == "alice@a.test"
        assert sorted(got.rcpts) == ["bob2@b.test", "bob@b.test"]
        assert got.helo == "mx.a.test"
        assert got.client_addr == "127.0.0.1"
        msg = parse(got.data)
        assert msg["Subject"] == "relayed"
        assert f"id {result.queue_id}" in msg["Received"]
        assert got.data.endswith(b"\r\n\r\nline 1\r\n.dot\r\n")  # dot-stuffing undone, CRLF as on the wire
        # The null sender (a bounce) and the wait/queue helpers.
        bounce = submit(a.smtp_port, "", "postmaster@b.test", message("", "postmaster@b.test", "null"))
        assert bounce.ok, bounce
        assert [m.mail_from for m in sink.wait(2)] == ["alice@a.test", ""]
    assert_gone(sink.root)


def test_two_instances(mta_root: Path) -> None:
    b = Postfix(root=mta_root / "b", name="mx.b.test", mailboxes={"bob@b.test": "bob"})
    a = Postfix(root=mta_root / "a", name="mx.a.test", mailboxes={"alice@a.test": "alice"},
                relay={"b.test": f"127.0.0.1:{b.smtp_port}"})
    with b, a:
        result = submit(a.submission_port, "alice@a.test", ["bob@b.test"],
                        message("alice@a.test", "bob@b.test", "a-to-b"))
        assert result.ok, result
        [delivered] = b.wait_for_delivery("bob@b.test")
        msg = parse(delivered)
        assert msg["Subject"] == "a-to-b"
        received = msg.get_all("Received", [])
        assert "by mx.b.test" in received[0] and "from mx.a.test" in received[0]
        assert f"by mx.a.test (Postfix) with ESMTP id {result.queue_id}" in received[1]
        assert "relay=127.0.0.1[127.0.0.1]" in a.maillog()
        assert a.queue() == [] and a.maildir("alice@a.test") == []


def test_test_ports_are_never_ones_the_kernel_hands_out() -> None:
    """A port chosen for a test server must not be one the kernel may give a client as its source port (or to a
    bind to port 0) before the server binds it: a Postfix start once failed so. Nor is one ever chosen twice."""
    low, high = _ephemeral_range()
    ports = [free_port() for _ in range(200)] + _free_ports(3) + [free_udp_tcp_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    assert not [port for port in ports if low <= port <= high]
    assert all(1024 <= port <= 65535 for port in ports)


def test_milter_down_tempfails(mta_root: Path) -> None:
    closed = free_port()
    a = Postfix(root=mta_root / "a", name="mx.a.test", mailboxes={"alice@a.test": "alice"},
                milter=f"inet:127.0.0.1:{closed}", milter_default_action="tempfail")
    with a:
        for port in (a.smtp_port, a.submission_port):
            result = submit(port, "bob@x.test", ["alice@a.test"], message("bob@x.test", "alice@a.test", "no"))
            assert not result.ok
            assert result.code is not None and 400 <= result.code < 500, result
            assert result.status == "4.7.1", result
        # The re-injection listener passes the milter too: nothing gets round it, nothing was kept.
        direct = submit(a.reinject_port, "bob@x.test", ["alice@a.test"], message("bob@x.test", "alice@a.test", "no"))
        assert not direct.ok and direct.status == "4.7.1", direct
        assert a.queue() == [] and a.maildir("alice@a.test") == []
        assert f"inet:127.0.0.1:{closed}" in a.maillog()


def test_set_milter_reloads(mta_root: Path) -> None:
    a = Postfix(root=mta_root / "a", name="mx.a.test", mailboxes={"alice@a.test": "alice"})
    with a:
        a.set_milter(f"inet:127.0.0.1:{free_port()}")
        refused = submit(a.smtp_port, "bob@x.test", ["alice@a.test"], message("bob@x.test", "alice@a.test", "1"))
        assert refused.status == "4.7.1", refused
        a.set_milter(None)
        accepted = submit(a.smtp_port, "bob@x.test", ["alice@a.test"], message("bob@x.test", "alice@a.test", "2"))
        assert accepted.ok, accepted
        assert [parse(m)["Subject"] for m in a.wait_for_delivery("alice@a.test")] == ["2"]


def test_deferred_mail_is_retried(mta_root: Path) -> None:
    """A relay target that is down: the message waits in the queue and goes out once the sink is up."""
    sink = Sink(mta_root / "sink")
    a = Postfix(root=mta_root / "a", name="mx.a.test", relay={"b.test": f"127.0.0.1:{sink.port}"})
    with a:
        result = submit(a.smtp_port, "alice@a.test", ["bob@b.test"], message("alice@a.test", "bob@b.test", "late"))
        assert result.ok, result
        assert a.queue() == [result.queue_id]
        with sink:
            a.flush()
            [got] = sink.wait(1)
            assert got.rcpts == ["bob@b.test"]
    assert_gone(sink.root)


def test_milter_sees_submission_versus_inbound(mta_root: Path) -> None:
    """{daemon_name} tells the three listeners apart (the re-injection listener's is DIRECTMILTER-REINJECT); milter
    replies surface per SMTP stage in SmtpResult."""
    with RecordingMilter(replies={"rcpt": "550 5.7.1 not this one"}) as milter:
        a = Postfix(root=mta_root / "a", name="mx.a.test", mailboxes={"alice@a.test": "alice"}, milter=milter.spec)
        with a:
            before = len(milter.sessions)  # wait_ready's probes
            inbound = submit(a.smtp_port, "bob@x.test", ["alice@a.test"], message("bob@x.test", "alice@a.test", "in"))
            assert inbound.stage == "RCPT" and inbound.refused["alice@a.test"] == (550, "5.7.1 not this one")
            assert inbound.status == "5.7.1"
            milter.replies = {}
            outbound = submit(a.submission_port, "alice@a.test", ["alice@a.test"],
                              message("alice@a.test", "alice@a.test", "out"))
            assert outbound.ok, outbound
            reinjected = submit(a.reinject_port, "bob@x.test", ["alice@a.test"],
                                message("bob@x.test", "alice@a.test", "re"))
            assert reinjected.ok, reinjected
            assert sorted(parse(m)["Subject"] for m in a.wait_for_delivery("alice@a.test", 2)) == ["out", "re"]
            sessions = [s for s in milter.sessions[before:] if any(cmd == "M" for cmd, _ in s.events)]
            assert [s.daemon_name for s in sessions] == ["mx.a.test", "ORIGINATING", "DIRECTMILTER-REINJECT"]
            assert sessions[1].macros.get("i") == outbound.queue_id  # the queue id macro, from DATA on


def test_refuses_pytest_basetemp(tmp_path: Path) -> None:
    """Any pytest that starts resets /tmp/pytest-of-<user> to 0700, which would lock postfix and nobody out of a
    running instance: trees under tmp_path are refused up front."""
    with pytest.raises(ValueError, match="scratch_dir"):
        Postfix(root=tmp_path / "a", name="mx.a.test")
    with pytest.raises(ValueError, match="scratch_dir"):
        Sink(tmp_path / "sink")


def test_submit_reports_connection_failure() -> None:
    result = submit(free_port(), "a@a.test", ["b@b.test"], b"Subject: x\r\n\r\n")
    assert result.error and result.stage == "CONNECT" and not result.ok
