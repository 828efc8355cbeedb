"""The command line as an operator uses it: files in, files out, one line and an exit code on failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import opensslpeer as peer
import pytest
from conftest import CANARY, World, plain_message

BOB = "bob@direct.b.test"


def run(*args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "directmilter", *map(str, args)], input=stdin,
                          capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def configs(world: World) -> tuple[Path, Path]:
    return (world.write_config("cli-a", world.hisp_a_body()), world.write_config("cli-b", world.hisp_b_body()))


@pytest.mark.conformance("AS-2.4-1")
def test_outgoing_then_incoming_through_the_command_line(world: World, configs: tuple[Path, Path]) -> None:
    conf_a, conf_b = configs
    out = run("outgoing", "-c", conf_a, "--sender", "alice@direct.a.test", "--rcpt", BOB,
              "--rcpt", "carol@direct.b.test", stdin=plain_message())
    assert out.returncode == 0, out.stderr
    assert out.stderr.decode().startswith("directmilter: removed carol@direct.b.test: recipient carol@direct.b.test")
    assert CANARY.encode() not in out.stdout
    assert CANARY.encode() in peer.verify(peer.decrypt(out.stdout, world.bob), world.r1.cert_path)
    back = run("incoming", "-c", conf_b, "--sender", "alice@direct.a.test", "--rcpt", BOB, stdin=out.stdout)
    assert back.returncode == 0, back.stderr
    assert back.stdout == plain_message()


@pytest.mark.parametrize(("args", "stdin", "code", "text"), [
    (("outgoing", "--sender", "alice@direct.a.test", "--rcpt", "carol@direct.b.test"), None, 77,
     "rejected (5.7.1): recipient carol@direct.b.test: no path to a trust anchor"),
    (("outgoing", "--sender", "alice@direct.a.test", "--rcpt", BOB), b"no header here\r\n", 65,
     "rejected (5.6.0): message: header line 1 is not a 'name: value' field"),
    (("incoming", "--sender", "alice@direct.a.test", "--rcpt", BOB), None, 65,
     "rejected (5.7.5): message is text/plain, not an S/MIME encrypted message"),
    (("incoming", "--sender", "alice@direct.a.test", "--rcpt", BOB),
     b"Content-Type: application/pkcs7-mime\r\n\r\nMIIB\r\n", 65, "rejected (5.7.5): encrypted body is not a valid"),
])
def test_failures_are_one_line_with_no_output(configs: tuple[Path, Path], args: tuple[str, ...],
                                              stdin: bytes | None, code: int, text: str) -> None:
    conf = configs[0] if args[0] == "outgoing" else configs[1]
    result = run(args[0], "-c", conf, *args[1:], stdin=plain_message() if stdin is None else stdin)
    lines = result.stderr.decode().splitlines()
    assert result.returncode == code
    assert result.stdout == b""
    assert any(line.startswith(f"directmilter: {text}") for line in lines), lines
    assert "Traceback" not in result.stderr.decode()
    assert CANARY not in result.stderr.decode()


def test_tampered_message_gives_no_plaintext(world: World, configs: tuple[Path, Path]) -> None:
    conf_a, conf_b = configs
    secured = run("outgoing", "-c", conf_a, "--sender", "alice@direct.a.test", "--rcpt", BOB,
                  stdin=plain_message()).stdout
    head, _, body = secured.partition(b"\r\n\r\n")
    lines = body.split(b"\r\n")
    lines[len(lines) // 2] = lines[len(lines) // 2][::-1]
    result = run("incoming", "-c", conf_b, "--sender", "alice@direct.a.test", "--rcpt", BOB,
                 stdin=head + b"\r\n\r\n" + b"\r\n".join(lines))
    assert result.returncode != 0 and result.stdout == b""
    assert len(result.stderr.decode().strip().splitlines()) >= 1 and "Traceback" not in result.stderr.decode()


def test_missing_configuration_file_is_named(tmp_path: Path) -> None:
    result = run("check-config", "-c", tmp_path / "nope.conf")
    assert result.returncode == 78
    assert str(tmp_path / "nope.conf") in result.stderr.decode()


def test_check_config_describes_without_secrets(world: World, configs: tuple[Path, Path]) -> None:
    result = run("check-config", "-c", configs[0])
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "direct.a.test" in text and "alice@direct.a.test" in text
    assert "PRIVATE KEY" not in text


def test_a_bad_signature_is_bad_input_65_and_5_7_5(world: World, configs: tuple[Path, Path]) -> None:
    """A message whose signed content was changed (digest mismatch): exit 65 with 5.7.5, as the README and the
    man page say (RFC 3463: cryptographic failure), not 77 / 5.7.1 (trust or policy)."""
    signed = peer.sign(b"Content-Type: text/plain\r\n\r\noriginal note\r\n", world.alice)
    tampered = signed.replace(b"original note", b"changed note!")
    wire = b"From: alice@direct.a.test\r\nTo: bob@direct.b.test\r\n" + peer.encrypt(tampered, [world.bob.cert_path])
    out = run("incoming", "-c", configs[1], "--sender", "alice@direct.a.test", "--rcpt", BOB, stdin=wire)
    assert out.returncode == 65, out.stderr
    assert b"rejected (5.7.5)" in out.stderr and b"message digest does not match" in out.stderr
    assert out.stdout == b""
