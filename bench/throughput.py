"""Throughput through a real Postfix: no milter, a pass-through pymilter milter, and directmilter, in one run.

Outgoing: messages submitted to HISP A's submission listener are secured and relayed to a sink. Incoming:
secured messages sent to HISP B's MX are opened and relayed (Postfix) to a sink. At 10 KiB and 1 MiB, with 1
and 2 cores in use (the whole run pinned with taskset; directmilter gets as many crypto workers as cores).
Reported as messages/s and as ratios to the pass-through milter: each the median of three blasts, the variants
taking turns. Both milters listen on a unix socket (the packaged default) or, with ``--socket inet``, on loopback
TCP. Run: .venv/bin/python bench/throughput.py (``--only incoming 10KiB --cpu`` to look at one case closely)
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
from pathlib import Path

from common import ALICE, BOB, KIB, MIB, REPO, machine, message, size_name, world

sys.path.insert(0, str(REPO / "tests"))
from conftest import _toml
from milterd import Milterd
from mta import Postfix, Sink, free_port, scratch_dir, submit

from directmilter.agent import Agent, MessageEnvelope
from directmilter.config import load_config
from directmilter.log import configure

CASES = [(10 * KIB, 600), (1 * MIB, 40)] if not os.environ.get("BENCH_QUICK") else [(10 * KIB, 30), (1 * MIB, 4)]
CONCURRENCY = 8
VARIANTS = ["none", "passthrough", "directmilter"]


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


def run(cores: int, unix: bool, variants: list[str], directions: list[str], cases: list[tuple[int, int]],
        cpu: bool, rounds: int) -> dict[tuple[str, str, int], float]:
    """Messages/s of each variant: the median of ``rounds`` blasts, the variants taking turns (the machine's pace
    drifts by tens of percent within minutes, and taking turns spreads the drift over all of them alike)."""
    configure("error")
    w = world()
    rates: dict[tuple[str, str, int], float] = {}
    body_a = {**w.hisp_a_body(), "milter": {"internal_hosts": [], "submission_daemons": ["ORIGINATING"],
                                            "workers": cores}}
    body_b = {**w.hisp_b_body(), "milter": {"internal_hosts": [], "submission_daemons": ["ORIGINATING"],
                                            "workers": cores}, "notify": {"mdn": False,
                                                                           "tracking": f"sqlite:{w.directory}/b.db"}}
    conf_a = w.directory / "a.conf"
    conf_a.write_text(_toml({**body_a, "notify": {"tracking": f"sqlite:{w.directory}/a.db"}}))
    conf_b = w.directory / "b.conf"
    conf_b.write_text(_toml(body_b))
    sealer = Agent(load_config(conf_a))
    with scratch_dir("directmilter-bench-") as root, Sink(root / "wire") as sink:
        for direction in directions:
            with contextlib.ExitStack() as stack:
                ports = {v: start(v, direction, root, unix, stack, conf_a if direction == "outgoing" else conf_b,
                                  sink) for v in variants}
                for size, count in cases:
                    warm = max(2, count // 10)  # warm-up messages first: a resent message would be a replay
                    loads = {}
                    for variant in variants:
                        plain = [message(size, tag=f"{variant}-{direction}-{i}") for i in range(warm + rounds * count)]
                        loads[variant] = plain if direction == "outgoing" else [
                            sealer.outgoing(MessageEnvelope(ALICE, (BOB,), m)).message for m in plain]
                        blast(ports[variant], loads[variant][:warm], sink, ALICE, BOB)
                    samples: dict[str, list[float]] = {v: [] for v in variants}
                    used: dict[str, dict[str, float]] = {v: {} for v in variants}
                    for turn in range(rounds):
                        for variant in variants[turn % len(variants):] + variants[:turn % len(variants)]:
                            print(f"{variant} {direction} {size} round {turn + 1}", file=sys.stderr, flush=True)
                            first = warm + turn * count
                            before = cpu_seconds()
                            seconds = blast(ports[variant], loads[variant][first:first + count], sink, ALICE, BOB)
                            for name, spent in cpu_seconds().items():
                                used[variant][name] = used[variant].get(name, 0.0) + spent - before.get(name, 0.0)
                            samples[variant].append(count / seconds)
                    for variant in variants:
                        rates[(variant, direction, size)] = statistics.median(samples[variant])
                        if cpu:
                            cpu_report(used[variant], rounds * count, f"{cores} {variant} {direction} {size}")
    sealer.close()
    return rates


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
    parser.add_argument("--cores", type=int, help="(internal) the core count this run is pinned to")
    parser.add_argument("--socket", choices=("unix", "inet"), default="unix", help="how the milters listen")
    parser.add_argument("--only", nargs="+", default=[], metavar="PART",
                        help="run only these variants (none, passthrough, directmilter), directions (outgoing, "
                             "incoming) and sizes (10KiB, 1MiB): for profiling")
    parser.add_argument("--cpu", action="store_true", help="print the CPU milliseconds per message of each program")
    parser.add_argument("--rounds", type=int, default=3, help="blasts per variant, taking turns; the median counts")
    args = parser.parse_args()
    directions = [d for d in ("outgoing", "incoming") if d in args.only] or ["outgoing", "incoming"]
    cases = [c for c in CASES if size_name(c[0]).replace(" ", "") in args.only] or CASES
    if args.cores:
        variants = [v for v in VARIANTS if v in args.only] or VARIANTS
        rates = run(args.cores, args.socket == "unix", variants, directions, cases, args.cpu, args.rounds)
        for (variant, direction, size), rate in rates.items():
            print(f"RATE {args.cores} {variant} {direction} {size} {rate:.3f}", flush=True)
        return 0
    print(f"# bench/throughput.py on {machine()}; concurrency {CONCURRENCY}; {args.socket} milter sockets")
    table: dict[tuple[int, str, str, int], float] = {}
    for cores in (1, 2):
        cpus = ",".join(str(c) for c in range(cores))
        out = subprocess.run(["taskset", "-c", cpus, sys.executable, __file__, "--cores", str(cores), "--socket",
                              args.socket, "--rounds", str(args.rounds),
                              *(["--only", *args.only] if args.only else []),
                              *(["--cpu"] if args.cpu else [])],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(out.stdout[-2000:], out.stderr[-4000:])
            return 1
        for line in out.stderr.splitlines():
            if line.startswith("CPU "):
                print(line)
        for line in out.stdout.splitlines():
            if line.startswith("RATE "):
                _, c, variant, direction, size, rate = line.split()
                table[(int(c), variant, direction, int(size))] = float(rate)
    print(f"{'cores':>5} {'direction':>9} {'size':>7} {'none':>8} {'passthru':>9} {'direct':>8} {'direct/pass':>11}")
    verdicts = []
    for cores in (1, 2):
        for direction in directions:
            for size, _ in cases:
                none, pas, ours = (table.get((cores, v, direction, size), float("nan")) for v in VARIANTS)
                print(f"{cores:>5} {direction:>9} {size_name(size):>7} {none:8.1f} {pas:9.1f} {ours:8.1f} "
                      f"{ours / pas:11.2f}")
                if size == 10 * KIB and cores == 2:
                    verdicts.append((f"{direction} 10 KiB >= 50% of pass-through", ours / pas >= 0.5, ours / pas))
    for direction in directions:
        for size, _ in cases:
            scale = table.get((2, "directmilter", direction, size), float("nan")) / table.get(
                (1, "directmilter", direction, size), float("nan"))
            verdicts.append((f"{direction} {size_name(size)} 2 cores >= 1.7x 1 core", scale >= 1.7, scale))
    for text, ok, value in verdicts:
        print(f"target: {text} -> {'met' if ok else 'NOT met'} ({value:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
