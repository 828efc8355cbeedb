"""Peak memory for a 25 MiB message with attachments, through a real Postfix, above the idle milter.

The milter (one crypto worker) first handles a small message, so everything is imported and warm; then the peak
resident set of the milter process and of its worker is reset (/proc/PID/clear_refs), a 25 MiB message goes
through, and the new peaks are read (VmHWM). Run: .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common import ALICE, BOB, KIB, MIB, REPO, machine, message, world

sys.path.insert(0, str(REPO / "tests"))
from conftest import _toml
from milterd import Milterd
from mta import Postfix, Sink, scratch_dir, submit

from directmilter.agent import Agent, MessageEnvelope
from directmilter.config import load_config
from directmilter.log import configure

SIZE = 25 * MIB


def status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def processes(milter: Milterd) -> dict[str, int]:
    assert milter.process is not None
    found = {"milter": milter.process.pid}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == milter.process.pid and b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                found["worker"] = int(stat.parent.name)
        except (OSError, ValueError, IndexError):
            continue
    return found


def measure(milter: Milterd, send: callable, sink: Sink) -> dict[str, tuple[int, int]]:  # type: ignore[valid-type]
    pids = processes(milter)
    idle = {name: status(pid, "VmRSS") for name, pid in pids.items()}
    for pid in pids.values():
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = len(sink.messages())
    send()
    sink.wait(before + 1, timeout=300)
    time.sleep(0.5)
    return {name: (idle[name], status(pid, "VmHWM")) for name, pid in pids.items()}


def main() -> int:
    configure("error")
    w = world()
    milter_settings = {"internal_hosts": [], "submission_daemons": ["ORIGINATING"], "workers": 1}
    conf_a = w.directory / "a.conf"
    conf_a.write_text(_toml({**w.hisp_a_body(), "milter": milter_settings,
                             "notify": {"tracking": f"sqlite:{w.directory}/a.db"}}))
    conf_b = w.directory / "b.conf"
    conf_b.write_text(_toml({**w.hisp_b_body(), "milter": milter_settings,
                             "notify": {"mdn": False, "tracking": f"sqlite:{w.directory}/b.db"}}))
    big = message(SIZE, tag="big")
    sealer = Agent(load_config(conf_a))
    secured_big = sealer.outgoing(MessageEnvelope(ALICE, (BOB,), big)).message
    secured_small = sealer.outgoing(MessageEnvelope(ALICE, (BOB,), message(10 * KIB, tag="warm"))).message
    sealer.close()
    print(f"# bench/memory.py on {machine()}; message {len(big) / MIB:.1f} MiB "
          f"(secured {len(secured_big) / MIB:.1f} MiB)")
    print(f"{'direction':>9} {'process':>8} {'idle MiB':>9} {'peak MiB':>9} {'above idle':>11} {'x message':>10}")
    verdicts = []
    with scratch_dir("directmilter-bench-mem-") as root, Sink(root / "wire") as sink:
        for direction, conf, port_of, warm, load in (
            ("outgoing", conf_a, "submission_port", message(10 * KIB, tag="warm"), big),
            ("incoming", conf_b, "smtp_port", secured_small, secured_big),
        ):
            milter = Milterd(conf, root / f"{direction}.log").start()
            mta = Postfix(root=root / direction, name="mx.test", mailboxes={ALICE: "alice"} if direction ==
                          "outgoing" else {}, relay={"direct.b.test": f"127.0.0.1:{sink.port}"},
                          milter=milter.postfix_spec, main_cf={"message_size_limit": str(256 * MIB)})
            with mta:
                port = getattr(mta, port_of)
                before = len(sink.messages())
                assert submit(port, ALICE, [BOB], warm).ok
                sink.wait(before + 1, timeout=60)
                peaks = measure(milter, lambda: submit(port, ALICE, [BOB], load, timeout=300), sink)  # noqa: B023
            milter.stop()
            total = 0
            for name, (idle, peak) in peaks.items():
                total += peak - idle
                print(f"{direction:>9} {name:>8} {idle / MIB:9.1f} {peak / MIB:9.1f} {(peak - idle) / MIB:11.1f} "
                      f"{(peak - idle) / len(big):10.2f}")
            verdicts.append((direction, total / len(big)))
    for direction, ratio in verdicts:
        print(f"target: {direction} peak above idle (milter + worker) < 4x the message -> "
              f"{'met' if ratio < 4 else 'NOT met'} ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
