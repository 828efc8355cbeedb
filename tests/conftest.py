"""Shared fixtures: a test PKI made at run time, and configurations for two HISPs on top of it.

HISP A hosts ``direct.a.test`` (alice with an address certificate, the domain with an organisational one), HISP B
hosts ``direct.b.test`` (bob, bob2). Both trust root R1. carol@direct.b.test is under R2, which nobody trusts.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from pki import PKI, Issued

from directmilter.agent import Agent, MessageEnvelope
from directmilter.config import Config, load_config

# Hypothesis tests run 150 examples each in CI; HYPOTHESIS_PROFILE=long runs 100,000 (the README's long fuzz run).
settings.register_profile("ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=100_000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VECTORS = SHARED / "vectors"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "conformance(*ids): proves rows of shared/spec/conformance-checklist.md")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Report which conformance rows passing tests prove, so the suite says how compliant we are."""
    proven: set[str] = set()
    failed: set[str] = set()
    through_mta: set[str] = set()
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            for row in getattr(report, "conformance", ()):
                (proven if outcome == "passed" else failed).add(row)
                if outcome == "passed" and getattr(report, "through_mta", False):
                    through_mta.add(row)
    if proven or failed:
        terminalreporter.write_sep("-", "conformance")
        terminalreporter.write_line(f"rows proven by passing tests ({len(proven - failed)}): "
                                    + " ".join(sorted(proven - failed)))
        unit_only = proven - failed - through_mta
        terminalreporter.write_line(f"of which proven only by tests that hand no message to a real MTA "
                                    f"({len(unit_only)}): " + " ".join(sorted(unit_only)))
        if failed:
            terminalreporter.write_line(f"rows with failing tests ({len(failed)}): " + " ".join(sorted(failed)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """Whether the test handed a message to a real Postfix or Sendmail (tests.mta counts them)."""
    import mta

    before = mta.MTA_EXCHANGES
    yield
    item.stash[_THROUGH_MTA] = before != mta.MTA_EXCHANGES


_THROUGH_MTA = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        report.conformance = [row for mark in item.iter_markers("conformance") for row in mark.args]
        report.through_mta = item.stash.get(_THROUGH_MTA, False)


def vectors_or_skip() -> Path:
    if not VECTORS.is_dir():
        pytest.skip(f"third-party Direct vectors not present at {VECTORS} (they live in the shared folder beside "
                    "the checkout, never in this repository)")
    return VECTORS


#: The networks the test servers listen on (see World.write_config).
LOOPBACK_NETWORKS = ["127.0.0.0/8", "::1/128"]

#: Unit-level configurations use only the certificates they are given: no DNS or LDAP (those have their own tests).
OFFLINE = {"dns": False, "ldap": False}


@dataclass
class World:
    pki: PKI
    directory: Path
    r1: Issued
    r2: Issued
    alice: Issued
    a_org: Issued
    bob: Issued
    bob2: Issued
    carol: Issued

    def write_config(self, name: str, body: Mapping[str, Any]) -> Path:
        """Write a TOML configuration (from nested dicts of strings, lists and tables) and return its path."""
        path = self.directory / f"{name}.conf"
        if "notify" not in body:  # each configuration gets its own tracking database in the test's folder
            body = {**body, "notify": {"tracking": f"sqlite:{self.directory / name}-tracking.db"}}
        # Every AIA, CRL and OCSP server of the tests is on loopback, which certificates may not name by default.
        trust = dict(body.get("trust", {}))
        trust.setdefault("fetch_allow", LOOPBACK_NETWORKS)
        body = {**body, "trust": trust}
        path.write_text(_toml(body))
        return path

    def hisp_a(self, **overrides: Any) -> Config:
        return load_config(self.write_config("hisp-a", {**self.hisp_a_body(), **overrides}))

    def hisp_a_body(self) -> dict[str, Any]:
        return {
            "discovery": OFFLINE,
            "domains": {"direct.a.test": {"keys": [keypair(self.a_org)], "anchors": [str(self.r1.cert_path)]}},
            "addresses": {"alice@direct.a.test": {"keys": [keypair(self.alice)]}},
            "certificates": {"files": [str(self.bob.cert_path), str(self.bob2.cert_path),
                                       str(self.carol.cert_path)]},
        }

    def hisp_a_on_postfix(self, name: str, postfix: Any, tracking: str, timeout: float,
                          certificates: Iterable[Issued] = ()) -> Path:
        """HISP A's configuration as the milter of ``postfix`` (a tests.mta.Postfix) that reads its queue and
        tables, with tracking timeouts of ``timeout`` seconds and the remote ``certificates`` added."""
        return self._hisp_a_on(name, {"internal_hosts": [], "submission_daemons": ["ORIGINATING"],
                                      "postfix_config": str(postfix.etc)}, postfix.reinject_port, tracking, timeout,
                               certificates)

    def hisp_a_on_sendmail(self, name: str, sendmail: Any, tracking: str, timeout: float,
                           certificates: Iterable[Issued] = ()) -> Path:
        """The same for ``sendmail`` (a tests.sendmail.Sendmail): its submission listener is named MSA, and no
        Postfix is read (the machine's own /etc/postfix is not this MTA's)."""
        return self._hisp_a_on(name, {"internal_hosts": [], "submission_daemons": ["MSA"], "postfix_config": "none"},
                               sendmail.reinject_port, tracking, timeout, certificates)

    def _hisp_a_on(self, name: str, milter: dict[str, Any], reinject_port: int, tracking: str, timeout: float,
                   certificates: Iterable[Issued]) -> Path:
        body = self.hisp_a_body()
        body["certificates"]["files"] += [str(c.cert_path) for c in certificates]
        return self.write_config(name, {
            **body,
            "milter": milter,
            "notify": {"reinject": f"127.0.0.1:{reinject_port}", "commit_witness": True, "tracking": tracking,
                       "processed_timeout": timeout, "dispatched_timeout": timeout, "sweep_interval": 0.5,
                       "mdn_delay": 0.2},
        })

    def hisp_b(self, **overrides: Any) -> Config:
        return load_config(self.write_config("hisp-b", {**self.hisp_b_body(), **overrides}))

    def hisp_b_body(self) -> dict[str, Any]:
        return {
            "discovery": OFFLINE,
            "domains": {"direct.b.test": {"anchors": [str(self.r1.cert_path)]}},
            "addresses": {
                "bob@direct.b.test": {"keys": [keypair(self.bob)]},
                "bob2@direct.b.test": {"keys": [keypair(self.bob2)]},
                "carol@direct.b.test": {"keys": [keypair(self.carol)]},
            },
            "certificates": {"files": [str(self.alice.cert_path)]},
        }


def keypair(issued: Issued) -> dict[str, str]:
    return {"cert": str(issued.cert_path), "key": str(issued.key_path)}


def _toml(body: Mapping[str, Any], prefix: str = "") -> str:
    """A tiny TOML writer for test configurations (tables of scalars, lists and inline tables)."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in body.items():
        quoted = json.dumps(key) if not key.replace("_", "").isalnum() else key
        if isinstance(value, Mapping):
            tables.append((f"{prefix}{quoted}", value))
        else:
            lines.append(f"{quoted} = {_value(value)}")
    out = "\n".join(lines) + "\n"
    for name, table in tables:
        out += f"\n[{name}]\n" + _toml(table, f"{name}.")
    return out


def _value(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(value)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("pki"))


def build_world(directory: Path) -> World:
    """Two roots, HISP A's alice and organisation, HISP B's bob, bob2 and carol (under R2): made at run time."""
    pki = PKI(directory)
    r1 = pki.root("R1")
    r2 = pki.root("R2")
    return World(
        pki=pki,
        directory=directory,
        r1=r1,
        r2=r2,
        alice=pki.leaf("alice", r1, email="alice@direct.a.test"),
        a_org=pki.leaf("a-org", r1, dns="direct.a.test"),
        bob=pki.leaf("bob", r1, email="bob@direct.b.test"),
        bob2=pki.leaf("bob2", r1, email="bob2@direct.b.test"),
        carol=pki.leaf("carol", r2, email="carol@direct.b.test"),
    )


@pytest.fixture
def agent_for(world: World) -> Iterable[Callable[[Config], Agent]]:
    """Build agents on configurations; closed after the test."""
    made: list[Agent] = []

    def make(config: Config) -> Agent:
        made.append(Agent(config))
        return made[-1]

    yield make
    for agent in made:
        agent.close()


CANARY = "CANARY-7f3a9c-not-for-the-wire"


def plain_message(*, sender: str = "alice@direct.a.test", to: str = "bob@direct.b.test",
                  body: bytes = b"Patient summary attached.\r\n", extra: bytes = b"") -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {CANARY}\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <test-1@direct.a.test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    ).encode() + extra + b"\r\n" + body


def attached_message(size: int, *, sender: str = "alice@direct.a.test", to: str = "bob@direct.b.test",
                     tag: str = "1") -> bytes:
    """A clinical-looking message of about ``size`` bytes: a text part and a base64 PDF-ish attachment."""
    head = (f"From: {sender}\r\nTo: {to}\r\nSubject: bench {tag}\r\nMessage-ID: <bench-{tag}-{os.urandom(6).hex()}"
            f"@direct.a.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n").encode()
    text = b"--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nDischarge summary attached.\r\n"
    room = max(0, size - len(head) - len(text) - 200)
    encoded = base64.encodebytes(os.urandom(room * 3 // 4)).replace(b"\n", b"\r\n")
    attachment = (b"--b1\r\nContent-Type: application/pdf; name=\"summary.pdf\"\r\n"
                  b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--b1--\r\n")
    return head + text + attachment


def envelope(message: bytes, sender: str = "alice@direct.a.test", *recipients: str) -> MessageEnvelope:
    return MessageEnvelope(sender=sender, recipients=recipients or ("bob@direct.b.test",), message=message)


os.environ.setdefault("DIRECTMILTER_TESTS", "1")
