"""Postfix's copies of its reports to the postmaster carry no decrypted content (issue 19).

With ``notify_classes = bounce, delay`` Postfix sends the postmaster a copy of each bounce and delay notice with
the headers of the message it is about. For a Direct message received here those are the decrypted message's
headers: its Subject, and whatever else the sender put there, health data. The postmaster often forwards
elsewhere. Here the postmaster's mail goes to ops.test, a wire sink: what reaches it is what would leave.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import opensslpeer as peer
import pytest
from conftest import World
from milterd import serving
from mta import Postfix, Sink, scratch_dir, submit, wait_until

GONE, BOB = "gone@direct.a.test", "bob@direct.b.test"
SECRET = "Subject-HIV-status-of-patient-4711"


@pytest.fixture(scope="module")
def rig(world: World) -> Iterator[dict[str, Any]]:
    with scratch_dir("directmilter-postmaster-") as root, Sink(root / "ops") as ops, Sink(root / "b") as b:
        a = Postfix(root=root / "a", name="mx.a.test", mailboxes={"alice@direct.a.test": "alice", GONE: "gone"},
                    relay={"ops.test": f"127.0.0.1:{ops.port}", "direct.b.test": f"127.0.0.1:{b.port}"},
                    main_cf={"internal_mail_filter_classes": "bounce", "smtpd_reject_unlisted_recipient": "no",
                             "notify_classes": "bounce, delay, resource, software",
                             "bounce_notice_recipient": "postmaster@ops.test",
                             "delay_notice_recipient": "postmaster@ops.test",
                             "transport_maps": f"inline:{{ {{ {GONE} = error:5.2.2 mailbox full }} }} "
                                               f"texthash:{root / 'a' / 'etc' / 'transport'}"})
        conf = world.hisp_a_on_postfix("postmaster-a", a, f"sqlite:{root}/tracking-a.db", 30, [world.bob])
        with serving(a, conf, root / "milter-a.log"):
            yield {"a": a, "ops": ops, "b": b, "root": root}


def test_the_postmasters_copy_of_a_bounce_withholds_the_decrypted_headers(world: World,
                                                                         rig: dict[str, Any]) -> None:
    """bob -> gone@, whose delivery fails after acceptance. bob gets a secured DSN (elsewhere tested); the
    postmaster's copy reaches ops.test as a delivery report naming the failure, without the returned headers."""
    content = (f"Subject: {SECRET}\r\nFrom: {BOB}\r\nTo: {GONE}\r\nMessage-ID: <pm-1@direct.b.test>\r\n"
               "Content-Type: text/plain\r\n\r\nresults\r\n").encode()
    signed = peer.sign(b"Content-Type: message/rfc822\r\n\r\n" + content, world.bob)
    wire = (f"From: {BOB}\r\nTo: {GONE}\r\nMessage-ID: <pm-1@direct.b.test>\r\n".encode()
            + peer.encrypt(signed, [world.a_org.cert_path]))
    assert submit(rig["a"].smtp_port, BOB, [GONE], wire).ok
    [copy] = wait_until(lambda: rig["ops"].messages(), "the postmaster's copy at ops.test")
    assert b"multipart/report" in copy.data and b"5.2.2" in copy.data and GONE.encode() in copy.data
    assert SECRET.encode() not in copy.data and b"pm-1@direct.b.test" not in copy.data, copy.data.decode()
    assert b"withheld" in copy.data
