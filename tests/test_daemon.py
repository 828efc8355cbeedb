"""The daemon as systemd runs it: readiness (sd_notify), reload on SIGUSR1, metrics, refusing unsafe keys.

One private Postfix (HISP A) relays to a sink; the milter runs as a child process with NOTIFY_SOCKET pointing at
a datagram socket the test reads, as systemd's would be.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CANARY, World, plain_message
from milterd import Milterd
from mta import Postfix, Sink, alive, free_port, scratch_dir, submit, wait_until

ALICE, BOB = "alice@direct.a.test", "bob@direct.b.test"


def config_body(world: World, anchor: Path, metrics_port: int) -> dict[str, Any]:
    body = world.hisp_a_body()
    body["domains"]["direct.a.test"]["anchors"] = [str(anchor)]
    # inline_below = 0: even these small messages go to the crypto workers, whose death a test below provokes.
    return {**body, "milter": {"internal_hosts": [], "submission_daemons": ["ORIGINATING"],
                               "metrics": f"127.0.0.1:{metrics_port}", "inline_below": 0}}


@pytest.fixture(scope="module")
def daemon(world: World) -> Iterator[dict[str, Any]]:
    with scratch_dir("directmilter-daemon-") as root:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(root / "notify"))
        notify.settimeout(20)
        metrics_port = free_port()
        # To begin with alice trusts only R2, so bob (under R1) is refused; the reload test widens that.
        conf = world.write_config("daemon-a", config_body(world, world.r2.cert_path, metrics_port))
        milter = Milterd(conf, root / "milter.log", env={"NOTIFY_SOCKET": str(root / "notify")})
        with Sink(root / "wire") as sink:
            a = Postfix(root=root / "a", name="mx.a.test", mailboxes={ALICE: "alice"},
                        relay={"direct.b.test": f"127.0.0.1:{sink.port}"}, milter=milter.postfix_spec)
            with milter, a:
                ready = notify.recv(4096).decode()  # what systemd is told first, whichever test runs first
                yield {"a": a, "sink": sink, "milter": milter, "notify": notify, "conf": conf, "root": root,
                       "metrics": f"http://127.0.0.1:{metrics_port}/metrics", "metrics_port": metrics_port,
                       "ready": ready}
        notify.close()


def trusting(world: World, daemon: dict[str, Any], anchor: Path) -> None:
    """Make alice's anchor ``anchor`` by a reload, and take the RELOADING/READY datagrams it sends: each test sets
    the configuration it needs, whatever ran before it."""
    log = daemon["root"] / "milter.log"
    before = log.read_text().count("event='reloaded'")
    world.write_config("daemon-a", config_body(world, anchor, daemon["metrics_port"]))
    daemon["milter"].signal(signal.SIGUSR1)
    wait_until(lambda: log.read_text().count("event='reloaded'") > before, "the reload")
    for _ in range(2):
        daemon["notify"].recv(4096)


def test_ready_is_sent_once_the_socket_listens(daemon: dict[str, Any]) -> None:
    state = daemon["ready"]
    assert "READY=1" in state and "STATUS=listening on" in state
    assert daemon["milter"]._listening()


def test_reload_switches_configuration_and_a_broken_one_is_not_taken(world: World, daemon: dict[str, Any]) -> None:
    trusting(world, daemon, world.r2.cert_path)  # alice trusts only R2: bob (under R1) is refused
    refused = submit(daemon["a"].submission_port, ALICE, [BOB], plain_message())
    assert refused.refused[BOB][0] == 550, refused
    log = daemon["root"] / "milter.log"

    daemon["conf"].write_text(daemon["conf"].read_text() + "\n[unknown_section]\n")
    daemon["milter"].signal(signal.SIGUSR1)
    wait_until(lambda: "reload_failed" in log.read_text(), "the failed reload to be logged")
    assert "unknown_section" in log.read_text()
    assert submit(daemon["a"].submission_port, ALICE, [BOB], plain_message()).refused  # the old one is in force

    world.write_config("daemon-a", config_body(world, world.r1.cert_path, daemon["metrics_port"]))
    daemon["milter"].signal(signal.SIGUSR1)
    wait_until(lambda: "event='reloaded'" in log.read_text(), "the reload")
    states = [daemon["notify"].recv(4096).decode() for _ in range(4)]  # RELOADING/READY around each reload
    assert states[0].startswith("RELOADING=1") and "READY=1" in states[1]
    before = len(daemon["sink"].messages())
    accepted = submit(daemon["a"].submission_port, ALICE, [BOB], plain_message())
    assert accepted.ok, accepted
    wire = daemon["sink"].wait(before + 1)[-1]
    assert b"application/pkcs7-mime" in wire.data and CANARY.encode() not in wire.data


def test_a_reload_with_an_unreadable_certificate_keeps_the_running_configuration(world: World,
                                                                                   daemon: dict[str, Any]) -> None:
    """A certificate whose extensions cannot be read (one repeated: cryptography's DuplicateExtension, no
    ValueError) in [certificates] is a configuration error naming the file: the reload is refused, the running
    configuration stays, and the reload thread lives on to take the next, good, configuration."""
    trusting(world, daemon, world.r1.cert_path)
    log = daemon["root"] / "milter.log"
    twice = world.pki.with_duplicated_extension("daemon-bob-twice", world.bob)
    body = config_body(world, world.r2.cert_path, daemon["metrics_port"])
    body["certificates"]["files"] = [str(twice.cert_path), str(world.bob.cert_path)]
    failures = log.read_text().count("reload_failed")
    world.write_config("daemon-a", body)
    daemon["milter"].signal(signal.SIGUSR1)
    wait_until(lambda: log.read_text().count("reload_failed") > failures, "the failed reload to be logged")
    for _ in range(2):
        daemon["notify"].recv(4096)
    failed = log.read_text().splitlines()[-1]
    assert f"{twice.cert_path}: certificate 1" in failed and "extensions cannot be read" in failed, failed
    assert submit(daemon["a"].submission_port, ALICE, [BOB], plain_message()).ok  # R1 is still trusted
    trusting(world, daemon, world.r2.cert_path)  # the next reload is taken
    assert submit(daemon["a"].submission_port, ALICE, [BOB], plain_message()).refused


def test_metrics_count_decisions_and_carry_no_addresses(world: World, daemon: dict[str, Any]) -> None:
    trusting(world, daemon, world.r2.cert_path)
    for _ in range(2):
        assert submit(daemon["a"].submission_port, ALICE, [BOB], plain_message()).refused  # at RCPT
    trusting(world, daemon, world.r1.cert_path)
    assert submit(daemon["a"].submission_port, ALICE, [BOB], plain_message()).ok
    text = urllib.request.urlopen(daemon["metrics"], timeout=5).read().decode()
    processed = re.search(r'directmilter_messages_total\{direction="outgoing",outcome="processed"\} (\S+)', text)
    rejected = re.search(r'directmilter_messages_total\{direction="outgoing",outcome="rejected"\} (\S+)', text)
    assert processed and float(processed.group(1)) >= 1, text
    assert rejected and float(rejected.group(1)) >= 2, text  # the two refusals at RCPT
    assert 'directmilter_processing_seconds_count{direction="outgoing"}' in text
    assert re.search(r'directmilter_cache_lookups_total\{cache="validation",result="miss"\} [1-9]', text), text
    assert re.search(r"directmilter_tracking_backlog [1-9]", text), text  # bob's MDNs never come from a sink
    assert "alice" not in text and "direct.b.test" not in text


def worker_pids(milter: Milterd) -> list[int]:
    """The milter's crypto workers: its child processes started by multiprocessing's spawn."""
    assert milter.process is not None
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat_file.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat_file.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if parent == milter.process.pid and b"spawn_main" in command:
            found.append(int(stat_file.parent.name))
    return found


def test_crypto_runs_in_worker_processes_and_a_dead_one_defers_then_heals(world: World,
                                                                         daemon: dict[str, Any]) -> None:
    """The milter signs and encrypts in worker processes (one per CPU by default). Kill them: the next message
    is deferred (4.x.x, never passed unprocessed), and a fresh pool takes the one after."""
    trusting(world, daemon, world.r1.cert_path)
    wait_until(lambda: len(worker_pids(daemon["milter"])) >= 1, "the crypto workers")
    for pid in worker_pids(daemon["milter"]):
        with contextlib.suppress(ProcessLookupError):  # an earlier generation's pool may be closing meanwhile
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    deferred = submit(daemon["a"].submission_port, ALICE, [BOB], plain_message())
    assert deferred.data is not None and deferred.data[0] == 451, deferred
    assert "crypto worker" in deferred.data[1]
    healed = wait_until(lambda: (r := submit(daemon["a"].submission_port, ALICE, [BOB], plain_message())).ok and r,
                      "a message through a fresh worker pool", timeout=30)
    assert healed.ok
    assert worker_pids(daemon["milter"])


def test_daemon_refuses_a_private_key_others_can_read(world: World, tmp_path: Path) -> None:
    key = tmp_path / "alice.key"
    shutil.copy(world.alice.key_path, key)
    key.chmod(0o644)
    body = world.hisp_a_body()
    body["addresses"]["alice@direct.a.test"]["keys"] = [{"cert": str(world.alice.cert_path), "key": str(key)}]
    conf = world.write_config("daemon-badkey", body)
    run = subprocess.run([sys.executable, "-m", "directmilter", "run", "-c", str(conf), "--socket",
                          f"inet:{free_port()}@127.0.0.1"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 78, run
    assert str(key) in run.stderr and "0600" in run.stderr


def test_tcp_milter_socket_gets_no_delay() -> None:
    """libmilter's many small writes would wait ~40 ms each on Nagle's algorithm: the listener gets TCP_NODELAY,
    which accepted connections inherit."""
    from directmilter.milter.systemd import disable_nagle

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        assert disable_nagle(f"inet:{port}@127.0.0.1") == 1
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert disable_nagle("unix:/run/x.sock") == 0


def test_sigterm_runs_the_clean_up_and_the_workers_go_with_it(world: World, tmp_path: Path) -> None:
    """Issue 19: SIGTERM (systemctl stop) killed the milter before its own clean-up (a thread of the worker pool
    left SIGTERM unblocked, so the default action took it). It now ends like a normal stop: exit status 0, the
    socket closed, "stopped" logged after the clean-up, and the crypto workers, which hold every private key,
    gone with it."""
    body = world.hisp_a_body()
    conf = world.write_config("daemon-term", {**body, "milter": {"internal_hosts": [], "workers": 2,
                                                                 "inline_below": 0}})
    log = tmp_path / "milter.log"
    milter = Milterd(conf, log).start()
    try:
        assert milter.process is not None
        wait_until(lambda: len(worker_pids(milter)) == 2, "the crypto workers")
        workers = worker_pids(milter)
        milter.signal(signal.SIGTERM)
        assert milter.process.wait(timeout=20) == 0, log.read_text()
        assert "event='stopped'" in log.read_text(), log.read_text()
        assert not milter._listening()
        assert wait_until(lambda: not any(alive(p) for p in workers), "the workers to exit", timeout=10)
    finally:
        milter.stop()
