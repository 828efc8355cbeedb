"""Large messages: spool files instead of memory, sealing and opening a block at a time, BER from streaming senders.

The memory figures themselves are a benchmark (bench/memory.py); these tests prove the paths that make them
possible give the same messages as the in-memory ones, leave no file behind, and fail closed when the disk is full.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import opensslpeer as peer
import pytest
from conftest import World, attached_message, envelope, plain_message
from mta import tmpfs

from directmilter import cms, spool
from directmilter.agent import Agent
from directmilter.agent.crypto import open_message, seal
from directmilter.cms.der import header
from directmilter.config import load_config
from directmilter.errors import CMSError, NoTrustedRecipients, TemporaryFailure

ALICE, BOB = "alice@direct.a.test", "bob@direct.b.test"
MIB = 1 << 20


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary folder of the test's own, for this process and the crypto workers it spawns."""
    folder = tmp_path / "spool"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder


@pytest.fixture
def full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 512 KiB tmpfs as the temporary folder: a full disk, for real (CI runs as root)."""
    with tmpfs(tmp_path / "small", "512k") as folder:
        monkeypatch.setenv("TMPDIR", str(folder))
        yield folder


def test_small_messages_stay_in_memory_and_large_ones_go_to_a_private_file(private_tmp: Path) -> None:
    assert spool.collect([b"a" * 1000, b"b" * 1000]) == b"a" * 1000 + b"b" * 1000
    pieces = [os.urandom(700_000) for _ in range(3)]
    large = spool.collect(pieces)
    assert isinstance(large, spool.Spool) and large.size == 2_100_000
    assert stat.S_IMODE(os.stat(large.path).st_mode) == 0o600
    assert spool.read(large) == b"".join(pieces)
    assert b"".join(spool.blocks(large, start=10, block=4096)) == b"".join(pieces)[10:]
    spool.remove(large)
    assert list(private_tmp.iterdir()) == []


def test_head_of_a_spooled_message_is_its_header_block(private_tmp: Path) -> None:
    message = attached_message(3 * MIB)
    spooled = spool.collect([message])
    assert spool.head(spooled) == message[: message.index(b"\r\n\r\n") + 4]
    assert spool.sha256(spooled) == spool.sha256(message)
    assert spool.take(spooled) == message and list(private_tmp.iterdir()) == []


def test_a_full_disk_is_a_temporary_failure_and_leaves_nothing(full_disk: Path) -> None:
    writer = spool.Writer()
    with pytest.raises(TemporaryFailure, match=r"cannot be spooled to disk .*No space left on device"):
        for _ in range(4):
            writer.write(os.urandom(300_000))
    assert list(full_disk.iterdir()) == []


def test_sealing_and_opening_in_pieces_match_the_whole_message_path(world: World, private_tmp: Path) -> None:
    """The worker path (spool in, spool out) gives what the in-memory path gives: OpenSSL opens the sealed spool,
    and opening it from its file delivers the original byte for byte."""
    message = attached_message(3 * MIB)
    config_a, config_b = world.hisp_a(), world.hisp_b()
    original = spool.collect([message])
    sealed = seal(config_a, original, ALICE, [world.alice.cert], [world.bob.cert], emit=spool.collect)
    assert isinstance(sealed, spool.Spool)
    inner = peer.verify(peer.decrypt(spool.read(sealed), world.bob), world.r1.cert_path)
    assert message.split(b"\r\n\r\n", 1)[1] in inner
    opened = open_message(config_b, sealed, [BOB], emit=spool.collect)
    [content] = opened.contents
    assert content.report.valid and spool.read(content.message) == message
    for item in (original, sealed, content.message):
        spool.remove(item)
    assert sorted(private_tmp.iterdir()) == []


def test_workers_hand_large_messages_over_in_files_and_leave_none(world: World, private_tmp: Path) -> None:
    message = attached_message(2 * MIB)
    a, b = Agent(world.hisp_a(), workers=1), Agent(world.hisp_b(), workers=1)
    try:
        sent = a.outgoing(envelope(message, ALICE, BOB))
        assert isinstance(sent.message, spool.Spool)
        received = b.incoming(envelope(sent.message, ALICE, BOB))  # type: ignore[arg-type]
        assert isinstance(received.message, spool.Spool) and spool.read(received.message) == message
        # The files the workers wrote are named after this process now: with every worker gone, the sweep (which
        # removes a dead writer's files) leaves them to us, who still use them.
        for made in (sent.message, received.message):
            assert Path(made.path).name.startswith(f"{spool.PREFIX}{os.getpid()}-"), made
        b.context.runner.close()
        assert spool.sweep(older_than=3600) == 0 and spool.read(received.message) == message
        spool.remove(sent.message)
        spool.remove(received.message)
        with pytest.raises(TemporaryFailure, match="crypto worker"):  # a file gone: deferred, never accepted
            b.incoming(envelope(sent.message, ALICE, BOB))  # type: ignore[arg-type]
    finally:
        a.close()
        b.close()
    assert list(private_tmp.iterdir()) == []


def test_a_large_message_refused_after_opening_leaves_no_decrypted_file(world: World, private_tmp: Path) -> None:
    """bob trusts only R2 here, so alice's signature (under R1) is refused after the worker decrypted the 2 MiB
    message into a spool file: that file is removed with the refusal."""
    sent = Agent(world.hisp_a()).outgoing(envelope(attached_message(2 * MIB), ALICE, BOB)).message
    body = world.hisp_b_body()
    body["domains"]["direct.b.test"]["anchors"] = [str(world.r2.cert_path)]
    b = Agent(load_config(world.write_config("spool-untrusting-b", body)), workers=1)
    try:
        with pytest.raises(NoTrustedRecipients):
            b.incoming(envelope(sent, ALICE, BOB))
    finally:
        b.close()
    assert list(private_tmp.iterdir()) == []


def test_sweep_removes_only_old_spool_files(private_tmp: Path) -> None:
    names = ("directmilter-spool-old", "directmilter-spool-new", "directmilter-other", "unrelated")
    old, fresh, *others = (private_tmp / name for name in names)
    for path in (old, fresh, *others):
        path.write_bytes(b"x")
    for path in (old, *others):
        os.utime(path, (0, 0))
    assert spool.sweep(older_than=3600) == 1
    assert sorted(p.name for p in private_tmp.iterdir()) == ["directmilter-other", "directmilter-spool-new",
                                                             "unrelated"]


@pytest.mark.parametrize("cipher", ["aes256", "aes-256-gcm"])
def test_ber_from_a_streaming_sender_is_opened(world: World, cipher: str) -> None:
    """``openssl cms -encrypt -stream``: indefinite lengths everywhere and the ciphertext in 4 KiB OCTET STRING
    segments (as BouncyCastle-based agents send); 200 KiB makes fifty of them."""
    body = os.urandom(150_000).hex().encode()[:200_000]
    entity = b"Content-Type: text/plain\r\n\r\n" + body + b"\r\n"
    wire = b"From: alice@direct.a.test\r\nTo: bob@direct.b.test\r\n" + peer.encrypt(
        peer.sign(entity, world.alice), [world.bob.cert_path], cipher=cipher, stream=True)
    envelope_der = cms.parse_secured(wire, world.hisp_b().crypto.accept_ciphers).envelope
    assert len(envelope_der._spans) > 40
    received = Agent(world.hisp_b()).incoming(envelope(wire, ALICE, BOB))
    assert received.recipients == (BOB,) and body in received.message  # type: ignore[operator]


@pytest.mark.parametrize("cut", [1, 17, 300, 5000])
def test_truncated_ber_is_refused_by_name(world: World, cut: int) -> None:
    der = peer.run(["cms", "-encrypt", "-binary", "-stream", "-aes256", "-outform", "DER", world.bob.cert_path],
                   b"Content-Type: text/plain\r\n\r\n" + b"x" * 9000)
    with pytest.raises(CMSError, match="not a valid CMS EnvelopedData"):
        cms.Envelope.parse(der[:-cut])


def test_small_messages_never_touch_the_disk(world: World, private_tmp: Path) -> None:
    sealed = seal(world.hisp_a(), plain_message(), ALICE, [world.alice.cert], [world.bob.cert], emit=spool.collect)
    assert isinstance(sealed, bytes) and list(private_tmp.iterdir()) == []


def test_ber_that_borrows_bytes_beyond_its_parent_is_refused(world: World) -> None:
    """An indefinite-length element inside a definite one must end (00 00) within it; and the encrypted content
    is [0], nothing else."""
    der = peer.run(["cms", "-encrypt", "-binary", "-stream", "-aes256", "-outform", "DER", world.bob.cert_path],
                   b"Content-Type: text/plain\r\n\r\n" + b"x" * 300)
    assert der[:2] == b"\x30\x80" and der[-4:] == b"\0\0\0\0" and cms.Envelope.parse(der)
    # The outer SEQUENCE made definite, one end marker short: the inner [0] ends right after it, borrowing 00 00.
    inner = der[2:-2]
    borrowing = header(0x30, len(inner) - 2) + inner
    with pytest.raises(CMSError, match="no end-of-contents marker"):
        cms.Envelope.parse(borrowing)
    at = der.index(b"\xa0\x80", der.index(bytes.fromhex("060960864801650304012a")))
    with pytest.raises(CMSError, match=r"encryptedContent has identifier 0xa2, not \[0\]"):
        cms.Envelope.parse(der[:at] + b"\xa2" + der[at + 1:])


def test_sweep_removes_at_once_what_a_dead_process_left(private_tmp: Path) -> None:
    """Issue 19: a milter or worker killed mid-message left the decrypted message in its spool file until the age
    rule took it (21 minutes on). A spool file is named after its writer: a dead writer's file goes at the next
    sweep (the milter sweeps at start), however fresh; the files of live processes stay."""
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    collector = spool.Writer(over=0)
    collector.write(b"decrypted")
    mine = collector.finish()
    assert isinstance(mine, spool.Spool) and f"-{os.getpid()}-" in Path(mine.path).name
    dead = private_tmp / f"{spool.PREFIX}{gone.pid}-abc"
    alive = private_tmp / f"{spool.PREFIX}1-abc"  # init: alive, and not ours
    for path in (dead, alive):
        path.write_bytes(b"decrypted")
    assert spool.sweep(older_than=3600) == 1
    assert not dead.exists() and alive.exists() and Path(mine.path).exists()
    spool.remove(mine)
