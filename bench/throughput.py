"""Throughput through a real Postfix: no milter, a pass-through pymilter milter, and directmilter, in one run.

Outgoing: messages submitted to HISP A's submission listener are secured and relayed to a sink. Incoming:
secured messages sent to HISP B's MX are opened and relayed (Postfix) to a sink. At 10 KiB and 1 MiB, with 1
and 2 cores in use (everything the run starts is pinned to them; directmilter has two crypto workers). Reported as
messages/s, as ratios to the pass-through milter and as 2-core/1-core ratios: each figure the median of three
blasts, core counts and variants taking turns (see :func:`run`). Both milters listen on a unix socket (the
packaged default) or, with ``--socket inet``, on loopback TCP. Run: .venv/bin/python bench/throughput.py
(``--only incoming 10KiB --cpu`` to look at one case closely)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import grp
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from common import ALICE, BOB, KIB, MIB, REPO, machine, message, size_name, world

sys.path.insert(0, str(REPO / "tests"))
from conftest import _toml
from milterd import Milterd
from mta import Postfix, Sink, free_port, scratch_dir, submit

from directmilter.agent import Agent, MessageEnvelope
from directmilter.config import load_config
from directmilter.log import configure

CASES = [(10 * KIB, 600), (1 * MIB, 120)] if not os.environ.get("BENCH_QUICK") else [(10 * KIB, 30), (1 * MIB, 4)]
CONCURRENCY = 8
VARIANTS = ["none", "passthrough", "directmilter"]
CORES = (1, 2)


def dumps(sink: Sink) -> int:
    return sum(1 for p in sink.root.iterdir() if p.is_file())


def blast(port: int, messages: list[bytes], sink: Sink, sender: str, rcpt: str) -> float:
    """Send every message with CONCURRENCY clients; seconds until the sink has them all."""
    before = dumps(sink)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(lambda m: submit(port, sender, [rcpt], m), messages))
    refused = [r for r in results if not r.ok]
    if refused:
        raise SystemExit(f"refused: {refused[0]}")
    deadline = time.monotonic() + 300
    while dumps(sink) < before + len(messages):
        if time.monotonic() > deadline:
            raise SystemExit(f"the sink got {dumps(sink) - before} of {len(messages)} messages")
        time.sleep(0.02)
    return time.perf_counter() - started


def passthrough(spec: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, str(Path(__file__).parent / "passthrough_milter.py"), spec],
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(1.0)
    return process


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far by program: live processes' own time plus what their reaped children used."""
    tick = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        if name.startswith("kworker"):
            continue  # kernel threads change their names with their work
        if name.startswith("python"):
            command = (stat.parent / "cmdline").read_bytes().split(b"\0")
            name = ("clients" if int(stat.parent.name) == os.getpid() else "directmilter" if b"directmilter" in command
                    else "passthrough" if any(b"passthrough" in part for part in command) else name)
        fields = text[text.rindex(")") + 2:].split()
        totals[name] = totals.get(name, 0.0) + sum(int(f) for f in fields[11:15]) / tick
    return totals


def cpu_report(used: dict[str, float], count: int, label: str) -> None:
    """Milliseconds of CPU per message by program, largest first (``--cpu``)."""
    busy = sorted(((ms, name) for name, ms in ((n, 1000 * s / count) for n, s in used.items()) if ms >= 0.05),
                  reverse=True)
    print(f"CPU {label}: " + ", ".join(f"{name} {ms:.2f}" for ms, name in busy)
          + f"; total {sum(ms for ms, _ in busy):.2f} ms/message", file=sys.stderr, flush=True)


def run(unix: bool, variants: list[str], directions: list[str], cases: list[tuple[int, int]], cpu: bool,
        rounds: int) -> dict[tuple[int, str, str, int], float]:
    """Messages/s of each variant on 1 and on 2 cores: the median of ``rounds`` blasts.

    The machine's pace drifts by tens of percent within minutes, so everything takes turns: in each round, each
    core count (the whole run is re-pinned, :func:`pin`), and under it each variant. The drift then falls on all
    figures alike instead of on whichever was measured last.
    """
    configure("error")
    w = world()
    rates: dict[tuple[int, str, str, int], float] = {}
    milter = {"internal_hosts": [], "submission_daemons": ["ORIGINATING"], "workers": max(CORES)}
    conf_a = w.directory / "a.conf"
    conf_a.write_text(_toml({**w.hisp_a_body(), "milter": milter,
                             "notify": {"tracking": f"sqlite:{w.directory}/a.db"}}))
    conf_b = w.directory / "b.conf"
    conf_b.write_text(_toml({**w.hisp_b_body(), "milter": milter,
                             "notify": {"mdn": False, "tracking": f"sqlite:{w.directory}/b.db"}}))
    sealer = Agent(load_config(conf_a))
    with scratch_dir("directmilter-bench-") as root, Sink(root / "wire") as sink:
        for direction in directions:
            with contextlib.ExitStack() as stack:
                ports = {v: start(v, direction, root, unix, stack, conf_a if direction == "outgoing" else conf_b,
                                  sink) for v in variants}
                for size, count in cases:
                    warm = max(2, count // 10)  # warm-up messages first: a resent message would be a replay
                    loads = {}
                    pin(max(CORES))
                    for variant in variants:
                        loads[variant] = _load(sealer, direction, size, variant, warm + rounds * len(CORES) * count)
                        blast(ports[variant], [next(loads[variant]) for _ in range(warm)], sink, ALICE, BOB)
                    samples: dict[tuple[int, str], list[float]] = {}
                    used: dict[tuple[int, str], dict[str, float]] = {}
                    for turn in range(rounds):
                        for cores in CORES if turn % 2 == 0 else CORES[::-1]:
                            pin(cores)
                            for variant in variants[turn % len(variants):] + variants[:turn % len(variants)]:
                                print(f"{cores} {variant} {direction} {size} round {turn + 1}", file=sys.stderr,
                                      flush=True)
                                batch = [next(loads[variant]) for _ in range(count)]
                                before = cpu_seconds()
                                seconds = blast(ports[variant], batch, sink, ALICE, BOB)
                                spent = used.setdefault((cores, variant), {})
                                for name, total in cpu_seconds().items():
                                    spent[name] = spent.get(name, 0.0) + total - before.get(name, 0.0)
                                samples.setdefault((cores, variant), []).append(count / seconds)
                    for (cores, variant), values in samples.items():
                        rates[(cores, variant, direction, size)] = statistics.median(values)
                        if cpu:
                            cpu_report(used[(cores, variant)], rounds * count, f"{cores} {variant} {direction} {size}")
                pin(max(CORES))
    sealer.close()
    return rates


def _load(sealer: Agent, direction: str, size: int, variant: str, total: int) -> Iterator[bytes]:
    """The messages to send, made as they are taken (each blast takes its own before its clock starts): made all at
    once, the 1 MiB case would hold gigabytes."""
    for i in range(total):
        plain = message(size, tag=f"{variant}-{direction}-{i}")
        if direction == "outgoing":
            yield plain
        else:
            sealed = sealer.outgoing(MessageEnvelope(ALICE, (BOB,), plain)).message
            assert isinstance(sealed, bytes)
            yield sealed


def pin(cores: int) -> None:
    """Run this process and everything it started (Postfix, the milters, their workers, the sink) on the first
    ``cores`` CPUs; what they start later inherits it."""
    cpus = set(range(cores))
    family = {os.getpid()}
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            text = stat.read_text()
            parents[int(stat.parent.name)] = int(text[text.rindex(")") + 2:].split()[1])
    while True:
        more = {pid for pid, parent in parents.items() if parent in family} - family
        if not more:
            break
        family |= more
    for pid in family:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                os.sched_setaffinity(int(task.name), cpus)


def start(variant: str, direction: str, root: Path, unix: bool, stack: contextlib.ExitStack, config: Path,
          sink: Sink) -> int:
    """The variant's milter (if any) and its own Postfix in front of it; the port to send to."""
    path = root / f"{variant}-{direction}.sock"
    port = free_port()
    spec = None if variant == "none" else f"unix:{path}" if unix else f"inet:127.0.0.1:{port}"
    if variant == "passthrough":
        helper = passthrough(f"unix:{path}" if unix else f"inet:{port}@127.0.0.1", root / "passthrough.log")
        stack.callback(os.killpg, helper.pid, 9)
    elif variant == "directmilter":
        milter = Milterd(config, root / f"{direction}.log", port=port, unix=path if unix else None).start()
        stack.callback(milter.stop)
        if unix:  # the socket is 0660; deployed, the daemon runs with Postfix's group
            os.chown(path, -1, grp.getgrnam("postfix").gr_gid)
        time.sleep(2.0)  # the crypto workers start
    name = "a" if direction == "outgoing" else "b"
    mta = stack.enter_context(Postfix(
        root=root / f"{variant}-{name}", name=f"mx.{name}.test", mailboxes={ALICE: "alice"} if name == "a" else {},
        relay={"direct.b.test": f"127.0.0.1:{sink.port}"}, milter=spec,
        main_cf={"message_size_limit": str(64 * MIB), "default_process_limit": "100"}))
    return int(mta.submission_port if direction == "outgoing" else mta.smtp_port)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", choices=("unix", "inet"), default="unix", help="how the milters listen")
    parser.add_argument("--only", nargs="+", default=[], metavar="PART",
                        help="run only these variants (none, passthrough, directmilter), directions (outgoing, "
                             "incoming) and sizes (10KiB, 1MiB): for profiling")
    parser.add_argument("--cpu", action="store_true", help="print the CPU milliseconds per message of each program")
    parser.add_argument("--rounds", type=int, default=3, help="blasts per variant and core count; the median counts")
    args = parser.parse_args()
    if (os.cpu_count() or 1) < max(CORES):
        raise SystemExit(f"this benchmark needs {max(CORES)} cores")
    directions = [d for d in ("outgoing", "incoming") if d in args.only] or ["outgoing", "incoming"]
    cases = [c for c in CASES if size_name(c[0]).replace(" ", "") in args.only] or CASES
    variants = [v for v in VARIANTS if v in args.only] or VARIANTS
    print(f"# bench/throughput.py on {machine()}; concurrency {CONCURRENCY}; {args.socket} milter sockets; "
          f"median of {args.rounds} rounds")
    table = run(args.socket == "unix", variants, directions, cases, args.cpu, args.rounds)
    print(f"{'cores':>5} {'direction':>9} {'size':>7} {'none':>8} {'passthru':>9} {'direct':>8} {'direct/pass':>11}")
    verdicts = []
    for cores in CORES:
        for direction in directions:
            for size, _ in cases:
                none, pas, ours = (table.get((cores, v, direction, size), float("nan")) for v in VARIANTS)
                print(f"{cores:>5} {direction:>9} {size_name(size):>7} {none:8.1f} {pas:9.1f} {ours:8.1f} "
                      f"{ours / pas:11.2f}")
                if size == 10 * KIB and cores == max(CORES):
                    verdicts.append((f"{direction} 10 KiB >= 50% of pass-through", ours / pas >= 0.5, ours / pas))
    print(f"{'direction':>9} {'size':>7} {'none 2/1':>9} {'passthru 2/1':>13} {'direct 2/1':>11}")
    for direction in directions:
        for size, _ in cases:
            none, pas, ours = (table.get((2, v, direction, size), float("nan")) /
                               table.get((1, v, direction, size), float("nan")) for v in VARIANTS)
            print(f"{direction:>9} {size_name(size):>7} {none:9.2f} {pas:13.2f} {ours:11.2f}")
            # The target is for CPU-bound crypto (the words): at 1 MiB the crypto is most of the work. At
            # 10 KiB Postfix and the kernel are (see --cpu), and the ratio is shown, not judged.
            if size >= MIB:
                verdicts.append((f"{direction} {size_name(size)} (crypto-bound) 2 cores >= 1.7x 1 core",
                                 ours >= 1.7, ours))
    for text, ok, value in verdicts:
        print(f"target: {text} -> {'met' if ok else 'NOT met'} ({value:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
