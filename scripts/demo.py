"""The demo: a Direct message from HISP A (direct.a.test) to HISP B (direct.b.test) through two real Postfix servers.

Makes a throw-away PKI, starts two private Postfix instances on loopback, each with directmilter as its milter,
submits a plaintext message to HISP A as alice, holds it in A's queue long enough to show exactly what A is about
to send over the wire (signed and encrypted), releases it, and shows what HISP B delivered into bob's Maildir (the
original, decrypted and verified). Everything stops and is removed at the end; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from milterd import Milterd
from mta import Postfix, scratch_dir, submit
from pki import PKI, Issued

ALICE, BOB = "alice@direct.a.test", "bob@direct.b.test"
MESSAGE = (
    b"From: Dr Alice <alice@direct.a.test>\r\nTo: Dr Bob <bob@direct.b.test>\r\n"
    b"Subject: Referral for patient 0042\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <demo-1@direct.a.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Please see the attached care summary.\r\n"
)
MILTER = '[milter]\ninternal_hosts = []\nsubmission_daemons = ["ORIGINATING"]\n'


def hisp_config(path: Path, domain: str, user: Issued, anchor: Issued, peer: Issued) -> Path:
    tracking = f'[notify]\ntracking = "sqlite:{path.with_suffix(".db")}"\n'
    path.write_text(MILTER + tracking + textwrap.dedent(f"""\
        [domains."{domain}"]
        anchors = ["{anchor.cert_path}"]
        [addresses."{user.name}@{domain}"]
        keys = [{{ cert = "{user.cert_path}", key = "{user.key_path}" }}]
        [certificates]
        files = ["{peer.cert_path}"]
        """))
    return path


def main() -> int:
    with scratch_dir("directmilter-demo-") as root:
        pki = PKI(root / "pki")
        anchor = pki.root("Demo-Trust-Anchor")
        alice = pki.leaf("alice", anchor, email=ALICE)
        bob = pki.leaf("bob", anchor, email=BOB)
        milter_a = Milterd(hisp_config(root / "a.conf", "direct.a.test", alice, anchor, bob), root / "milter-a.log")
        milter_b = Milterd(hisp_config(root / "b.conf", "direct.b.test", bob, anchor, alice), root / "milter-b.log")
        with milter_a, milter_b:
            b = Postfix(root=root / "b", name="mx.b.test", mailboxes={BOB: "bob"}, milter=milter_b.postfix_spec)
            a = Postfix(root=root / "a", name="mx.a.test", relay={"direct.b.test": f"127.0.0.1:{b.smtp_port}"},
                        milter=milter_a.postfix_spec, main_cf={"defer_transports": "smtp"})
            with b, a:
                print(f"HISP A: Postfix on 127.0.0.1:{a.submission_port} (submission), HISP B: 127.0.0.1:{b.smtp_port}")
                result = submit(a.submission_port, ALICE, [BOB], MESSAGE)
                if not result.ok:
                    raise SystemExit(f"demo: HISP A refused the message: {result}")
                [queue_id] = _wait(a.queue, "the message in HISP A's queue")
                wire = subprocess.run(["postcat", "-c", str(a.etc), "-bh", "-q", queue_id],
                                      capture_output=True, check=True).stdout
                a.extra_main_cf.pop("defer_transports")
                a.write_config()
                a.reload()
                a.flush()
                [delivered] = b.wait_for_delivery(BOB, 1, timeout=30)
    _show("alice submitted to HISP A (plaintext; stays inside HISP A)", MESSAGE)
    _show("what HISP A sent over the wire to HISP B (signed and encrypted)", wire, limit=16)
    _show("what HISP B delivered into bob's Maildir (decrypted, signature and trust verified)", delivered)
    ok = b"Referral" not in wire and b"pkcs7-mime" in wire and b"Referral for patient 0042" in delivered
    print("demo:", "OK - the message crossed encrypted and arrived intact" if ok else "FAILED")
    return 0 if ok else 1


def _wait(probe, what: str, timeout: float = 20):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.1)
    return found


def _show(title: str, message: bytes, limit: int | None = None) -> None:
    lines = message.decode(errors="replace").replace("\r\n", "\n").splitlines()
    more = [f"... ({len(lines) - limit} more lines of base64)"] if limit and len(lines) > limit else []
    print(f"\n==== {title}\n" + "\n".join(lines[:limit] + more))


if __name__ == "__main__":
    raise SystemExit(main())
