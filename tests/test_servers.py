"""The DNS, LDAP and HTTP test servers work, checked with independent clients (kdig, ldapsearch, urllib)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import pytest
from conftest import World
from dnsserver import Blackhole, Knot, a_record, cert_record, ipkix_record, srv_record
from httpserver import HttpServer
from ldapserver import Slapd
from mta import processes_under, scratch_dir

needs_knot = pytest.mark.skipif(not (shutil.which("knotd") and shutil.which("knotc") and shutil.which("kdig")),
                                reason="knot not installed (apt-get install knot knot-dnsutils)")
needs_slapd = pytest.mark.skipif(
    not (shutil.which("slapd") and shutil.which("slaptest") and shutil.which("ldapsearch")),
    reason="OpenLDAP not installed (apt-get install slapd ldap-utils)")


@pytest.fixture
def scratch() -> Iterator[Path]:
    with scratch_dir("directmilter-servers-") as path:
        yield path


def kdig(port: int, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kdig", "@127.0.0.1", "-p", str(port), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def cert_data(short_output: str) -> bytes:
    """The certificate in ``kdig +short CERT`` output: "type tag alg base64..." (base64 possibly split)."""
    fields = short_output.split()
    assert fields[:3] in (["1", "0", "0"], ["PKIX", "0", "0"]), short_output
    return base64.b64decode("".join(fields[3:]))


def assert_stopped(pid: int | None, root: Path) -> None:
    assert pid is not None
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:  # a zombie would still be there: we reap
        time.sleep(0.01)
    assert not os.path.exists(f"/proc/{pid}"), f"process {pid} still there"
    assert processes_under(root) == []


# --------------------------------------------------------------------------------------------------------------- DNS

@needs_knot
def test_knot_serves_cert_srv_and_logs_queries(world: World, scratch: Path) -> None:
    der = world.bob.der()
    assert len(der) > 512
    zone = [
        cert_record("bob.direct.b.test", der),
        ipkix_record("bob2.direct.b.test", "http://127.0.0.1:8080/bob2.cer"),
        srv_record("_ldap._tcp.direct.b.test", 0, 0, 3890, "ldap.direct.b.test"),
        a_record("ldap.direct.b.test", "127.0.0.1"),
    ]
    with Knot(scratch / "dns", {"direct.b.test": zone}) as server:
        done = kdig(server.port, "+tcp", "+short", "CERT", "bob.direct.b.test")
        assert done.returncode == 0, done.stderr
        assert cert_data(done.stdout) == der
        assert ("bob.direct.b.test", "CERT") in server.queries()
        assert server.query_log()[-1].transport == "tcp"

        # > 512 bytes without EDNS over UDP: truncated, no answer records
        done = kdig(server.port, "+notcp", "+ignore", "+noedns", "CERT", "bob.direct.b.test")
        flags = re.search(r";; Flags: ([a-z ]+);", done.stdout)
        assert flags is not None and "tc" in flags.group(1).split(), done.stdout
        assert "ANSWER: 0" in done.stdout
        # ... and a client that falls back to TCP gets it (dnspython: UDP, TC, then TCP)
        server.clear_queries()
        answer, used_tcp = dns.query.udp_with_fallback(dns.message.make_query("bob.direct.b.test", "CERT"),
                                                       "127.0.0.1", port=server.port, timeout=5)
        assert used_tcp and answer.answer[0][0].certificate == der
        assert [(q.qtype, q.transport) for q in server.query_log()] == [("CERT", "udp"), ("CERT", "tcp")]

        done = kdig(server.port, "+short", "SRV", "_ldap._tcp.direct.b.test")
        assert done.stdout.split() == ["0", "0", "3890", "ldap.direct.b.test."]
        done = kdig(server.port, "+short", "CERT", "bob2.direct.b.test")
        fields = done.stdout.split()
        assert fields[:3] in (["4", "0", "0"], ["IPKIX", "0", "0"]), done.stdout
        assert base64.b64decode("".join(fields[3:])) == b"http://127.0.0.1:8080/bob2.cer"
        assert ("_ldap._tcp.direct.b.test", "SRV") in server.queries()

        # a changed zone is served after set_zone; a new zone too
        server.set_zone("direct.b.test", [cert_record("bob.direct.b.test", world.bob2.der())])
        assert cert_data(kdig(server.port, "+tcp", "+short", "CERT", "bob.direct.b.test").stdout) == world.bob2.der()
        server.set_zone("direct.a.test", [a_record("mx.direct.a.test", "127.0.0.1")])
        assert kdig(server.port, "+short", "A", "mx.direct.a.test").stdout.split() == ["127.0.0.1"]
        resolved = server.resolver().resolve("mx.direct.a.test", "A")
        assert [r.address for r in resolved] == ["127.0.0.1"]
        pid = server.pid
    assert_stopped(pid, scratch / "dns")
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", server.port)) != 0


@needs_knot
def test_blackhole_makes_dns_clients_time_out() -> None:
    with Blackhole() as hole:
        started = time.monotonic()
        udp = subprocess.Popen(["kdig", "@127.0.0.1", "-p", str(hole.port), "+timeout=1", "+retry=0", "A", "x.test"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tcp = subprocess.Popen(["kdig", "@127.0.0.1", "-p", str(hole.port), "+tcp", "+timeout=1", "+retry=0", "A",
                                "x.test"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        outputs = [child.communicate(timeout=10)[0] for child in (udp, tcp)]
        elapsed = time.monotonic() - started
    for child, output in zip((udp, tcp), outputs, strict=True):
        assert child.returncode != 0, output
        assert "timeout" in output.lower() or "timed out" in output.lower(), output
    assert 0.9 < elapsed < 5
    assert hole.received >= 1 and hole.connections >= 1


# -------------------------------------------------------------------------------------------------------------- LDAP

@needs_slapd
def test_slapd_serves_certificates_anonymously(world: World, scratch: Path) -> None:
    with Slapd(scratch / "ldap") as server:
        server.add_person("bob", "bob@direct.b.test", [world.bob.der()])
        server.add_person("bob2", "bob2@direct.b.test", [world.bob2.der()], attribute="userSMIMECertificate")
        server.clear_log()

        def ldapsearch(*args: str) -> str:
            done = subprocess.run(["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", server.url, *args],
                                  capture_output=True, text=True, timeout=20, env={**os.environ, "LDAPNOINIT": "1"})
            assert done.returncode == 0, done.stderr
            return done.stdout

        assert "namingContexts: dc=direct,dc=b,dc=test" in ldapsearch("-b", "", "-s", "base", "namingContexts")
        out = ldapsearch("-b", "dc=direct,dc=b,dc=test", "mail=bob@direct.b.test", "userCertificate;binary")
        [value] = re.findall(r"^userCertificate;binary:: (\S+)$", out, re.MULTILINE)
        assert base64.b64decode(value) == world.bob.der()
        out = ldapsearch("-b", "dc=direct,dc=b,dc=test", "mail=bob2@direct.b.test", "userSMIMECertificate")
        [value] = re.findall(r"^userSMIMECertificate:: (\S+)$", out, re.MULTILINE)
        assert base64.b64decode(value) == world.bob2.der()

        server.wait_log(r"SEARCH RESULT .*nentries=1")
        assert any(bind.anonymous for bind in server.binds())
        searches = server.searches()
        assert [(s.base, s.scope, s.filter) for s in searches[:2]] == [
            ("", 0, "(objectClass=*)"), ("dc=direct,dc=b,dc=test", 2, "(mail=bob@direct.b.test)")]
        assert searches[1].attrs == ["userCertificate;binary"]

        server.remove("bob")
        assert ldapsearch("-b", "dc=direct,dc=b,dc=test", "mail=bob@direct.b.test") == ""
        pid = server.pid
    assert_stopped(pid, scratch / "ldap")


# -------------------------------------------------------------------------------------------------------------- HTTP

def test_http_server_serves_logs_delays_and_fails() -> None:
    with HttpServer({"/bob.cer": (b"DER", "application/pkix-cert")}) as server:
        with urllib.request.urlopen(server.url("/bob.cer"), timeout=5) as response:
            assert response.read() == b"DER"
            assert response.headers["Content-Type"] == "application/pkix-cert"
        server.set("/r1.crl", b"CRL", "application/pkix-crl")
        with urllib.request.urlopen(server.url("/r1.crl?x=1"), timeout=5) as response:
            assert response.read() == b"CRL"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(server.url("/nothing"), timeout=5)
        assert missing.value.code == 404
        server.status("/bob.cer", 503)
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(server.url("/bob.cer"), timeout=5)
        assert failed.value.code == 503
        server.status("/bob.cer", None)

        server.delay("/bob.cer", 3)
        started = time.monotonic()
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            urllib.request.urlopen(server.url("/bob.cer"), timeout=0.3)
        assert time.monotonic() - started < 2
        request = urllib.request.Request(server.url("/ocsp"), data=b"REQ", method="POST")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=5)
        assert server.requests() == [("GET", "/bob.cer"), ("GET", "/r1.crl?x=1"), ("GET", "/nothing"),
                                     ("GET", "/bob.cer"), ("GET", "/bob.cer"), ("POST", "/ocsp")]
        assert server.log[-1].body == b"REQ"
        assert server.count("/bob.cer") == 3
        started = time.monotonic()
    assert time.monotonic() - started < 2  # stop() cut the pending 3 s delay short
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", server.port)) != 0
