"""Load with faults: 2,000 messages from A to B through two real Postfix instances with directmilter on both,
20 clients at once, and each milter killed with SIGKILL and restarted in the middle of it.

Afterwards every message is in bob's mailbox exactly once (none lost, none duplicated), nothing was refused or
bounced (nothing left A in clear: B refuses plaintext for bob, and A would bounce it to alice), and A's tracking
has matched a processed MDN for every one. ``LOAD_MESSAGES`` sets the count (default 2,000).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import threading
import time
from pathlib import Path

from conftest import World, plain_message
from milterd import Milterd
from mta import Postfix, scratch_dir, submit

from directmilter.tracking import open_store

ALICE, BOB = "alice@direct.a.test", "bob@direct.b.test"
COUNT = int(os.environ.get("LOAD_MESSAGES", "2000"))
CLIENTS = 20


def send_until_accepted(port: int, index: int) -> int:
    """Submit message ``index`` like a persistent MUA: a 4xx or a dropped connection means try again."""
    message = plain_message(body=f"load message {index}\r\n".encode()).replace(
        b"<test-1@direct.a.test>", f"<load-{index}@direct.a.test>".encode())
    for attempt in range(120):
        result = submit(port, ALICE, [BOB], message, timeout=60)
        if result.ok:
            return attempt
        if (result.code is not None and result.code >= 500) or (result.data is not None and result.data[0] >= 500):
            raise AssertionError(f"message {index} refused: {result}")
        time.sleep(0.5)
    raise AssertionError(f"message {index} never accepted")


def mailbox_files(postfix: Postfix, address: str) -> list[Path]:
    folder = postfix.maildir_path(address)
    return [p for sub in ("new", "cur") if (folder / sub).is_dir() for p in (folder / sub).iterdir()]


def test_load_with_milters_killed_midway(world: World) -> None:
    with scratch_dir("directmilter-load-") as root:
        milter_a = Milterd(world.directory / "load-a.conf", root / "milter-a.log")
        milter_b = Milterd(world.directory / "load-b.conf", root / "milter-b.log")
        a = Postfix(root=root / "a", name="mx.a.test", mailboxes={ALICE: "alice"}, milter=milter_a.postfix_spec,
                    main_cf={"default_process_limit": "60"})
        b = Postfix(root=root / "b", name="mx.b.test", mailboxes={BOB: "bob"}, milter=milter_b.postfix_spec,
                    relay={"direct.a.test": f"127.0.0.1:{a.smtp_port}"}, main_cf={"default_process_limit": "60"})
        a.relay["direct.b.test"] = f"127.0.0.1:{b.smtp_port}"
        a.write_config()
        milter = {"internal_hosts": [], "submission_daemons": ["ORIGINATING"]}
        tracking_a = f"sqlite:{root}/tracking-a.db"
        world.write_config("load-a", {**world.hisp_a_body(), "milter": milter, "notify": {
            "reinject": f"127.0.0.1:{a.reinject_port}", "tracking": tracking_a, "mdn_delay": 0.1,
            "processed_timeout": 3600}})
        world.write_config("load-b", {**world.hisp_b_body(), "milter": milter, "notify": {
            "reinject": f"127.0.0.1:{b.reinject_port}", "tracking": f"sqlite:{root}/tracking-b.db",
            "mdn_delay": 0.1, "sweep_interval": 1.0}})
        with milter_a, milter_b, a, b:
            sent = {"count": 0}
            lock = threading.Lock()

            def one(index: int) -> int:
                retries = send_until_accepted(a.submission_port, index)
                with lock:
                    sent["count"] += 1
                return retries

            def killer() -> None:
                for fraction, victim in ((1 / 3, milter_a), (2 / 3, milter_b)):
                    while sent["count"] < COUNT * fraction:
                        time.sleep(0.05)
                    victim.stop()  # SIGKILL: no goodbye, transactions in flight are cut
                    time.sleep(1.0)
                    victim.start()

            chaos = threading.Thread(target=killer, daemon=True)
            chaos.start()
            with concurrent.futures.ThreadPoolExecutor(CLIENTS) as clients:
                retries = sum(clients.map(one, range(COUNT)))
            chaos.join(60)
            deadline = time.monotonic() + 600
            while len(mailbox_files(b, BOB)) < COUNT and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(2)  # a duplicate would arrive now
            delivered = [p.read_bytes() for p in mailbox_files(b, BOB)]
            store = open_store(tracking_a)
            try:
                while time.monotonic() < deadline:
                    pending = [i for i in range(COUNT)
                               if not any(s.state == "processed" for s in store.states(f"<load-{i}@direct.a.test>"))]
                    if not pending:
                        break
                    time.sleep(1)
            finally:
                store.close()
            alice = a.maildir(ALICE)
            maillog_a, maillog_b = a.maillog(), b.maillog()
    tags = [int(m.group(1)) for m in (re.search(rb"load message (\d+)", d) for d in delivered) if m]
    assert len(tags) == len(delivered), "every delivered message is a decrypted load message"
    missing = sorted(set(range(COUNT)) - set(tags))
    duplicated = sorted({t for t in tags if tags.count(t) > 1}) if len(tags) != len(set(tags)) else []
    assert not missing, f"lost: {missing[:20]} ({len(missing)})"
    assert not duplicated, f"delivered twice: {duplicated[:20]} ({len(duplicated)})"
    assert not pending, f"no processed MDN matched for {len(pending)} messages, e.g. {pending[:10]}"
    assert alice == [], "alice got a bounce or an unconsumed report"
    # While B's milter was down Postfix deferred with 4.7.1; nothing was ever refused for good.
    refused = [line for line in maillog_b.splitlines()
               if "milter-reject" in line and not re.search(r"\]: (451 )?4\.\d+\.\d+ ", line)]
    assert not refused, refused[:3]
    assert "status=bounced" not in maillog_a
    assert retries > 0, "the kills were felt (some submissions had to be retried)"
