"""One address identity with Postfix: no spelling, alias, bcc map or local path lets plaintext in or out.

A private Postfix HISP B configured as a Debian admin would have it (recipient_delimiter = +, localhost in
mydestination, the percent hack and bang paths on, as Postfix ships them), with virtual aliases and a recipient
bcc map, and directmilter reading that configuration (``[milter] postfix_config``). Everything that leaves B goes
to a wire sink W, so "nothing in clear leaves" is checked on what actually went over SMTP, and "nothing unsigned in
a mailbox" on the Maildirs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import opensslpeer as peer
import pytest
from conftest import CANARY, World, envelope, plain_message
from milterd import serving
from mta import Postfix, Sink, scratch_dir, submit, wait_until

from directmilter.addresses import base_mailbox, canonical, internal_form
from directmilter.errors import AddressSyntax

ALICE, BOB, BOB2, CAROL = "alice@direct.a.test", "bob@direct.b.test", "bob2@direct.b.test", "carol@direct.b.test"
DAVE, DAN = "dave@direct.c.test", "dan@direct.b.test"
#: Postfix's inline tables: fwd@ forwards off the Direct domains, list@ mixes a Direct mailbox and a remote one,
#: b@alias.test is an outside address aliased into bob's mailbox, carol is Bcc'd to a remote archive.
ALIASES = ("inline:{ {fwd@direct.b.test = far@remote.test}, {list@direct.b.test = bob@direct.b.test, "
           "far@remote.test}, {b@alias.test = bob@direct.b.test} }")
BCC = "inline:{ {carol@direct.b.test = archive@remote.test} }"
#: Mail from this (remote) sender is copied by cleanup to a remote archive: decrypted, it would leave in clear.
COPIED = "copied@direct.a.test"
SENDER_BCC = f"inline:{{ {{{COPIED} = archive@remote.test}} }}"


@pytest.fixture(scope="module")
def hisp(world: World) -> Iterator[dict[str, Any]]:
    dave = world.pki.leaf("dave", world.r2, email=DAVE)
    with scratch_dir("directmilter-addressing-") as root, Sink(root / "wire") as wire:
        b = Postfix(root=root / "b", name="mx.b.test", mailboxes={BOB: "bob", BOB2: "bob2", CAROL: "carol", DAN: "dan"},
                    relay={"remote.test": f"127.0.0.1:{wire.port}", "direct.a.test": f"127.0.0.1:{wire.port}",
                           "direct.c.test": f"127.0.0.1:{wire.port}"},
                    main_cf={"recipient_delimiter": "+", "mydestination": "localhost",
                             # dan's mailbox is on another host, reached over SMTP: never decrypted mail for it
                             "transport_maps": f"inline:{{ {{{DAN} = smtp:[127.0.0.1]:{wire.port}}} }} "
                                               f"texthash:{root / 'b' / 'etc' / 'transport'}",
                             "virtual_alias_maps": ALIASES, "virtual_alias_domains": "alias.test",
                             "recipient_bcc_maps": BCC, "sender_bcc_maps": SENDER_BCC,
                             "internal_mail_filter_classes": "bounce"},
                    local_users=True)
        body = world.hisp_b_body()
        # The domain trusts R1 and R2; bob trusts R1 only. dave (under R2) is trusted by bob2, never by bob.
        body["domains"]["direct.b.test"]["anchors"] = [str(world.r1.cert_path), str(world.r2.cert_path)]
        body["addresses"][BOB]["anchors"] = [str(world.r1.cert_path)]
        body["certificates"]["files"].append(str(dave.cert_path))
        conf = world.write_config("addressing-b", {
            **body,
            "milter": {"internal_hosts": [], "submission_daemons": [], "postfix_config": str(b.etc)},
            "notify": {"reinject": f"127.0.0.1:{b.reinject_port}", "tracking": f"sqlite:{root}/tracking.db",
                       "mdn_delay": 0.2},
        })
        with serving(b, conf, root / "milter.log") as milter:
            yield {"b": b, "wire": wire, "milter": milter, "root": root, "dave": dave}


def sealed_by_alice(world: World, message: bytes, *recipients: str) -> bytes:
    from directmilter.agent import Agent

    sealer = Agent(world.hisp_a())
    try:
        return bytes(sealer.outgoing(envelope(message, ALICE, *recipients)).message)
    finally:
        sealer.close()


def nothing_in_clear(hisp: dict[str, Any]) -> None:
    """Nothing on the wire carries the canary, and every mailbox copy was verified (no canary with no trace)."""
    time.sleep(1.0)
    for message in hisp["wire"].messages():
        assert CANARY.encode() not in message.data, message.rcpts
        assert b"application/pkcs7-mime" in message.data, message.rcpts


# --- the address forms, in process ------------------------------------------------------------------------------


@pytest.mark.parametrize(("spelling", "form"), [
    ("<bob@direct.b.test.>", "bob@direct.b.test"),
    ('"bob"@direct.b.test', "bob@direct.b.test"),
    ("BOB@Direct.B.Test", "bob@direct.b.test"),
    ('"b\\"ob"@direct.b.test', 'b"ob@direct.b.test'),
])
def test_canonical_form_is_what_postfix_resolves(spelling: str, form: str) -> None:
    assert canonical(spelling) == form


@pytest.mark.parametrize("spelling", ["bob%direct.b.test@localhost", "direct.b.test!bob@localhost",
                                      "@mx.b.test:bob@direct.b.test", '"bob@direct.b.test', "bob"])
def test_routing_syntax_is_not_guessed_when_the_mta_is_silent(spelling: str) -> None:
    with pytest.raises(AddressSyntax):
        canonical(spelling)
    # What the MTA itself resolved is taken as it is: routing characters there name the next hop's mailbox.
    assert canonical("bob%direct.b.test@remote.test", resolved_by_mta=True) == "bob%direct.b.test@remote.test"


def test_extension_and_internal_form() -> None:
    assert base_mailbox("bob+tag@d.test", "+") == ("bob@d.test", "+tag")
    assert base_mailbox("bob-x+y@d.test", "+-") == ("bob@d.test", "-x+y")
    assert base_mailbox("bob+tag@d.test", "") == ("bob+tag@d.test", "")
    assert internal_form('<"bob"@D.test>') == "bob@D.test"


def test_mailbox_keeps_an_extension_with_its_own_table(world: World) -> None:
    config = world.hisp_b(milter={"recipient_delimiter": "+"},
                          addresses={**world.hisp_b_body()["addresses"],
                                     "bob+lab@direct.b.test": {"anchors": [str(world.r1.cert_path)]}})
    assert config.mailbox("Bob+Anything@direct.b.test") == BOB
    assert config.mailbox("bob+lab@direct.b.test") == "bob+lab@direct.b.test"


# --- through Postfix ----------------------------------------------------------------------------------------------

SPELLINGS = ["bob@direct.b.test.", "bob%direct.b.test@localhost", "bob%direct.b.test@[127.0.0.1]",
             "direct.b.test!bob@localhost", "bob+tag@direct.b.test", '"bob"@direct.b.test', "b@alias.test"]


@pytest.mark.conformance("ALG-2", "ALG-12")
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_no_spelling_of_a_direct_mailbox_takes_plaintext(hisp: dict[str, Any], spelling: str) -> None:
    """Unsigned plaintext from an untrusted client (127.0.0.2) to any spelling Postfix resolves to bob: refused,
    and bob's mailbox gets nothing."""
    marker = f"plaintext via {spelling}".encode()
    result = submit(hisp["b"].smtp_port, "mallory@evil.test", [spelling], plain_message(to=spelling, body=marker),
                    source="127.0.0.2")
    assert not result.ok, (spelling, result)
    assert result.data is not None and result.data[0] == 554 and "5.7.5" in result.data[1], result
    time.sleep(0.3)
    assert not any(marker in m for m in hisp["b"].maildir(BOB))
    assert "other_mail" not in (hisp["root"] / "milter.log").read_text()


@pytest.mark.conformance("ALG-13")
def test_an_extension_gets_the_mailboxs_own_anchors_not_the_domains(world: World, hisp: dict[str, Any]) -> None:
    """dave is trusted by the domain (R2) but not by bob (R1 only): bob+tag@ must be bob, and refuse him; bob2,
    who has no anchors of his own, takes the same message (so it is refused for trust, nothing else)."""
    signed = peer.sign(f"Content-Type: text/plain\r\n\r\n{CANARY} from dave\r\n".encode(), hisp["dave"])
    for rcpt, delivered in (("bob+tag@direct.b.test", False), (BOB2, True)):
        message = (f"From: {DAVE}\r\nTo: {rcpt}\r\nMessage-ID: <dave-{rcpt[:3]}@direct.c.test>\r\n".encode()
                   + peer.encrypt(signed, [world.bob.cert_path, world.bob2.cert_path]))
        result = submit(hisp["b"].smtp_port, DAVE, [rcpt], message, source="127.0.0.2")
        assert result.ok is delivered, (rcpt, result)
        if not delivered:
            assert result.data is not None and result.data[0] == 550 and "bob@direct.b.test" in result.data[1]
    wait_until(lambda: any(b"from dave" in m for m in hisp["b"].maildir(BOB2)), "bob2's copy")
    assert not any(b"from dave" in m for m in hisp["b"].maildir(BOB))


def test_many_spellings_of_one_mailbox_give_one_copy_and_one_mdn(world: World, hisp: dict[str, Any]) -> None:
    def mdns() -> list[Any]:  # the MDNs about this message (another test's may leave B meanwhile)
        return [m for m in hisp["wire"].messages() if m.rcpts == [ALICE]
                and b"<spellings-1@direct.a.test>" in peer.decrypt(m.data, world.alice)]

    message = plain_message(to=BOB, body=b"spellings\r\n").replace(b"<test-1@", b"<spellings-1@")
    wire = sealed_by_alice(world, message, BOB)
    before = len(hisp["b"].maildir(BOB))
    spellings = [BOB, "bob+one@direct.b.test", "bob+two@direct.b.test", "BOB@direct.b.test", "bob@direct.b.test."]
    result = submit(hisp["b"].smtp_port, ALICE, spellings, wire, source="127.0.0.2")
    assert result.ok and result.accepted == spellings, result
    wait_until(lambda: len(hisp["b"].maildir(BOB)) > before, "bob's copy")
    [mdn] = wait_until(mdns, "the MDN")
    assert b"X-Directmilter-Queued" not in mdn.data  # the seal is for the re-injection listener only
    time.sleep(2)
    assert len(hisp["b"].maildir(BOB)) == before + 1
    assert len(mdns()) == 1
    assert wait_until(lambda: hisp["b"].queue() == [], "B's queue to drain")


@pytest.mark.conformance("AS-2.4-6")
@pytest.mark.parametrize(("rcpt", "why"), [
    ("fwd@direct.b.test", "forwards it to far@remote.test"),
    ("list@direct.b.test", "forwards it to far@remote.test"),
    (CAROL, "copies its mail to archive@remote.test"),
    (DAN, "delivers it with transport 'smtp'"),
])
def test_aliases_and_bcc_maps_never_carry_decrypted_mail_off_the_host(world: World, hisp: dict[str, Any],
                                                                      rcpt: str, why: str) -> None:
    """A trusted, secured message to an address Postfix would copy or forward off the Direct domains after the
    milter: refused at RCPT with the reason; nothing reaches the wire in clear."""
    hisp["wire"].clear()
    wire = sealed_by_alice(world, plain_message(to=rcpt), BOB)  # refused at RCPT, whatever the content
    result = submit(hisp["b"].smtp_port, ALICE, [rcpt], wire, source="127.0.0.2")
    assert not result.accepted and result.refused[rcpt][0] == 550, result
    assert why in result.refused[rcpt][1] and "5.7.1" in result.refused[rcpt][1]
    nothing_in_clear(hisp)


@pytest.mark.conformance("AS-2.4-6")
def test_a_sender_bcc_map_copying_decrypted_mail_off_the_host_is_refused(world: World,
                                                                         hisp: dict[str, Any]) -> None:
    """sender_bcc_maps copies mail from copied@direct.a.test to a remote archive after the milter: a Direct message
    from that sender to bob is refused at RCPT (the archive would get bob's decrypted copy); nothing on the wire."""
    hisp["wire"].clear()
    result = submit(hisp["b"].smtp_port, COPIED, [BOB], plain_message(sender=COPIED), source="127.0.0.2")
    assert not result.accepted and result.refused[BOB][0] == 550, result
    assert "archive@remote.test (sender_bcc_maps)" in result.refused[BOB][1]
    nothing_in_clear(hisp)
    assert [m for m in hisp["wire"].messages() if m.mail_from == COPIED] == []  # other tests' mail may be leaving


def test_local_submission_cannot_sign_as_a_hosted_user(hisp: dict[str, Any]) -> None:
    """``sendmail -f bob@...`` by an unprivileged local account (uid 65534; non_smtpd_milters, client 127.0.0.1 as
    Postfix emulates it): dropped at MAIL FROM and logged, so nothing is signed as bob, nothing in clear leaves or
    reaches a mailbox, and no bounce to the forged (hosted) sender is left stuck in the queue."""
    hisp["wire"].clear()
    b = hisp["b"]
    marker = b"locally submitted as bob\r\n"
    for rcpt in ("far@remote.test", BOB2):
        done = b.sendmail(BOB, [rcpt], plain_message(sender=BOB, to=rcpt, body=marker))
        assert done.returncode == 0, done  # postdrop takes it; pickup then hands it to cleanup and the milter
    wait_until(lambda: b.maillog().count("uid=65534 from=<bob@direct.b.test>") >= 2, "pickup of both")
    wait_until(lambda: (hisp["root"] / "milter.log").read_text().count("may not use a Direct sender") >= 2,
               "both refusals logged")
    nothing_in_clear(hisp)
    assert [m for m in hisp["wire"].messages() if m.mail_from == BOB] == []  # other tests' mail may be leaving
    assert not any(marker in m for m in b.maildir(BOB2))
    assert wait_until(lambda: b.queue() == [], "nothing left queued")


@pytest.mark.conformance("AS-3.0-7")
def test_reports_from_smtp_clients_are_not_signed_for_them(hisp: dict[str, Any]) -> None:
    """A null-sender message to a remote address from any SMTP client, even one allowed to relay: refused, so no
    one can have us sign a DSN in a hosted user's name with text of their choosing."""
    hisp["wire"].clear()
    forged = (f"From: {BOB}\r\nTo: far@remote.test\r\nSubject: {CANARY}\r\nContent-Type: multipart/report; "
              "report-type=delivery-status; boundary=x\r\n\r\n--x\r\n\r\nforged\r\n--x--\r\n").encode()
    result = submit(hisp["b"].smtp_port, "", ["far@remote.test"], forged)
    assert not result.accepted and "sent by this host's MTA only" in result.refused["far@remote.test"][1]
    nothing_in_clear(hisp)
    assert [m for m in hisp["wire"].messages() if m.mail_from == ""] == []  # others' MDNs may be leaving


@pytest.mark.conformance("AS-2.4-6")
@pytest.mark.parametrize("rcpt", [BOB, "far@remote.test"])
def test_the_reinjection_listener_takes_only_what_directmilter_sealed(hisp: dict[str, Any], rcpt: str) -> None:
    """Any local account can reach the loopback re-injection port. Plaintext sent there straight (no seal, or a
    seal made up or taken from another message) never reaches a Direct mailbox nor leaves in clear; a message
    sealed by the running milter's own delivery code is queued, without its seal."""
    from directmilter.delivery.reinject import SEAL_FIELD, seal

    hisp["wire"].clear()
    b = hisp["b"]
    marker = f"straight to reinject for {rcpt}".encode()
    plain = plain_message(sender=BOB, to=rcpt, body=marker + b"\r\n")
    made_up = f"{SEAL_FIELD}: {seal(BOB, [rcpt], marker)}\r\n".encode() + plain  # this process's key, not the milter's
    for attempt in (plain, made_up):
        result = submit(b.reinject_port, BOB, [rcpt], attempt, source="127.0.0.2")
        assert not result.ok and result.data is not None and result.data[0] == 550, result
        assert "takes only the notifications directmilter queues" in result.data[1]
    nothing_in_clear(hisp)
    assert [m for m in hisp["wire"].messages() if rcpt in m.rcpts] == []  # other tests' MDNs may be leaving
    assert not any(marker in m for m in b.maildir(BOB))
    assert b.queue() == []


# --- check-config reads Postfix ---------------------------------------------------------------------------------


def test_check_config_reads_postfix_and_warns_about_what_walks_around_the_milter(world: World, tmp_path) -> None:
    """postconf on a main.cf and master.cf an admin might write: each setting that lets mail skip the milter or
    copies decrypted mail off the hosted domains is named; the recommended lines give no such warning."""
    from directmilter.config import describe, load_config

    etc = tmp_path / "postfix"
    etc.mkdir()
    risky = {"mydestination": "localhost, direct.b.test", "non_smtpd_milters": "",
             "internal_mail_filter_classes": "", "milter_default_action": "accept", "always_bcc": "archive@x.test",
             "recipient_delimiter": "+", "virtual_alias_maps": ALIASES, "local_login_sender_maps": "static:*",
             "smtpd_milters": "inet:127.0.0.1:8891, inet:127.0.0.1:8892"}
    (etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in risky.items()))
    (etc / "master.cf").write_text("127.0.0.1:10027 inet n - n - - smtpd\n  -o smtpd_milters=\n"
                                   "  -o receive_override_options=no_milters\n")
    body = {**world.hisp_b_body(), "milter": {"postfix_config": str(etc), "local_submission": True}}
    config = load_config(world.write_config("postfix-risky", body))
    assert config.recipient_delimiter == "+" and config.mailbox("Bob+x@direct.b.test") == BOB
    text = "\n".join(describe(config))
    for needle in ("direct.b.test is in mydestination", "non_smtpd_milters is empty",
                   "internal_mail_filter_classes lacks bounce", "milter_default_action = accept",
                   "127.0.0.1:10027/inet sets smtpd_milters", "sets receive_override_options = no_milters",
                   "always_bcc = archive@x.test", "any local account could sign as any hosted user",
                   "checked after-milter rewriting: virtual_alias_maps",
                   "service bounce does not use a cleanup with -o milter_macro_daemon_name=POSTFIX-REPORT",
                   "smtpd_milters lists more than one milter"):
        assert needle in text, (needle, text)

    good = {"mydestination": "localhost", "non_smtpd_milters": "inet:127.0.0.1:8891",
            "smtpd_milters": "inet:127.0.0.1:8891", "internal_mail_filter_classes": "bounce",
            "milter_default_action": "tempfail"}
    (etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in good.items()))
    (etc / "master.cf").write_text("127.0.0.1:10027 inet n - n - - smtpd\n"
                                   "  -o milter_macro_daemon_name=DIRECTMILTER-REINJECT\n"
                                   + "".join(f"{name} unix - - n - 0 bounce\n  -o cleanup_service_name=cleanup-report\n"
                                             for name in ("bounce", "defer", "trace"))
                                   + "cleanup-report unix n - n - 0 cleanup\n"
                                     "  -o milter_macro_daemon_name=POSTFIX-REPORT\n")
    body["milter"] = {"postfix_config": str(etc)}
    text = "\n".join(describe(load_config(world.write_config("postfix-good", body))))
    assert "warning: Postfix" not in text, text
    assert "recipient_delimiter none" in text

    # The commit witness (issue 20) must reach the re-injection listener, or it would bounce to every sender.
    body["notify"] = {"reinject": "127.0.0.1:10027", "commit_witness": True}
    text = "\n".join(describe(load_config(world.write_config("postfix-witness", body))))
    assert "commit_witness is on, but transport_maps sends directmilter.invalid to nowhere" in text, text
    (etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in good.items()) + "transport_maps = inline:{ "
                                 "{ directmilter.invalid = smtp:[127.0.0.1]:10027 } }\n")
    text = "\n".join(describe(load_config(world.write_config("postfix-witness", body))))
    assert "warning: Postfix" not in text, text


@pytest.mark.parametrize("address", ['b o b@direct.b.test', 'b"ob@direct.b.test', "bob..x@direct.b.test",
                                     ".bob@direct.b.test"])
def test_a_hosted_mailbox_needs_a_plain_local_part(address: str) -> None:
    """A quoted hosted local part once made MDN building fail after acceptance (451 for good): refused up front."""
    from directmilter.addresses import check_plain

    with pytest.raises(AddressSyntax, match="plain local part"):
        check_plain(address)
    assert check_plain("bob+x.y@direct.b.test") == "bob+x.y@direct.b.test"


def test_local_aliases_that_would_send_a_direct_mailbox_on_are_refused(world: World, tmp_path) -> None:
    """A hosted domain delivered by local(8) (in mydestination): aliases(5) apply after the milter. An alias to a
    remote address, a command or a file takes the decrypted message out of Direct's hands: refused at RCPT; an
    alias to a local account or another hosted mailbox is not. Postfix's own postmap answers, no daemon needed."""
    from directmilter.config import load_config
    from directmilter.errors import ClearCopyForbidden
    from directmilter.milter.direction import delivered_to
    from directmilter.postfix import AddressMaps

    etc = tmp_path / "postfix"
    etc.mkdir()
    (etc / "main.cf").write_text(
        "recipient_delimiter = +\nmydestination = direct.b.test\n"
        "alias_maps = inline:{ {bob = bob@gmail.test}, {bob2 = |/usr/local/bin/archive}, {carol = carol-local},"
        " {ann = /var/mail/ann.txt}, {postmaster = bob@direct.b.test},"
        " {clinic = bob@direct.b.test, bob@gmail.test} }\n")
    config = load_config(world.write_config("postfix-local", {**world.hisp_b_body(),
                                                              "milter": {"postfix_config": str(etc)}}))
    maps = AddressMaps(config.postfix)  # type: ignore[arg-type]
    for address, target in ((BOB, "bob@gmail.test"), ("bob+lab@direct.b.test", "bob@gmail.test"),
                            (BOB2, "|/usr/local/bin/archive"), ("ann@direct.b.test", "/var/mail/ann.txt")):
        with pytest.raises(ClearCopyForbidden, match=re.escape(f"aliases send it to {target}")):
            delivered_to(config, maps, address, "local")
    assert delivered_to(config, maps, CAROL, "local") == CAROL
    assert delivered_to(config, maps, BOB, "virtual") == BOB  # virtual(8) does not read aliases(5)
    # A local account aliased into a Direct mailbox is that mailbox: its mail must be secured and trusted for bob.
    assert delivered_to(config, maps, "postmaster@mx.b.test", "local") == BOB
    with pytest.raises(ClearCopyForbidden, match=re.escape("aliases send it to bob@gmail.test")):
        delivered_to(config, maps, "clinic@mx.b.test", "local")


@pytest.mark.parametrize("spelling", ["bob%direct.b.test@localhost", "direct.b.test!bob@localhost",
                                      '"bob"@direct.b.test', "bob+x@direct.b.test", "b@alias.test"])
def test_a_removed_recipient_is_removed_in_the_spelling_the_client_used(world: World, hisp: dict[str, Any],
                                                                         spelling: str) -> None:
    """Secured by alice for bob2 only, sent to bob2 and to a spelling of bob: bob (no RecipientInfo for him) is
    removed with delrcpt in the client's spelling, so Postfix delivers to bob2 alone."""
    marker = f"for bob2 only, not {spelling}".encode()
    message = plain_message(to=f"{BOB2}, {BOB}", body=marker + b"\r\n").replace(b"<test-1@", b"<removed-1@")
    wire = sealed_by_alice(world, message, BOB2)
    result = submit(hisp["b"].smtp_port, ALICE, [BOB2, spelling], wire, source="127.0.0.2")
    assert result.ok and result.accepted == [BOB2, spelling], result
    wait_until(lambda: any(marker in m for m in hisp["b"].maildir(BOB2)), "bob2's copy")
    assert wait_until(lambda: hisp["b"].queue() == [], "B's queue to drain")
    assert not any(marker in m for m in hisp["b"].maildir(BOB))


def test_local_submission_when_allowed_is_signed_and_encrypted(world: World) -> None:
    """``[milter] local_submission = true``: sendmail -f alice by a local account is alice's outgoing mail, secured
    like submission; Postfix's local_login_sender_maps says which account may use which sender (here: the
    unprivileged uid 65534, "nobody", may use alice's address and no other). Cleanup cannot refuse one recipient
    of such mail, so an untrusted one (carol, under R2) is removed at end of message and alice told by a DSN."""
    with scratch_dir("directmilter-local-") as root, Sink(root / "wire") as wire:
        a = Postfix(root=root / "a", name="mx.a.test", mailboxes={ALICE: "alice"},
                    relay={"direct.b.test": f"127.0.0.1:{wire.port}"}, local_users=True,
                    main_cf={"local_login_sender_maps": f"inline:{{ {{nobody = {ALICE}}} }}, static:<>"})
        conf = world.write_config("local-submission-a", {
            **world.hisp_a_body(),
            "milter": {"internal_hosts": [], "submission_daemons": [], "postfix_config": str(a.etc),
                       "local_submission": True},
            "notify": {"reinject": f"127.0.0.1:{a.reinject_port}", "tracking": f"sqlite:{root}/tracking.db",
                       "mdn_delay": 0.2}})
        with serving(a, conf, root / "milter.log"):
            other = a.sendmail("al2@direct.a.test", [BOB], plain_message(sender="al2@direct.a.test"))
            assert other.returncode != 0 and b"not authorized to use sender" in other.stderr, other
            done = a.sendmail(ALICE, [BOB, CAROL], plain_message(to=f"{BOB}, {CAROL}"))
            assert done.returncode == 0, done
            [sent] = wire.wait(1)
            [dsn] = wait_until(lambda: [m for m in a.maildir(ALICE) if b"delivery-status" in m], "alice's DSN")
            assert CAROL.encode() in dsn and b"trust anchor" in dsn
            time.sleep(1)
            assert len(wire.messages()) == 1
            assert wait_until(lambda: a.queue() == [], "nothing left queued")
    assert sent.mail_from == ALICE and sent.rcpts == [BOB]
    assert CANARY.encode() not in sent.data
    assert CANARY.encode() in peer.verify(peer.decrypt(sent.data, world.bob), world.r1.cert_path)


def test_canonical_maps_count_like_aliases(world: World, tmp_path) -> None:
    """recipient_canonical_maps and canonical_maps rewrite recipients in cleanup too, after the milter."""
    from directmilter.config import load_config
    from directmilter.errors import ClearCopyForbidden
    from directmilter.milter.direction import delivered_to
    from directmilter.postfix import AddressMaps

    etc = tmp_path / "postfix"
    etc.mkdir()
    (etc / "main.cf").write_text("recipient_canonical_maps = inline:{ {bob@direct.b.test = bob@gmail.test} }\n"
                                 "canonical_maps = inline:{ {@old.b.test = @direct.b.test} }\n")
    config = load_config(world.write_config("postfix-canonical", {**world.hisp_b_body(),
                                                                  "milter": {"postfix_config": str(etc)}}))
    maps = AddressMaps(config.postfix)  # type: ignore[arg-type]
    with pytest.raises(ClearCopyForbidden, match=r"forwards it to bob@gmail\.test"):
        delivered_to(config, maps, BOB, "virtual")
    assert delivered_to(config, maps, "carol@old.b.test", "virtual") == CAROL  # an outside spelling of carol


@pytest.mark.parametrize(("mailer", "nexthop", "allowed"), [
    ("virtual", "direct.b.test", True), ("local", "mx.b.test", True),
    ("lmtp", "unix:private/dovecot-lmtp", True), ("lmtp", "[127.0.0.1]:24", True), ("lmtp", "inet:localhost:24", True),
    ("lmtp", "[::1]:24", True), ("lmtp", "inet:10.1.2.3:24", False), ("lmtp", "[mailstore.b.test]:24", False),
    ("smtp", "[127.0.0.1]:25", False), ("relay", "mailstore.b.test", False), ("dovecot", "direct.b.test", False),
    ("error", "5.2.1 mailbox disabled", True), ("discard", "", True),
])
def test_decrypted_mail_is_only_delivered_on_this_host(world: World, mailer: str, nexthop: str,
                                                        allowed: bool) -> None:
    from directmilter.errors import ClearCopyForbidden
    from directmilter.milter.direction import delivered_to

    config = world.hisp_b()
    if allowed:
        assert delivered_to(config, None, BOB, mailer, nexthop) == BOB
    else:
        with pytest.raises(ClearCopyForbidden, match=r"delivery_transports|another host"):
            delivered_to(config, None, BOB, mailer, nexthop)
    assert delivered_to(config, None, "far@remote.test", "smtp", "remote.test") == "far@remote.test"


def test_a_remote_address_keeps_its_extension(world: World) -> None:
    """Our delimiter says nothing about another HISP's addresses: alice+x@direct.a.test may be someone else than
    alice there, so a certificate bound to alice is never taken as bound to it."""
    config = world.hisp_b(milter={"recipient_delimiter": "+"})
    assert config.mailbox("alice+x@direct.a.test") == "alice+x@direct.a.test"
    assert config.mailbox("bob+x@direct.b.test") == BOB


def test_a_table_postfix_cannot_read_defers_never_passes(world: World, tmp_path) -> None:
    """virtual_alias_maps naming a table that cannot be read: what Postfix will do with the address is unknown, so
    the recipient is deferred (a temporary failure, 451), never taken as not aliased."""
    from directmilter.config import load_config
    from directmilter.errors import TemporaryFailure
    from directmilter.milter.direction import delivered_to
    from directmilter.postfix import AddressMaps
    from directmilter.replies import reply_for

    etc = tmp_path / "postfix"
    etc.mkdir()
    (etc / "main.cf").write_text(f"virtual_alias_maps = texthash:{tmp_path}/no-such-table\n")
    config = load_config(world.write_config("postfix-unreadable", {**world.hisp_b_body(),
                                                                   "milter": {"postfix_config": str(etc)}}))
    with pytest.raises(TemporaryFailure, match="cannot be read") as refused:
        delivered_to(config, AddressMaps(config.postfix), BOB, "virtual")  # type: ignore[arg-type]
    assert reply_for(refused.value).code == "451"
