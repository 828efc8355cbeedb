"""The admin commands through the installed entry point (``python -m directmilter``), on real folders."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import World, envelope, plain_message

from directmilter.agent import Agent
from directmilter.config import load_config
from directmilter.tracking import open_store

ALICE, BOB = "alice@direct.a.test", "bob@direct.b.test"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "directmilter", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture()
def managed(world: World, tmp_path: Path) -> dict[str, Any]:
    """HISP A whose domain keys and anchors live in folders (empty to begin with) the commands manage."""
    keys, anchors = tmp_path / "keys", tmp_path / "anchors"
    keys.mkdir(mode=0o700)
    anchors.mkdir(mode=0o755)
    body = world.hisp_a_body()
    body["domains"]["direct.a.test"] = {"keys": [{"dir": str(keys)}], "anchors": [str(anchors)]}
    body["addresses"] = {}
    body["notify"] = {"tracking": f"sqlite:{tmp_path}/tracking.db"}
    conf = world.write_config(f"admin-{tmp_path.name}", body)
    return {"conf": str(conf), "keys": keys, "anchors": anchors, "tmp": tmp_path}


def test_import_a_key_add_an_anchor_and_send(world: World, managed: dict[str, Any]) -> None:
    p12 = world.pki.pkcs12(world.a_org, b"s3cret", f"a-org-{managed['tmp'].name}.p12")
    password = managed["tmp"] / "pass"
    password.write_text("s3cret\n")
    imported = cli("keys", "import", "-c", managed["conf"], "direct.a.test", str(p12), "--password-file",
                   str(password))
    assert imported.returncode == 0, imported.stderr
    assert "imported" in imported.stdout and "reload" in imported.stderr
    stored = sorted(managed["keys"].iterdir())
    assert [p.suffix for p in stored] == [".p12", ".pass"] and all(p.stat().st_mode & 0o777 == 0o600 for p in stored)

    added = cli("anchors", "add", "-c", managed["conf"], "direct.a.test", str(world.r1.cert_path))
    assert added.returncode == 0, added.stderr
    listed = cli("anchors", "list", "-c", managed["conf"], "direct.a.test")
    assert listed.stdout.count("CN=") >= 2 and "incoming: 1 anchor(s)" in listed.stdout, listed.stdout
    assert "direct.a.test" in cli("keys", "list", "-c", managed["conf"]).stdout

    agent = Agent(load_config(managed["conf"]))  # what the milter has after a reload
    try:
        assert agent.outgoing(envelope(plain_message(), ALICE, BOB)).recipients == (BOB,)
    finally:
        agent.close()

    fingerprint = listed.stdout.split("\n")[1].split()[0]
    removed = cli("anchors", "remove", "-c", managed["conf"], "direct.a.test", fingerprint)
    assert removed.returncode == 0 and "removed" in removed.stdout, removed.stderr
    assert load_config(managed["conf"]).anchors_for(ALICE, "outgoing") == ()


def test_a_key_for_someone_else_is_refused_and_nothing_is_stored(world: World, managed: dict[str, Any]) -> None:
    p12 = world.pki.pkcs12(world.bob, None, f"bob-{managed['tmp'].name}.p12")
    refused = cli("keys", "import", "-c", managed["conf"], "direct.a.test", str(p12))
    assert refused.returncode == 78 and "not bound to direct.a.test" in refused.stderr, refused.stderr
    assert list(managed["keys"].iterdir()) == []
    unknown = cli("keys", "import", "-c", managed["conf"], "other.test", str(p12))
    assert unknown.returncode == 78 and "other.test is not configured here" in unknown.stderr


def test_bundle_urls_are_kept_in_the_anchor_folder(managed: dict[str, Any]) -> None:
    url = "https://bundles.example.test/community.p7b"
    assert cli("bundles", "add", "-c", managed["conf"], "direct.a.test", url).returncode == 0
    assert load_config(managed["conf"]).bundles_for(ALICE, "incoming") == (url,)
    assert cli("bundles", "remove", "-c", managed["conf"], "direct.a.test", url).returncode == 0
    assert load_config(managed["conf"]).bundles_for(ALICE, "incoming") == ()
    bad = cli("bundles", "add", "-c", managed["conf"], "direct.a.test", "ftp://x.test/b.p7b")
    assert bad.returncode == 78 and "http:// or https://" in bad.stderr
    folder_before = sorted(p.name for p in Path(managed["conf"]).parent.rglob("*.url"))
    for url in ("https://x.test/a.p7b\nhttps://evil.test/b.p7b", "https://x.test/a b.p7b"):  # issue 19
        bad = cli("bundles", "add", "-c", managed["conf"], "direct.a.test", url)
        assert bad.returncode == 78 and "no spaces or control characters" in bad.stderr, bad.stderr
    assert sorted(p.name for p in Path(managed["conf"]).parent.rglob("*.url")) == folder_before  # nothing stored


def test_tracked_lists_recipients_awaiting_mdns(managed: dict[str, Any]) -> None:
    store = open_store(f"sqlite:{managed['tmp']}/tracking.db")
    store.record_outgoing("<t1@direct.a.test>", ALICE, [BOB], wants_dispatched=False, now=time.time())
    store.close()
    shown = cli("tracked", "-c", managed["conf"])
    assert shown.returncode == 0, shown.stderr
    assert "1 recipient(s) waiting" in shown.stdout
    assert "<t1@direct.a.test>  alice@direct.a.test -> bob@direct.b.test  waiting for processed" in shown.stdout
