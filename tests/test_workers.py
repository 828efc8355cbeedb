"""The crypto workers hold the configuration of the generation that started them, whatever the files say since."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import World

from directmilter.agent import workers
from directmilter.agent.crypto import open_message
from directmilter.config import load_config

ALICE = "alice@direct.a.test"


def test_workers_started_after_the_files_changed_use_the_milters_configuration(world: World, tmp_path: Path) -> None:
    """The pool starts its workers on the first message (or at warm-up, in the background, a second or more
    after the reload that loaded the configuration). A worker that loaded the file itself then got whatever the
    file said by then: a configuration that no longer loads broke the pool (every message 4.x.x while the milter
    ran on the previous, good, generation), and a changed one gave the worker other keys than the agent chose.
    The workers are given the milter's configuration instead: with the configuration file and alice's key gone
    before the first worker starts, they seal with her key and open what is sealed for her."""
    kept = tmp_path / "alice"
    kept.mkdir()
    cert, key = (Path(shutil.copy(p, kept)) for p in (world.alice.cert_path, world.alice.key_path))
    body = world.hisp_a_body()
    body["addresses"][ALICE]["keys"] = [{"cert": str(cert), "key": str(key)}]
    path = world.write_config("workers-snapshot", body)
    config = load_config(path)
    pool = workers.WorkerPool(config, 1, inline_below=0)
    try:
        path.write_text("[this is not a configuration\n")
        key.unlink()
        me = config.identities_for(ALICE)[0].certificate
        sealed = pool.seal(b"From: alice@direct.a.test\r\nTo: alice@direct.a.test\r\n\r\nhi\r\n", ALICE, [me], [me])
        assert open_message(config, sealed, [ALICE]).by_recipient[ALICE] == 0
        assert pool.open(sealed, [ALICE]).by_recipient[ALICE] == 0
    finally:
        pool.close()
