"""Certificate discovery against real servers on loopback: knotd (DNS CERT), slapd (LDAP), an HTTP server (IPKIX).

Zones: ``direct.b.test`` publishes address certificates (and some bad ones beside good ones), ``org.b.test`` only
an organisational certificate, ``ldap.c.test`` only an LDAP service whose preferred server is down, and
``ldapdown.c.test`` only an LDAP service all of whose servers are down.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import opensslpeer as peer
import pytest
from conftest import CANARY, World, envelope, plain_message
from dnsserver import Blackhole, Knot, a_record, cert_record, ipkix_record, srv_record
from httpserver import HttpServer
from ldapserver import Slapd
from milterd import Milterd
from mta import Postfix, Sink, free_port, scratch_dir, submit

from directmilter.agent import Agent
from directmilter.config import load_config
from directmilter.errors import DependencyTimeout, NoCertificate, NoTrustedRecipients, TemporaryFailure

ALICE, BOB = "alice@direct.a.test", "bob@direct.b.test"


@pytest.fixture(scope="module")
def net(world: World) -> Iterator[dict[str, Any]]:
    pki, r1 = world.pki, world.r1
    certs = {
        "bob": world.bob,
        "expired": pki.leaf("dns-expired", r1, email="mixed@direct.b.test",
                            not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
                            not_after=dt.datetime(2021, 1, 1, tzinfo=dt.UTC)),
        "mixed": pki.leaf("dns-mixed", r1, email="mixed@direct.b.test"),
        "other": pki.leaf("dns-other", r1, email="somebody-else@direct.b.test"),
        "ipkix": pki.leaf("dns-ipkix", r1, email="ipkix@direct.b.test"),
        "garbage": pki.leaf("dns-garbage", r1, email="garbage@direct.b.test"),
        "twice": pki.leaf("dns-twice", r1, email="twice@direct.b.test"),
        "org": pki.leaf("dns-org", r1, dns="org.b.test"),
        "carol": pki.leaf("ldap-carol", r1, email="carol@ldap.c.test"),
        "signonly": pki.leaf("dns-signonly", r1, email="signonly@direct.b.test", key_usage={"digitalSignature"}),
    }
    # Five 4096-bit certificates: the answer exceeds even EDNS's 4096-byte UDP payload and must come over TCP.
    big = [pki.leaf(f"dns-big{i}", r1, email="big@direct.b.test", key="rsa4096") for i in range(5)]
    with scratch_dir("directmilter-net-") as root, HttpServer() as http:
        http.set("/ipkix.cer", certs["ipkix"].der())
        dead_ldap = free_port()  # nothing listens here: the preferred LDAP server is down
        all_dead = [free_port(), free_port()]  # nor here: every LDAP server of ldapdown.c.test is down
        with Slapd(root / "ldap", suffix="dc=ldap,dc=c,dc=test") as slapd:
            slapd.add_person("carol", "carol@ldap.c.test", [certs["carol"].der()])
            zones = {
                "direct.b.test": [
                    cert_record("bob.direct.b.test", certs["bob"].der()),
                    cert_record("mixed.direct.b.test", certs["expired"].der()),
                    cert_record("mixed.direct.b.test", certs["mixed"].der()),
                    cert_record("wrong.direct.b.test", certs["other"].der()),
                    cert_record("garbage.direct.b.test", b"\x30\x03not a certificate"),
                    cert_record("garbage.direct.b.test", certs["garbage"].der()),
                    # the same certificate with its subjectAltName repeated (its extensions cannot be read)
                    cert_record("twice.direct.b.test", pki.with_duplicated_extension("dns-twice-dup", certs["twice"])
                                .der()),
                    cert_record("twice.direct.b.test", certs["twice"].der()),
                    ipkix_record("ipkix.direct.b.test", http.url("/ipkix.cer")),
                    cert_record("signonly.direct.b.test", certs["signonly"].der()),
                    *(cert_record("big.direct.b.test", leaf.der()) for leaf in big),
                ],
                "org.b.test": [cert_record("org.b.test", certs["org"].der())],
                "ldap.c.test": [
                    srv_record("_ldap._tcp.ldap.c.test", 0, 0, dead_ldap, "down.ldap.c.test"),
                    srv_record("_ldap._tcp.ldap.c.test", 10, 0, slapd.port, "up.ldap.c.test"),
                    a_record("down.ldap.c.test", "127.0.0.1"),
                    a_record("up.ldap.c.test", "127.0.0.1"),
                ],
                "ldapdown.c.test": [
                    srv_record("_ldap._tcp.ldapdown.c.test", 0, 0, all_dead[0], "one.ldapdown.c.test"),
                    srv_record("_ldap._tcp.ldapdown.c.test", 10, 0, all_dead[1], "two.ldapdown.c.test"),
                    a_record("one.ldapdown.c.test", "127.0.0.1"),
                    a_record("two.ldapdown.c.test", "127.0.0.1"),
                ],
            }
            with Knot(root / "dns", zones) as knot:
                yield {"knot": knot, "slapd": slapd, "http": http, "certs": certs, "root": root,
                       "big": [leaf.cert for leaf in big]}


def discovering(world: World, dns_port: int, **extra: Any) -> dict[str, Any]:
    body = world.hisp_a_body()
    body["certificates"] = {}  # nothing out of band: everything must be discovered
    body["discovery"] = {"dns": True, "ldap": True, "dns_servers": [f"127.0.0.1:{dns_port}"], "timeout": 2,
                         **extra}
    return body


@pytest.fixture
def agent(world: World, net: dict[str, Any]) -> Iterator[Agent]:
    made = Agent(load_config(world.write_config("discover-a", discovering(world, net["knot"].port))))
    yield made
    made.close()


def secured_for(agent: Agent, rcpt: str) -> tuple[Any, ...]:
    return agent.outgoing(envelope(plain_message(to=rcpt), ALICE, rcpt)).certificates


@pytest.mark.conformance("AS-2.3-1", "AS-2.3-2", "ALG-5", "AS-5.1-1")
def test_address_certificate_found_in_dns(agent: Agent, net: dict[str, Any]) -> None:
    net["knot"].clear_queries()
    assert secured_for(agent, "BOB@Direct.B.Test") == (net["certs"]["bob"].cert,)
    assert ("bob.direct.b.test", "CERT") in net["knot"].queries()


def test_cert_answers_too_large_for_udp_come_over_tcp(agent: Agent, net: dict[str, Any]) -> None:
    net["knot"].clear_queries()
    assert set(secured_for(agent, "big@direct.b.test")) == set(net["big"])
    queries = [q for q in net["knot"].query_log() if q.qname == "big.direct.b.test"]
    assert [q.transport for q in queries] == ["udp", "tcp"] and queries[0].edns


@pytest.mark.conformance("AS-5.2-1")
def test_only_organisational_certificate_in_dns(agent: Agent, net: dict[str, Any]) -> None:
    net["knot"].clear_queries()
    assert secured_for(agent, "anyone@org.b.test") == (net["certs"]["org"].cert,)
    asked = [q for q, t in net["knot"].queries() if t == "CERT"]
    assert asked.index("anyone.org.b.test") < asked.index("org.b.test")


@pytest.mark.conformance("AS-4.0-1")
def test_expired_certificate_beside_a_valid_one(agent: Agent, net: dict[str, Any]) -> None:
    assert secured_for(agent, "mixed@direct.b.test") == (net["certs"]["mixed"].cert,)


@pytest.mark.conformance("AS-4.1-1", "AS-5.3-2")
def test_certificate_bound_to_another_address_is_not_used(agent: Agent, net: dict[str, Any]) -> None:
    with pytest.raises(NoTrustedRecipients, match=r"is not bound to wrong@direct\.b\.test"):
        secured_for(agent, "wrong@direct.b.test")
    # A record that is not a certificate never hides the good one beside it, nor does one whose extensions cannot
    # be read (an extension repeated: cryptography's DuplicateExtension is no ValueError).
    assert secured_for(agent, "garbage@direct.b.test") == (net["certs"]["garbage"].cert,)
    assert secured_for(agent, "twice@direct.b.test") == (net["certs"]["twice"].cert,)


@pytest.mark.conformance("AS-4.1.3-1")
def test_signature_only_certificate_is_never_encrypted_to(agent: Agent) -> None:
    with pytest.raises(NoTrustedRecipients, match="key encipherment"):
        secured_for(agent, "signonly@direct.b.test")


@pytest.mark.conformance("AS-5.3-1", "AS-5.3-3")
def test_ipkix_url_is_fetched(agent: Agent, net: dict[str, Any]) -> None:
    assert secured_for(agent, "ipkix@direct.b.test") == (net["certs"]["ipkix"].cert,)
    assert ("GET", "/ipkix.cer") in net["http"].requests()


def test_an_ipkix_url_to_an_internal_address_is_not_fetched(world: World, net: dict[str, Any]) -> None:
    """Issue 19 (SSRF): the recipient's domain chooses its IPKIX URLs. Without [trust] fetch_allow, one that leads
    to loopback is not fetched (the HTTP server sees nothing) and the recipient has no certificate."""
    body = {**discovering(world, net["knot"].port), "trust": {"fetch_allow": []}}
    agent = Agent(load_config(world.write_config("discover-no-internal", body)))
    before = net["http"].count("/ipkix.cer")
    try:
        with pytest.raises(NoTrustedRecipients):
            secured_for(agent, "ipkix@direct.b.test")
    finally:
        agent.close()
    assert net["http"].count("/ipkix.cer") == before


def test_an_ipkix_host_that_rebinds_is_fetched_from_the_address_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19 (DNS rebinding): the URL's host name resolves to an allowed address when it is checked and to an
    internal one a moment later, when urllib would resolve it again to connect. The connection goes to the
    address that was checked: the internal server sees nothing."""
    import ipaddress
    import socket

    import dns.name

    from directmilter.discovery.dns import DnsCertificates, DnsSettings

    with HttpServer() as allowed, HttpServer(port=allowed.port, host="127.0.0.2") as internal:
        allowed.set("/c.cer", b"from the address checked")
        internal.set("/c.cer", b"from the internal address")
        real = socket.getaddrinfo
        first = iter(["127.0.0.1"])

        def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host == "ipkix.rebind.test":
                host = next(first, "127.0.0.2")
            return real(host, port, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", rebinding)
        source = DnsCertificates(DnsSettings(fetch_allow=(ipaddress.ip_network("127.0.0.1/32"),)))
        body = source._fetch(f"http://ipkix.rebind.test:{allowed.port}/c.cer", dns.name.from_text("x.test"))
        assert body == b"from the address checked"
        assert internal.count("/c.cer") == 0 and allowed.count("/c.cer") == 1


@pytest.mark.conformance("AS-2.3-3", "ALG-6")
def test_ldap_found_through_srv_with_first_server_down(agent: Agent, net: dict[str, Any]) -> None:
    assert secured_for(agent, "carol@ldap.c.test") == (net["certs"]["carol"].cert,)
    searches = net["slapd"].searches()
    assert any("carol@ldap.c.test" in s.filter for s in searches)
    assert any(b.anonymous for b in net["slapd"].binds())


@pytest.mark.conformance("AS-2.3-2")
def test_nothing_anywhere_is_a_permanent_refusal(agent: Agent) -> None:
    with pytest.raises(NoTrustedRecipients) as caught:
        secured_for(agent, "nobody@direct.b.test")
    assert isinstance(caught.value.rejected["nobody@direct.b.test"], NoCertificate)


def test_answers_are_cached(agent: Agent, net: dict[str, Any]) -> None:
    secured_for(agent, "bob@direct.b.test")
    net["knot"].clear_queries()
    secured_for(agent, "bob@direct.b.test")
    assert ("bob.direct.b.test", "CERT") not in net["knot"].queries()


@pytest.mark.conformance("ALG-10")
def test_dns_timeout_is_temporary(world: World) -> None:
    with Blackhole() as hole:
        config = load_config(world.write_config("discover-dead", discovering(world, hole.port, timeout=1)))
        dead = Agent(config)
        try:
            with pytest.raises(DependencyTimeout, match="timed out"):
                dead.outgoing(envelope(plain_message(), ALICE, "bob@direct.b.test"))
        finally:
            dead.close()


def test_dns_server_refusing_is_temporary(world: World) -> None:
    """Nothing listens where the DNS server should be (ICMP port unreachable, TCP refused): a deferral, as a
    timeout is, never "no certificate"."""
    config = load_config(world.write_config("discover-refused", discovering(world, free_port(), timeout=1)))
    dead = Agent(config)
    try:
        with pytest.raises(TemporaryFailure, match=r"bob@direct\.b\.test") as caught:
            dead.outgoing(envelope(plain_message(), ALICE, "bob@direct.b.test"))
        assert not isinstance(caught.value, NoTrustedRecipients)
    finally:
        dead.close()


def test_dns_timeout_tempfails_through_postfix_and_unknown_is_refused(world: World, net: dict[str, Any]) -> None:
    with Blackhole() as hole, scratch_dir("directmilter-dnsfail-") as root:
        body = discovering(world, hole.port, timeout=1)
        body["milter"] = {"internal_hosts": [], "submission_daemons": ["ORIGINATING"]}
        with Milterd(world.write_config("discover-milter", body), root / "milter.log") as milter, \
                Postfix(root=root / "a", name="mx.a.test", relay={"direct.b.test": "127.0.0.1:9"},
                        milter=milter.postfix_spec) as a:
            result = submit(a.submission_port, ALICE, ["bob@direct.b.test"], plain_message())
            code, text = result.refused["bob@direct.b.test"]
            assert code == 451 and "4.4.3" in text and "timed out" in text
            assert a.queue() == []


def test_every_ldap_server_down_is_temporary_never_a_refusal(agent: Agent, net: dict[str, Any]) -> None:
    """DNS has no certificate for the address, and LDAP, which might have one, does not answer: the recipient may
    well be reachable tomorrow, so this is a deferral (the client retries), not "no certificate"."""
    with pytest.raises(TemporaryFailure, match=r"LDAP lookup for carol@ldapdown\.c\.test: no server answered") \
            as caught:
        secured_for(agent, "carol@ldapdown.c.test")
    assert not isinstance(caught.value, NoTrustedRecipients)
    # Both servers were tried, in the order of their SRV priorities.
    reason = caught.value.reason
    assert 0 <= reason.index("one.ldapdown.c.test:") < reason.index("two.ldapdown.c.test:"), reason


def test_every_ldap_server_down_tempfails_through_postfix(world: World, net: dict[str, Any]) -> None:
    with scratch_dir("directmilter-ldapdown-") as root, Sink(root / "wire") as sink:
        body = discovering(world, net["knot"].port)
        body["milter"] = {"internal_hosts": [], "submission_daemons": ["ORIGINATING"]}
        with Milterd(world.write_config("ldapdown-milter", body), root / "milter.log") as milter, \
                Postfix(root=root / "a", name="mx.a.test", relay={"direct.b.test": f"127.0.0.1:{sink.port}"},
                        milter=milter.postfix_spec) as a:
            result = submit(a.submission_port, ALICE, ["carol@ldapdown.c.test", "bob@direct.b.test"],
                            plain_message(to="carol@ldapdown.c.test"))
            code, text = result.refused["carol@ldapdown.c.test"]
            assert 400 <= code < 500 and "no server answered" in text, (code, text)
            # The other recipient goes on, secured; the deferred one is the client's to retry.
            assert result.ok and "bob@direct.b.test" not in result.refused
            [sent] = sink.wait()
            assert sent.rcpts == ["bob@direct.b.test"]
            assert b"application/pkcs7-mime" in sent.data and CANARY.encode() not in sent.data
            assert a.queue() == []


@pytest.mark.conformance("AS-0-1")
def test_certificates_discovered_from_dns_only_and_from_ldap_only_secure_mail_through_postfix(
        world: World, net: dict[str, Any]) -> None:
    """AS-0-1's discovery part, through Postfix with nothing out of band: bob's certificate comes from a DNS CERT
    record only (his domain has no LDAP service), carol's from LDAP only (found through SRV; her domain publishes
    no CERT record). The message leaves encrypted to both certificates, and each one opens it."""
    carol = "carol@ldap.c.test"
    with scratch_dir("directmilter-discovered-") as root, Sink(root / "wire") as sink:
        body = discovering(world, net["knot"].port)
        body["milter"] = {"internal_hosts": [], "submission_daemons": ["ORIGINATING"]}
        with Milterd(world.write_config("discovered-milter", body), root / "milter.log") as milter, \
                Postfix(root=root / "a", name="mx.a.test", milter=milter.postfix_spec,
                        relay={"direct.b.test": f"127.0.0.1:{sink.port}", "ldap.c.test": f"127.0.0.1:{sink.port}"}) \
                as a:
            net["knot"].clear_queries()
            net["slapd"].clear_log()
            result = submit(a.submission_port, ALICE, [BOB, carol], plain_message())
            assert result.ok and result.accepted == [BOB, carol], result
            [sent] = sink.wait(1)  # one message for both (one relay), encrypted to both certificates
    assert sorted(sent.rcpts) == sorted([BOB, carol]) and CANARY.encode() not in sent.data
    for owner in (world.bob, net["certs"]["carol"]):
        assert CANARY.encode() in peer.verify(peer.decrypt(sent.data, owner), world.r1.cert_path)
    assert ("bob.direct.b.test", "CERT") in net["knot"].queries()
    assert any(carol in s.filter for s in net["slapd"].searches())
    assert not any(BOB in s.filter for s in net["slapd"].searches())  # bob's came from DNS alone


def test_lookup_command_explains(world: World, net: dict[str, Any]) -> None:
    import subprocess
    import sys

    conf = world.write_config("discover-cli", discovering(world, net["knot"].port))
    out = subprocess.run([sys.executable, "-m", "directmilter", "lookup", "-c", str(conf), "mixed@direct.b.test",
                          "--sender", ALICE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "QUALIFIES" in out.stdout and "expired" in out.stdout
    assert "result: 1 certificate(s) qualify" in out.stdout

