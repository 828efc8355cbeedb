"""Trust anchors from bundle URLs (how Direct trust communities publish them), over real HTTP."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import World, envelope, plain_message
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from httpserver import HttpServer

from directmilter.agent import Agent
from directmilter.config import load_config
from directmilter.errors import TemporaryFailure

ALICE, BOB = "alice@direct.a.test", "bob@direct.b.test"


def bundle(world: World, der: bool) -> bytes:
    return pkcs7.serialize_certificates([world.r1.cert, world.r2.cert], Encoding.DER if der else Encoding.PEM)


def receiving_agent(world: World, http: HttpServer, name: str, cache: Path | None = None, **trust: Any) -> Agent:
    body = world.hisp_b_body()
    body["domains"] = {"direct.b.test": {"anchors": [http.url("/community.p7b")]}}
    body["trust"] = {"bundle_refresh": 0.3, **({"bundle_cache": str(cache)} if cache else {}), **trust}
    return Agent(load_config(world.write_config(name, body)))


@pytest.fixture(scope="module")
def secured(world: World) -> bytes:
    agent = Agent(world.hisp_a())
    try:
        return agent.outgoing(envelope(plain_message(), ALICE, BOB)).message
    finally:
        agent.close()


@pytest.mark.parametrize("der", [True, False], ids=["der", "pem"])
def test_anchors_from_a_bundle_url(world: World, secured: bytes, der: bool) -> None:
    with HttpServer() as http:
        http.set("/community.p7b", bundle(world, der), "application/pkcs7-mime")
        agent = receiving_agent(world, http, f"bundle-{der}")
        try:
            assert agent.incoming(envelope(secured, ALICE, BOB)).recipients == (BOB,)
            assert http.count("/community.p7b") == 1
        finally:
            agent.close()


def test_failed_refresh_keeps_the_last_good_copy_and_disk_copy_survives_restart(
        world: World, secured: bytes, tmp_path: Path) -> None:
    with HttpServer() as http:
        http.set("/community.p7b", bundle(world, True), "application/pkcs7-mime")
        first = receiving_agent(world, http, "bundle-keep", cache=tmp_path)
        try:
            first.incoming(envelope(secured, ALICE, BOB))
            http.status("/community.p7b", 503)
            time.sleep(0.4)  # past bundle_refresh: the next message tries a refresh, which fails
            assert first.incoming(envelope(secured, ALICE, BOB)).recipients == (BOB,)
            assert http.count("/community.p7b") == 2
        finally:
            first.close()
        restarted = receiving_agent(world, http, "bundle-restart", cache=tmp_path)
        try:
            assert restarted.incoming(envelope(secured, ALICE, BOB)).recipients == (BOB,)
        finally:
            restarted.close()


def test_bundle_never_fetched_is_a_temporary_failure(world: World, secured: bytes) -> None:
    with HttpServer() as http:
        http.status("/community.p7b", 404)
        agent = receiving_agent(world, http, "bundle-missing")
        try:
            with pytest.raises(TemporaryFailure, match="not available yet"):
                agent.incoming(envelope(secured, ALICE, BOB))
        finally:
            agent.close()


def test_running_milter_refreshes_bundles_on_a_timer(world: World, secured: bytes) -> None:
    """start_refreshing fetches at once and then every interval with no mail; mail never fetches itself."""
    with HttpServer() as http:
        http.set("/community.p7b", bundle(world, True), "application/pkcs7-mime")
        agent = receiving_agent(world, http, "bundle-timer")
        try:
            agent.start_refreshing()
            deadline = time.monotonic() + 5
            while http.count("/community.p7b") < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert http.count("/community.p7b") >= 3  # at start, then every 0.3 s without a message
            http.status("/community.p7b", 503)
            time.sleep(0.7)
            fetched = http.count("/community.p7b")
            assert agent.incoming(envelope(secured, ALICE, BOB)).recipients == (BOB,)  # the last good copy
            assert http.count("/community.p7b") - fetched <= 1  # at most the timer's own fetch meanwhile
        finally:
            agent.close()


def test_oversized_bundle_is_refused(world: World, secured: bytes) -> None:
    with HttpServer() as http:
        http.set("/community.p7b", bundle(world, True), "application/pkcs7-mime")
        agent = receiving_agent(world, http, "bundle-big", max_download=64)
        try:
            with pytest.raises(TemporaryFailure, match="larger than 64 bytes"):
                agent.incoming(envelope(secured, ALICE, BOB))
        finally:
            agent.close()
