"""The demo: a Direct message from HISP A (direct.a.test) to HISP B (direct.b.test), shown on the wire and delivered.

Makes a throw-away PKI and two HISP configurations in a temporary folder, runs the agent's outgoing operation as
HISP A would and the incoming one as HISP B would, and prints what travelled between them beside what was
delivered. Nothing leaves this machine; the temporary folder is removed at the end.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pki import PKI  # noqa: E402

MESSAGE = (
    b"From: Dr Alice <alice@direct.a.test>\r\nTo: Dr Bob <bob@direct.b.test>\r\n"
    b"Subject: Referral for patient 0042\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <demo-1@direct.a.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Please see the attached care summary.\r\n"
)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="directmilter-demo-") as tmp:
        root = Path(tmp)
        pki = PKI(root / "pki")
        anchor = pki.root("Demo-Trust-Anchor")
        alice = pki.leaf("alice", anchor, email="alice@direct.a.test")
        bob = pki.leaf("bob", anchor, email="bob@direct.b.test")
        conf_a = root / "hisp-a.conf"
        conf_a.write_text(textwrap.dedent(f"""\
            [domains."direct.a.test"]
            anchors = ["{anchor.cert_path}"]
            [addresses."alice@direct.a.test"]
            keys = [{{ cert = "{alice.cert_path}", key = "{alice.key_path}" }}]
            [certificates]
            files = ["{bob.cert_path}"]
            """))
        conf_b = root / "hisp-b.conf"
        conf_b.write_text(textwrap.dedent(f"""\
            [domains."direct.b.test"]
            anchors = ["{anchor.cert_path}"]
            [addresses."bob@direct.b.test"]
            keys = [{{ cert = "{bob.cert_path}", key = "{bob.key_path}" }}]
            """))
        envelope = ["--sender", "alice@direct.a.test", "--rcpt", "bob@direct.b.test"]
        wire = _run("outgoing", "-c", str(conf_a), *envelope, stdin=MESSAGE)
        delivered = _run("incoming", "-c", str(conf_b), *envelope, stdin=wire)
    _show("HISP A received from alice (plaintext, stays inside HISP A)", MESSAGE)
    _show("on the wire from HISP A to HISP B (signed and encrypted)", wire, limit=14)
    _show("HISP B delivered to bob (decrypted, signature and trust verified)", delivered)
    ok = delivered == MESSAGE and b"Referral" not in wire
    print("demo:", "OK - the message crossed encrypted and arrived intact" if ok else "FAILED")
    return 0 if ok else 1


def _run(*args: str, stdin: bytes) -> bytes:
    result = subprocess.run([sys.executable, "-m", "directmilter", *args], input=stdin, capture_output=True)
    sys.stderr.write(result.stderr.decode())
    if result.returncode:
        raise SystemExit(f"demo: directmilter {args[0]} failed with exit code {result.returncode}")
    return result.stdout


def _show(title: str, message: bytes, limit: int | None = None) -> None:
    lines = message.decode().splitlines()
    shown = lines[:limit] + ([f"... ({len(lines) - limit} more lines of base64)"] if limit and len(lines) > limit else [])
    print(f"==== {title}\n" + "\n".join(shown) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
