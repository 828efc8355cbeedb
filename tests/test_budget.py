"""Issue 19: what one message may cost us (directmilter.budget): certificate fetches in all and per host, wall time,
and no download at all for a certificate that cannot lead to an anchor.

The rig: carol@direct.b.test holds a genuine certificate under R1 (which alice trusts) that her CA has revoked on
a CRL served over loopback HTTP; "decoys" are certificates a stranger made for carol's address under a CA nobody
trusts, each naming three caIssuers URLs on the same server (answered 404), which the validator would try in the
hope of building a path. The attack the budget must stop: a message signed by seven decoys and by carol's revoked
certificate spends the fetches on the decoys, so carol's CRL is never fetched, which under soft-fail would let the
revoked signer pass as "status undetermined".
"""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import opensslpeer as peer
import pytest
from asn1crypto import cms as asn1_cms
from conftest import World, envelope
from httpserver import HttpServer
from revocation import make_crl

from directmilter.agent import Agent
from directmilter.agent.crypto import open_message, seal
from directmilter.budget import Deadline, WorkBudget
from directmilter.cms import der
from directmilter.config import load_config
from directmilter.errors import (
    CertificateRevoked,
    FetchBudgetSpent,
    NoTrustedRecipients,
    WorkTimeExceeded,
)
from directmilter.replies import reply_for

ALICE, CAROL = "alice@direct.a.test", "carol@direct.b.test"
DECOYS = 7  # with carol: the 8 SignerInfos a message may carry (cms.signed.MAX_SIGNERS)
URLS_PER_DECOY = 3


@pytest.fixture(scope="module")
def bg(world: World) -> Iterator[dict[str, Any]]:
    with HttpServer() as http:
        inter = world.pki.intermediate("BG-I", world.r1)
        carol = world.pki.leaf("bg-carol", inter, email=CAROL, crl_url=http.url("/BG.crl"))
        http.set("/BG.crl", make_crl(inter, [(carol.cert, dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))]),
                 "application/pkix-crl")
        evil = world.pki.root("BG-Evil")
        decoys = [world.pki.leaf(f"bg-decoy{i}", evil, email=CAROL,
                                 aia_ca_issuers=[http.url(f"/decoy{i}-{j}.cer") for j in range(URLS_PER_DECOY)])
                  for i in range(DECOYS)]
        http.set("/slow.cer", evil.der())
        http.delay("/slow.cer", 30)
        slow = world.pki.leaf("bg-slow", evil, email=CAROL, aia_ca_issuers=http.url("/slow.cer"))
        http.set("/self.cer", evil.der())
        stranger = world.pki.leaf("bg-self", None, email=CAROL, self_signed=True, aia_ca_issuers=http.url("/self.cer"))
        yield {"http": http, "inter": inter, "carol": carol, "decoys": decoys, "slow": slow, "stranger": stranger}


def agent_for(world: World, name: str, limits: dict[str, Any] | None = None, **trust: Any) -> Agent:
    body = {**world.hisp_a_body(), "limits": limits or {}, "trust": {"revocation": "soft-fail", **trust}}
    return Agent(load_config(world.write_config(name, body)))


def from_carol(world: World, bg: dict[str, Any], *signers: Any, last: Any = None) -> bytes:
    """A message to alice signed by ``signers``, carol's intermediate carried along; ``last``'s SignerInfo is put
    last (openssl writes the SET OF SignerInfo in DER order; an attacker writes whatever order it likes)."""
    first, *others = signers
    signed = peer.sign(b"Content-Type: text/plain\r\n\r\nhello\r\n", first, co_signers=others,
                       extra_certs=[bg["inter"]])
    if last is not None:
        signed = _signer_last(signed, last.cert.serial_number)
    return b"From: carol@direct.b.test\r\nTo: alice@direct.a.test\r\n" + peer.encrypt(signed, [world.alice.cert_path])


def _signer_last(signed: bytes, serial: int) -> bytes:
    """The SignedData re-encoded by hand with the SignerInfo of ``serial`` last (asn1crypto would sort the SET)."""
    marker = b'filename="smime.p7s"\r\n\r\n'
    head, _, p7s = signed.rpartition(marker)
    body, boundary, tail = p7s.partition(b"\r\n------")
    data = asn1_cms.ContentInfo.load(base64.b64decode(body))["content"]
    infos = sorted(data["signer_infos"], key=lambda i: i["sid"].chosen["serial_number"].native == serial)
    assert infos[-1]["sid"].chosen["serial_number"].native == serial
    fields = [data[name].dump() for name in ("version", "digest_algorithms", "encap_content_info", "certificates")]
    signed_data = der.tlv(0x30, b"".join(fields) + der.tlv(0x31, b"".join(i.dump() for i in infos)))
    encoded = der.tlv(0x30, asn1_cms.ContentType("signed_data").dump() + der.tlv(0xA0, signed_data))
    return head + marker + base64.encodebytes(encoded).replace(b"\n", b"\r\n") + boundary + tail


def refusal(agent: Agent, message: bytes) -> Any:
    try:
        with pytest.raises(NoTrustedRecipients) as caught:
            agent.incoming(envelope(message, CAROL, ALICE))
    finally:
        agent.close()
    return caught.value.rejected[ALICE]


def test_a_self_signed_stranger_costs_no_download(world: World, bg: dict[str, Any]) -> None:
    """A self-signed certificate that is not an anchor leads nowhere, whatever its caIssuers URL says: refused
    as untrusted with no request made (its maker chose the URL)."""
    before = bg["http"].count("/self.cer")
    error = refusal(agent_for(world, "bg-self"), from_carol(world, bg, bg["stranger"]))
    assert "no path to a trust anchor" in error.reason, error
    assert bg["http"].count("/self.cer") == before


@pytest.mark.parametrize("limits", [{}, {"max_fetches": 3}], ids=["per-host", "per-message"])
def test_decoys_cannot_spend_the_real_signers_revocation_check(world: World, bg: dict[str, Any],
                                                               limits: dict[str, Any]) -> None:
    """carol's revoked certificate is refused as revoked when she signs alone. Behind seven decoys that ask for 21
    downloads, the message may make only 8 from one host (or ``max_fetches`` in all); carol's CRL is then not
    fetched, and her certificate is refused for that (5.7.1, naming the limit), never passed as a soft failure."""
    alone = refusal(agent_for(world, "bg-alone"), from_carol(world, bg, bg["carol"]))
    assert isinstance(alone, CertificateRevoked), alone

    bg["http"].clear()
    error = refusal(agent_for(world, f"bg-decoys-{len(limits)}", limits),
                    from_carol(world, bg, bg["carol"], *bg["decoys"], last=bg["carol"]))
    assert isinstance(error, FetchBudgetSpent), error
    limit = limits.get("max_fetches", 8)
    assert ("max_fetches" if limits else "max_fetches_per_host") in error.reason
    assert len(bg["http"].requests()) == limit, bg["http"].requests()
    assert bg["http"].count("/BG.crl") == 0
    assert reply_for(error).code == "550"


def test_a_slow_publisher_holds_a_message_no_longer_than_its_time(world: World, bg: dict[str, Any]) -> None:
    """A caIssuers URL that answers after 30 s, with 25 s per request allowed: the message has 2 s
    ([limits] max_seconds) and is deferred (4.x.x) saying so, not held until the request gives up."""
    agent = agent_for(world, "bg-slow", {"max_seconds": 2}, http_timeout=25)
    try:
        with pytest.raises(WorkTimeExceeded, match=r"time of 2 s is spent \(\[limits\] max_seconds\)") as caught:
            agent.incoming(envelope(from_carol(world, bg, bg["slow"]), CAROL, ALICE))
    finally:
        agent.close()
    assert reply_for(caught.value).temporary


def test_the_crypto_stops_once_the_message_time_is_spent(world: World) -> None:
    """Where the work is done (in a worker process, or inline): sealing and opening look at the deadline between
    their steps, so a worker stops on a message the milter already gave up."""
    config = load_config(world.write_config("bg-deadline", world.hisp_a_body()))
    message = b"From: alice@direct.a.test\r\nTo: alice@direct.a.test\r\nSubject: x\r\n\r\nhi\r\n"
    sealed = seal(config, message, ALICE, [config.identities_for(ALICE)[0].certificate],
                  [config.identities_for(ALICE)[0].certificate])
    spent = Deadline(time.monotonic() - 1, 5)
    with pytest.raises(WorkTimeExceeded, match="decrypting"):
        open_message(config, sealed, [ALICE], deadline=spent)
    with pytest.raises(WorkTimeExceeded, match="reading the message to sign"):
        seal(config, message, ALICE, [config.identities_for(ALICE)[0].certificate], [], deadline=spent)
    assert open_message(config, sealed, [ALICE], deadline=Deadline.after(60)).by_recipient[ALICE] == 0


def test_the_agent_hands_the_message_time_to_the_crypto(world: World) -> None:
    """Process Incoming passes its budget's deadline down to the decryption: a message whose time is spent is
    not opened at all."""
    from directmilter.agent.incoming import process_incoming

    agent = Agent(load_config(world.write_config("bg-agent-deadline", world.hisp_a_body())))
    try:
        config = agent.context.config
        alice = config.identities_for(ALICE)[0].certificate
        sealed = seal(config, b"From: alice@direct.a.test\r\nTo: alice@direct.a.test\r\n\r\nhi\r\n", ALICE, [alice],
                      [alice])
        spent = WorkBudget(0.001, 10, 10)
        time.sleep(0.01)
        with pytest.raises(WorkTimeExceeded, match="decrypting"):
            process_incoming(agent.context, envelope(sealed, ALICE, ALICE), budget=spent)
        assert process_incoming(agent.context, envelope(sealed, ALICE, ALICE),
                                budget=WorkBudget(60, 10, 10)).recipients == (ALICE,)
    finally:
        agent.close()


def test_a_deadline_less_than_a_second_away_has_not_passed() -> None:
    """Found by mutation testing (scripts/mutation.py): a check that fired a second early passed the suite."""
    Deadline.after(0.5).check("almost done")
    with pytest.raises(WorkTimeExceeded, match="almost done"):
        Deadline.after(-0.001).check("almost done")


def test_budget_counts_in_all_and_per_host() -> None:
    budget = WorkBudget(60, fetches=3, per_host=2)
    assert budget.take_fetch("a.test") is None and budget.take_fetch("a.test") is None
    assert "fetches from a.test are spent" in (budget.take_fetch("a.test") or "")
    assert budget.take_fetch("b.test") is None
    assert "3 certificate fetches are spent" in (budget.take_fetch("c.test") or "")
    assert budget.refused == 2 and budget.first_refusal is not None and "a.test" in budget.first_refusal


def test_a_worker_stops_on_a_message_whose_time_is_spent(world: World) -> None:
    """The deadline crosses to the worker process with the message: a worker handed a message whose time has
    passed (the milter stopped waiting) does no work on it and answers WorkTimeExceeded."""
    from directmilter.agent import workers

    config = load_config(world.write_config("bg-worker", world.hisp_a_body()))
    me = config.identities_for(ALICE)[0].certificate
    sealed = seal(config, b"From: alice@direct.a.test\r\nTo: alice@direct.a.test\r\n\r\nhi\r\n", ALICE, [me], [me])
    pool = workers.WorkerPool(config, 1, inline_below=0)
    try:
        pool.warm_up()
        spent = pool._executor().submit(workers._open, sealed, (ALICE,), Deadline(time.monotonic() - 1, 5))
        assert isinstance(spent.exception(30), WorkTimeExceeded)
        with pytest.raises(WorkTimeExceeded):
            pool.open(sealed, [ALICE], Deadline(time.monotonic() - 1, 5))
        assert pool.open(sealed, [ALICE], Deadline.after(60)).by_recipient[ALICE] == 0
    finally:
        pool.close()


def test_through_postfix_decoys_and_internal_urls_cost_nothing_and_are_refused(world: World,
                                                                              bg: dict[str, Any]) -> None:
    """Through a real Postfix HISP with the production default ([trust] fetch_allow empty): a stranger's
    certificate whose caIssuers URL leads to an internal service, and the seven decoys in front of carol's revoked
    certificate, are refused at end of data with 550 5.7.1, and the internal HTTP server sees no request at all
    (the decoys' attempts still count against the message, so carol's CRL is not fetched either)."""
    from milterd import Milterd
    from mta import Postfix, scratch_dir, submit

    internal = world.pki.leaf("bg-internal", world.pki.root("BG-Evil2"), email=CAROL,
                              aia_ca_issuers=bg["http"].url("/internal-service"))
    body = {**world.hisp_a_body(), "trust": {"revocation": "soft-fail", "fetch_allow": []},
            "milter": {"internal_hosts": [], "workers": 0}}
    with scratch_dir("directmilter-budget-") as root:
        milter = Milterd(world.write_config("bg-postfix", body), root / "milter.log")
        a = Postfix(root=root / "a", name="mx.a.test", mailboxes={ALICE: "alice"}, milter=milter.postfix_spec)
        with milter, a:
            bg["http"].clear()
            stranger = submit(a.smtp_port, CAROL, [ALICE], from_carol(world, bg, internal))
            decoyed = submit(a.smtp_port, CAROL, [ALICE],
                             from_carol(world, bg, bg["carol"], *bg["decoys"], last=bg["carol"]))
            log = (root / "milter.log").read_text()
        assert bg["http"].requests() == []
        assert not a.maildir(ALICE)
    for result in (stranger, decoyed):
        assert result.data is not None and result.data[0] == 550 and result.data[1].startswith("5.7.1"), result
    assert "max_fetches_per_host" in decoyed.data[1], decoyed
    assert "hello" not in log


def test_through_postfix_a_slow_publisher_defers_the_message_within_its_time(world: World,
                                                                             bg: dict[str, Any]) -> None:
    """The time budget through a real Postfix: a signer whose caIssuers URL answers after 30 s, [limits]
    max_seconds = 2. Postfix gets 451 4.4.3 naming the limit at end of data, well inside its own milter timeout,
    and nothing is delivered."""
    from milterd import Milterd
    from mta import Postfix, scratch_dir, submit

    body = {**world.hisp_a_body(), "limits": {"max_seconds": 2}, "trust": {"http_timeout": 25},
            "milter": {"internal_hosts": [], "workers": 0}}
    with scratch_dir("directmilter-budget-time-") as root:
        milter = Milterd(world.write_config("bg-postfix-time", body), root / "milter.log")
        a = Postfix(root=root / "a", name="mx.a.test", mailboxes={ALICE: "alice"}, milter=milter.postfix_spec)
        with milter, a:
            result = submit(a.smtp_port, CAROL, [ALICE], from_carol(world, bg, bg["slow"]))
            assert not a.maildir(ALICE)
    assert result.data is not None and result.data[0] == 451 and result.data[1].startswith("4.4.3"), result
    assert "max_seconds" in result.data[1], result
